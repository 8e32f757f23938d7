"""
What rigkit renders for a llama-server service: its command line, its systemd unit and the
client config entries. Pure functions of the host data, so they are tested without a host.
"""

from __future__ import annotations

import json
import shlex
from pathlib import PurePosixPath

from jinja2 import Environment, PackageLoader, StrictUndefined

from rigkit.hostdata import SAMPLING_PRESETS, Rig, Service

KEY_DIR = "/etc/rigkit/llama"
BINARY = "{root}/current/bin/llama-server"

_templates = Environment(
    loader=PackageLoader("rigkit", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def key_path(service: Service) -> str | None:
    return f"{KEY_DIR}/{service.name}.key" if service.api_key_file else None


def command_line(service: Service, binary: str) -> list[str]:
    """The llama-server argv for a service (no secret ever appears in it)."""
    argv = [
        binary,
        "-m", service.model,
        "--host", service.host,
        "--port", str(service.port),
        "-ngl", str(service.n_gpu_layers),
        "-c", str(service.ctx),
        "-ctk", service.cache_type_k,
        "-ctv", service.cache_type_v,
        "--parallel", str(service.parallel),
        "--split-mode", service.split_mode,
    ]
    if service.tensor_split:
        argv += ["-ts", ",".join(f"{v:g}" for v in service.tensor_split)]
    if service.flash_attn:
        argv += ["-fa", service.flash_attn]
    if service.alias:
        argv += ["--alias", service.alias]
    for flag, value in SAMPLING_PRESETS.get(service.sampling or "", {}).items():
        argv += [flag, value]
    if service.jinja:
        argv.append("--jinja")
    if service.metrics:
        argv.append("--metrics")
    if service.api_key_file:
        argv += ["--api-key-file", key_path(service)]
    argv += list(service.extra_args)
    return argv


def systemd_exec(argv: list[str]) -> str:
    """Quote an argv for ExecStart= (systemd's own quoting; '%' and '$' escaped)."""
    words = []
    for arg in argv:
        arg = arg.replace("%", "%%").replace("$", "$$")
        words.append(shlex.quote(arg) if any(c in arg for c in " \t\"'\\;") else arg)
    return " ".join(words)


def render_unit(service: Service, llama_root: str) -> str:
    model_dir = str(PurePosixPath(service.model).parent)
    return _templates.get_template("llama-server.service.j2").render(
        service=service,
        exec_start=systemd_exec(command_line(service, BINARY.format(root=llama_root))),
        model_dir=model_dir,
        model_under_home=model_dir.startswith(("/home/", "/root")),
        cuda_visible_devices=",".join(str(g) for g in service.gpus),
        key_path=key_path(service),
    )


def services_manifest(rig: Rig) -> str:
    """What the host-side verifier reads: enabled services, ports, key files, models."""
    return json.dumps({
        "llama_root": rig.llama_cpp.root,
        "services": [
            {"name": s.name, "unit": s.unit, "port": s.port, "model": s.model,
             "model_id": s.model_id, "key_file": key_path(s)}
            for s in rig.enabled_services
        ],
    }, indent=2, sort_keys=True) + "\n"


def opencode_config(rig: Rig, address: str) -> str:
    """opencode.json provider entries (seed 000's form), one provider per enabled service."""
    providers = {}
    for s in rig.enabled_services:
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
    return json.dumps({"$schema": "https://opencode.ai/config.json", "provider": providers},
                      indent=2, sort_keys=True) + "\n"
