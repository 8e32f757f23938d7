"""
What rigkit renders for a llama-server service: its command line, its systemd unit and the
client config entries. Pure functions of the host data, so they are tested without a host.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

import rigkit.hostdata.option_tables as option_tables
from rigkit.hostdata import SAMPLING_PRESETS, Rig, Service
from rigkit.hostdata.llama_server import options_of
from rigkit.render.systemd import exec_line, templates

BINARY = "{root}/current/bin/llama-server"


def key_path(service: Service) -> str:
    """Where a service's API key lives on the host (when it has ``api_key_file``)."""
    return service.names.key_file


def model_args(service: Service) -> list[str]:
    """The flags one model loads with: its file, context, KV cache, GPUs, sampling, extra_args
    (a router gives each model's to the llama-server it starts for it, through the preset)."""
    opts = options_of(service)
    argv = [
        "-m",
        service.model,
        "-ngl",
        str(opts.n_gpu_layers),
        "-c",
        str(service.ctx),
        "-ctk",
        opts.cache_type_k,
        "-ctv",
        opts.cache_type_v,
        "--parallel",
        str(opts.parallel),
        "--split-mode",
        opts.split_mode,
    ]
    if opts.tensor_split:
        argv += ["-ts", ",".join(f"{v:g}" for v in opts.tensor_split)]
    if opts.flash_attn:
        argv += ["-fa", opts.flash_attn]
    for flag, value in SAMPLING_PRESETS.get(opts.sampling or "", {}).items():
        argv += [flag, value]
    if opts.jinja:
        argv.append("--jinja")
    if opts.metrics:
        argv.append("--metrics")
    return argv + list(service.extra_args)


def command_line(service: Service, binary: str, preset: str | None = None) -> list[str]:
    """The llama-server argv for a service (no secret ever appears in it): its model's flags,
    or, for a router service, the router's own and ``preset`` (the preset file's path)."""
    opts = options_of(service)
    argv = [binary, "--host", service.host, "--port", str(service.port)]
    if service.router_models:
        if preset is None:
            raise ValueError(f"service {service.name}: a router needs its preset's path")
        # tools/server/server-models.cpp (b11312): the router loads no model; it starts one
        # llama-server per model of the preset, at most --models-max at once.
        argv += ["--models-preset", preset, "--models-max", str(opts.models_max)]
    else:
        # Without --alias, /v1/models would name the model by its path (server.cpp sets the
        # model's name as its alias): clients and opencode.json call it by its id.
        argv += ["--alias", service.model_id, *model_args(service)]
    if opts.sleep_idle_seconds is not None:
        # A router passes its flags on to every model's llama-server (server-models.cpp
        # load_from_args): each sleeps on its own.
        argv += ["--sleep-idle-seconds", str(opts.sleep_idle_seconds)]
    if service.api_key_file:
        argv += ["--api-key-file", key_path(service)]
    return argv


def preset_options(model: Service, build_ref: str | None) -> list[tuple[str, str]]:
    """One model's flags as preset keys and values: a key is the flag without its dashes
    (common/preset.cpp get_map_key_opt maps every spelling so), a flag without a value is
    ``true`` (a negative spelling like ``no-warmup = true`` reads as that flag); how many
    values a flag takes is the pinned build's option table's."""
    options = option_tables.llama_server_table(build_ref)["options"]
    words = model_args(model)
    pairs = []
    i = 0
    while i < len(words):
        flag = words[i]
        entry = options[flag.replace("_", "-") if flag.startswith("--") else flag]
        if entry["arity"] == 0:
            pairs.append((flag.lstrip("-"), "true"))
            i += 1
        else:
            pairs.append((flag.lstrip("-"), words[i + 1]))
            i += 2
    return pairs


def render_preset(service: Service, build_ref: str | None) -> str:
    """A router service's preset: one section per model, named by its id (the router passes
    it to the model's llama-server as --alias); the default model loads at startup."""
    models = [
        {
            "id": model.model_id,
            "options": preset_options(model, build_ref) + ([("load-on-startup", "true")] if i == 0 else []),
        }
        for i, model in enumerate(service.served)
    ]
    return templates.get_template("llama-router-preset.ini.j2").render(service=service, models=models)


def preset_path(service: Service, preset: str) -> str:
    return service.names.preset_file(hashlib.sha256(preset.encode()).hexdigest()[:16])


def render_unit(service: Service, llama_root: str, gpu: bool = False, build_ref: str | None = None) -> str:
    """The hardened unit of a llama-server service; ``gpu``: allow exactly the NVIDIA devices
    (else no devices at all); ``build_ref``: the pinned build, whose option table a router's
    preset is written with."""
    preset = preset_path(service, render_preset(service, build_ref)) if service.router_models else None
    model_dirs = sorted({str(PurePosixPath(model.model).parent) for model in service.served})
    return templates.get_template("llama-server.service.j2").render(
        service=service,
        exec_start=exec_line(command_line(service, BINARY.format(root=llama_root), preset)),
        model_dirs=model_dirs,
        model_under_home=any(d.startswith(("/home/", "/root")) for d in model_dirs),
        cuda_visible_devices=",".join(str(g) for g in service.gpus),
        gpu=gpu,
    )


def services_manifest(rig: Rig, llama_root: str) -> str:
    """What the host-side verifier reads: enabled services, ports, key files, models."""
    return (
        json.dumps(
            {
                "llama_root": llama_root,
                "services": [
                    {
                        "name": s.name,
                        "unit": s.unit,
                        "port": s.port,
                        "model": s.model,
                        "model_id": s.model_id,
                        "engine": s.engine,
                        "key_file": key_path(s) if s.api_key_file else None,
                        # A router's models, the default first: the check loads each in turn.
                        **(
                            {
                                "models": [{"model_id": m.model_id, "model": m.model} for m in s.served],
                                "models_max": options_of(s).models_max,
                            }
                            if s.router_models
                            else {}
                        ),
                    }
                    for s in rig.enabled_services
                    if s.engine == "llama.cpp"
                ],
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def opencode_config(rig: Rig, address: str) -> str:
    """opencode.json provider entries (seed 000's form), one provider per enabled service."""
    providers = {}
    for s in (s for s in rig.enabled_services if s.engine == "llama.cpp"):
        providers[f"llama-cpp-{s.name}"] = {
            "npm": "@ai-sdk/openai-compatible",
            "name": f"llama.cpp {s.name} on {rig.host}",
            "options": {"baseURL": f"http://{address}:{s.port}/v1"},
            # Every model the service serves: a router's by the id it routes on.
            "models": {
                m.model_id: {
                    "name": m.display_name or m.model_id,
                    "contextLength": m.ctx,
                    "supportsStructuredOutputs": False,
                }
                for m in s.served
            },
        }
    return (
        json.dumps({"$schema": "https://opencode.ai/config.json", "provider": providers}, indent=2, sort_keys=True)
        + "\n"
    )
