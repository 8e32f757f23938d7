"""``rigkit status`` for vLLM services: per service the running image (against the declared
and the last verified one), the container's state and health, and the drift from the
inventory (``rigkit.status`` calls these for hosts with vLLM services)."""

from __future__ import annotations

from typing import Any

from rigkit.facts.vllm import VllmStatus
from rigkit.hostdata import Rig
from rigkit.render.vllm import MANIFEST, ImageIdentity


def facts(state: Any) -> dict:
    """Per pyinfra host: what ``vllm_host.py status`` reports (``{"services": [...]}``)."""
    from pyinfra.api.facts import get_facts

    return get_facts(state, VllmStatus, kwargs={"manifest": MANIFEST})


def drift(rig: Rig, info: dict) -> list[str]:
    problems = []
    on_host = {s["name"]: s for s in info.get("services", [])}
    for svc in rig.enabled_services:
        if svc.engine != "vllm":
            continue
        seen = on_host.get(svc.name)
        if seen is None:
            problems.append(f"{svc.name}: declared, not deployed")
            continue
        declared = ImageIdentity.of(svc.options).tag  # type: ignore[arg-type]
        if seen.get("image") != declared:
            problems.append(f"{svc.name}: runs {seen.get('image')}, declared {declared}")
        if seen.get("container") != "running" or not seen.get("healthy"):
            problems.append(
                f"{svc.name}: container {seen.get('container')}, {'healthy' if seen.get('healthy') else 'not healthy'}"
            )
    return problems


def lines(info: dict) -> list[str]:
    out = []
    for s in info.get("services", []):
        verified = (
            "verified"
            if s.get("verified_image") == s.get("image")
            else f"last verified {s.get('verified_image') or 'never'}"
        )
        out.append(
            f"  {s['name']:<16} :{s['port']:<5} {s.get('active') or 'unknown':<9} "
            f"{'healthy' if s.get('healthy') else 'unhealthy'}  vLLM {s.get('image')} "
            f"(container {s.get('container')}, {verified})"
        )
    return out
