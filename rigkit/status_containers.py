"""``rigkit status`` for the services of every container engine (vLLM, SGLang): per service
the running image against the declared and the last verified one, the container's state and
health, and the drift from the inventory (``rigkit.status`` calls these per engine)."""

from __future__ import annotations

from typing import Any

from rigkit.engines.containers import ContainerEngine
from rigkit.facts.images import ContainerStatus
from rigkit.hostdata import Rig


def facts(state: Any, engine: ContainerEngine) -> dict:
    """Per pyinfra host: what the engine's host tool's ``status`` reports (``{"services": [...]}``)."""
    from pyinfra.api.facts import get_facts

    kwargs = {"tool": engine.tool, "manifest": engine.manifest}
    if engine.tool_engine:
        kwargs["engine"] = engine.tool_engine
    return get_facts(state, ContainerStatus, kwargs=kwargs)


def drift(rig: Rig, info: dict, engine: ContainerEngine) -> list[str]:
    problems = []
    on_host = {s["name"]: s for s in info.get("services", [])}
    for svc in engine.services(rig):
        if not svc.enabled:
            continue
        seen = on_host.get(svc.name)
        if seen is None:
            problems.append(f"{svc.name}: declared, not deployed")
            continue
        declared = engine.identity(svc).tag
        if seen.get("image") != declared:
            problems.append(f"{svc.name}: runs {seen.get('image')}, declared {declared}")
        if seen.get("container") != "running" or not seen.get("healthy"):
            problems.append(
                f"{svc.name}: container {seen.get('container')}, {'healthy' if seen.get('healthy') else 'not healthy'}"
            )
    return problems


def lines(info: dict, engine: ContainerEngine) -> list[str]:
    out = []
    for s in info.get("services", []):
        verified = (
            "verified"
            if s.get("verified_image") == s.get("image")
            else f"last verified {s.get('verified_image') or 'never'}"
        )
        out.append(
            f"  {s['name']:<16} :{s['port']:<5} {s.get('active') or 'unknown':<9} "
            f"{'healthy' if s.get('healthy') else 'unhealthy'}  {engine.title} {s.get('image')} "
            f"(container {s.get('container')}, {verified})"
        )
        report = s.get("selfcheck")
        said = engine.selfcheck_line(report) if isinstance(report, dict) else None
        if said:
            out.append(f"  {'':<16}  {said}")
    return out
