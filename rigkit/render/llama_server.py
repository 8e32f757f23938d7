"""
What rigkit renders for a llama-server service: its command line, its systemd unit and the
client config entries. Pure functions of the host data, so they are tested without a host.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from rigkit.hostdata import SAMPLING_PRESETS, Rig, Service
from rigkit.hostdata.llama_server import options_of
from rigkit.render.systemd import exec_line, templates

BINARY = "{root}/current/bin/llama-server"


def key_path(service: Service) -> str:
    """Where a service's API key lives on the host (when it has ``api_key_file``)."""
    return service.names.key_file


def command_line(service: Service, binary: str) -> list[str]:
    """The llama-server argv for a service (no secret ever appears in it)."""
    opts = options_of(service)
    argv = [
        binary,
        "-m",
        service.model,
        "--host",
        service.host,
        "--port",
        str(service.port),
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
    if service.alias:
        argv += ["--alias", service.alias]
    for flag, value in SAMPLING_PRESETS.get(opts.sampling or "", {}).items():
        argv += [flag, value]
    if opts.jinja:
        argv.append("--jinja")
    if opts.metrics:
        argv.append("--metrics")
    if service.api_key_file:
        argv += ["--api-key-file", key_path(service)]
    argv += list(service.extra_args)
    return argv


def render_unit(service: Service, llama_root: str, gpu: bool = False) -> str:
    """The hardened unit of a llama-server service; ``gpu``: allow exactly the NVIDIA devices
    (else no devices at all)."""
    model_dir = str(PurePosixPath(service.model).parent)
    return templates.get_template("llama-server.service.j2").render(
        service=service,
        exec_start=exec_line(command_line(service, BINARY.format(root=llama_root))),
        model_dir=model_dir,
        model_under_home=model_dir.startswith(("/home/", "/root")),
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
            "models": {
                s.model_id: {
                    "name": s.display_name or s.model_id,
                    "contextLength": s.ctx,
                    "supportsStructuredOutputs": False,
                },
            },
        }
    return (
        json.dumps({"$schema": "https://opencode.ai/config.json", "provider": providers}, indent=2, sort_keys=True)
        + "\n"
    )
