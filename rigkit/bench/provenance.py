"""
Where a figure came from: engine and build, the server's exact argv, GPUs, driver and power
limits, the model's files (and their sha256 from the model lock where the model came from
the Hub), the date, rigkit's version. What the server tells over HTTP (llama-server's
/props build_info, vLLM's /version) is always there; the rest comes from probing the host
(``hostside.py probe``) when rigkit reaches it (an inventory, or a server on this machine).
"""

from __future__ import annotations

import platform
import re
import socket
import sys
import time
from typing import Any


def rigkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("rigkit")
    except Exception:
        import rigkit

        return getattr(rigkit, "__version__", "?")


def engine_info(client, probe: dict[str, Any] | None) -> dict[str, Any]:
    eng: dict[str, Any] = {"name": client.engine()}
    if client.props:
        info = client.props.get("build_info", "")
        eng["build_info"] = info
        m = re.match(r"b?(\d+)-([0-9a-f]{6,40})", info)
        if m:
            eng["build"], eng["commit"] = int(m.group(1)), m.group(2)
        eng["model_path"] = client.props.get("model_path")
        eng["slots"] = client.props.get("total_slots")
        eng["n_ctx_per_slot"] = (client.props.get("default_generation_settings") or {}).get("n_ctx")
    if client.version:
        eng["version"] = client.version.get("version")
    server = (probe or {}).get("server") or {}
    build = server.get("build") or {}
    if build:
        eng.update(
            {
                "build": build.get("build", eng.get("build")),
                "ref": build.get("ref"),
                "commit": build.get("commit", eng.get("commit")),
                "flags": " ".join(build.get("flags", [])),
                "built_at": build.get("built_at"),
            }
        )
    if server.get("version"):
        eng["version_output"] = server["version"].splitlines()[-1] if server["version"] else None
    return eng


def lock_hashes(rig, service) -> list[dict[str, Any]]:
    """Every file (all shards) of the model lock entry whose files include the service's
    model (its first shard), with sha256: Hub models only; ``[]`` for uploaded models."""
    out = []
    model = (service.model.rsplit("/", 1)[-1]) if service is not None else None
    for entry in (getattr(rig, "locks", None) or {}).values():
        files = getattr(entry, "files", ())
        if model is None or any(f.path.rsplit("/", 1)[-1] == model for f in files):
            out += [
                {"repo": entry.repo, "commit": entry.sha, "path": f.path, "size": f.size, "sha256": f.sha256}
                for f in files
            ]
    return out


def collect(
    client,
    probe: dict[str, Any] | None = None,
    rig=None,
    service=None,
    host: str | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    probe = probe or {}
    server = probe.get("server") or {}
    model = probe.get("model") or {}
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rigkit_version": rigkit_version(),
        "bench_machine": {
            "hostname": socket.gethostname(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "bench_argv": argv if argv is not None else sys.argv,
        "host": host or probe.get("hostname"),
        "host_kernel": probe.get("kernel"),
        "host_cpus": probe.get("cpu_count"),
        "engine": engine_info(client, probe),
        "argv": server.get("argv"),
        "unit": probe.get("unit"),
        "gpus": probe.get("gpus") or [],
        "model_files": model.get("files") or [],
        "model_lock": lock_hashes(rig, service) if rig is not None else [],
        "model_meta": {
            k: v
            for k, v in (model.get("meta") or {}).items()
            if k.startswith("general.")
            or k.endswith((".block_count", ".expert_count", ".expert_used_count", ".context_length"))
        },
        "service": _service(service),
        "probe_error": probe.get("error"),
    }


def _service(service) -> dict[str, Any] | None:
    if service is None:
        return None
    import dataclasses

    d = dataclasses.asdict(service)
    d.pop("api_key_file", None)  # a local path; the key itself is never read into results
    return d
