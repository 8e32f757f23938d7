"""
``rigkit status INVENTORY``: validate the inventory, then per host the llama.cpp build, the
last verified state, each service (active, healthy, watchdog) and its model, and what
drifted from the inventory and the lock (pinned vs running build, unit content, missing or
orphaned services). For cron and monitoring, the exit code says which:

    0 all healthy and as declared   1 unhealthy or drifted
    2 the inventory does not validate (no host contacted)   3 a host cannot be reached
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.facts import get_facts

from rigkit import status_containers, status_interconnect, status_vllm
from rigkit.engines import ENGINES
from rigkit.engines.containers import ContainerEngine
from rigkit.facts.llama_cpp import RigStatus
from rigkit.facts.models import BackgroundDownloads
from rigkit.fit.measured import MemoryRecord
from rigkit.fit.measured import compare as compare_memory
from rigkit.hostdata import Rig, rig_for
from rigkit.operations.llama_cpp import BuildIdentity
from rigkit.render import llama_server as render
from rigkit.scripts.llama_host import matches

OK, UNHEALTHY, INVALID, UNREACHABLE = 0, 1, 2, 3
CONTAINER_ENGINES = [e for e in ENGINES.values() if isinstance(e, ContainerEngine)]


def load(inventory_path: str) -> tuple[State, Any]:
    """pyinfra's state and inventory, set up as pyinfra's own CLI does."""
    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    state = State()
    state.cwd = os.getcwd()
    ctx_state.set(state)
    inventory = make_inventory(inventory_path, cwd=state.cwd)
    ctx_inventory.set(inventory)
    state.init(inventory, Config())
    return state, inventory


def load_rigs(inventory_path: str) -> tuple[State, dict[str, Rig], list[str]]:
    """pyinfra's state, each host's validated host data, and every host's validation errors
    (all of them, before any connection)."""
    state, inventory = load(inventory_path)
    rigs: dict[str, Rig] = {}
    errors = []
    for host in inventory:
        try:
            rigs[host.name] = rig_for(host)
        except (PyinfraError, ValueError) as exc:
            errors.append(str(exc))
    return state, rigs, errors


def drift(rig: Rig, info: dict) -> list[str]:
    """What on the host differs from what the inventory (and lock) declare."""
    problems = []
    pin = rig.llama_cpp
    if pin is not None:
        current = info.get("current")
        arch_known = not pin.cuda or pin.cuda_arch or rig.gpus.cuda_arch
        identity = BuildIdentity.of(pin, pin.cuda_arch or rig.gpus.cuda_arch) if arch_known else None
        if not current:
            problems.append(f"llama.cpp: no build; pinned {pin.ref}")
        elif identity and not matches(current, pin.ref, identity.flags_hash):
            problems.append(
                f"llama.cpp: running b{current['build']} ({current['ref']}, flags "
                f"{current['flags_hash']}), pinned {pin.ref} (flags {identity.flags_hash})"
            )
        elif not identity and not (current["ref"] == pin.ref or current["commit"].startswith(pin.ref)):
            problems.append(f"llama.cpp: running {current['ref']}, pinned {pin.ref}")
    on_host = {s["name"]: s for s in info.get("services", [])}
    for svc in rig.enabled_services:
        if svc.engine != "llama.cpp":  # the container engines': rigkit.status_containers
            continue
        seen = on_host.get(svc.name)
        if seen is None:
            problems.append(f"{svc.name}: declared, not deployed")
            continue
        if pin is not None:
            wanted = hashlib.sha256(
                render.render_unit(svc, pin.root, gpu=pin.cuda, build_ref=pin.ref).encode()
            ).hexdigest()
            if seen.get("unit_sha256") != wanted:
                problems.append(f"{svc.name}: unit differs from the inventory's")
        if seen.get("model") != svc.model:
            problems.append(f"{svc.name}: serves {seen.get('model')}, declared {svc.model}")
        if not seen.get("healthy"):
            problems.append(f"{svc.name}: {seen.get('active')}, not healthy")
        if not seen.get("model_present"):
            problems.append(f"{svc.name}: model missing")
        problems += [f"{svc.name}: model {m['id']} missing" for m in seen.get("models", []) if not m["present"]]
    for name in set(on_host) - {s.name for s in rig.enabled_services if s.engine == "llama.cpp"}:
        problems.append(f"{name}: deployed, no longer declared enabled")
    problems += [f"{unit}: on the host, not in the inventory" for unit in info.get("orphans", [])]
    return problems


def collect(inventory_path: str) -> tuple[int, dict[str, dict]]:
    """(exit code, per host: rig status, problems); validation errors before any connection."""
    state, rigs, errors = load_rigs(inventory_path)
    if errors:
        return INVALID, {"errors": {"problems": errors}}
    inventory = state.inventory
    facts: dict = {}
    memory_facts: dict = {}
    download_facts: dict = {}
    container_facts: dict[str, dict] = {}  # engine -> per host
    ray_facts: dict = {}
    auth_facts: dict = {}
    link_facts: dict[str, dict] = {}
    try:
        connect_all(state)
    except PyinfraError:  # "No hosts remaining!": none could be reached
        pass
    else:
        try:
            facts = get_facts(state, RigStatus)
            memory_facts = get_facts(state, MemoryRecord)
            download_facts = get_facts(state, BackgroundDownloads)
            for engine in CONTAINER_ENGINES:
                if any(engine.declared(r) for r in rigs.values()):
                    container_facts[engine.name] = status_containers.facts(state, engine)
            ray_facts = status_vllm.cluster_facts([h for h in inventory if h in facts], rigs)
            auth_facts = status_vllm.auth_facts([h for h in inventory if h in facts], rigs)
            link_facts = status_interconnect.facts(state, [h for h in inventory if h in facts], rigs)
        finally:
            disconnect_all(state)
    report: dict[str, dict] = {}
    code = OK
    for host in inventory:
        info = facts.get(host)
        if info is None:
            report[host.name] = {"reachable": False, "problems": ["unreachable"]}
            code = UNREACHABLE
            continue
        problems = drift(rigs[host.name], info)
        if host.name in link_facts:
            info = {**info, "interconnect": link_facts[host.name]}
            problems += status_interconnect.drift(link_facts[host.name])
        for engine in CONTAINER_ENGINES:
            # A cluster's worker declares the service too (it runs Ray in its image): its
            # lines say whose worker it is.
            if engine.declared(rigs[host.name]):
                info = {**info, engine.name: container_facts.get(engine.name, {}).get(host) or {"services": []}}
                problems += status_containers.drift(rigs[host.name], info[engine.name], engine)
        if rigs[host.name].cluster is not None:
            info = {
                **info,
                "cluster": status_vllm.cluster_info(
                    rigs[host.name], ray_facts.get(host.name), auth_facts.get(host.name)
                ),
            }
            problems += status_vllm.cluster_drift(info["cluster"])
        if download_facts.get(host):
            info = {**info, "downloads": download_facts[host]}
        record = memory_facts.get(host) or {}
        if record:
            gpu_lines, warnings = compare_memory(record)
            info = {**info, "memory": {"record": record, "lines": gpu_lines, "warnings": warnings}}
        report[host.name] = {"reachable": True, **info, "problems": problems}
        if problems and code == OK:
            code = UNHEALTHY
    return code, report


def memory_lines(memory: dict | None) -> list[str]:
    """Each GPU's planned and measured memory after the load, and a warning where they
    differ by more than 10 % (rigkit.fit.measured)."""
    if not memory:
        return []
    return [*memory["lines"], *(f"  WARNING: memory {w}" for w in memory["warnings"])]


def download_lines(downloads: list | None) -> list[str]:
    """A line per model download running in the background: its latest progress, or its
    start while no progress line came yet."""
    return [f"  model download in the background: {d.get('progress') or d.get('started')}" for d in downloads or []]


def render_text(report: dict[str, dict]) -> str:
    lines = []
    for host, info in report.items():
        if info.get("reachable", True) and any(e.name in info for e in CONTAINER_ENGINES) and "current" not in info:
            lines.append(f"{host}: " + ", ".join(f"{e.title} services" for e in CONTAINER_ENGINES if e.name in info))
            for engine in CONTAINER_ENGINES:
                lines += status_containers.lines(info.get(engine.name, {}), engine)
            lines += status_vllm.cluster_lines(info.get("cluster"))
            lines += status_interconnect.lines(info.get("interconnect"))
            lines += memory_lines(info.get("memory"))
            lines += download_lines(info.get("downloads"))
            lines += [f"  DRIFT/PROBLEM: {problem}" for problem in info["problems"]]
            continue
        if not info.get("reachable", True) or "current" not in info:
            lines.append(f"{host}: " + "; ".join(info["problems"]))
            lines += download_lines(info.get("downloads"))
            continue
        current, good = info.get("current"), info.get("last_verified")
        verified = f"verified {good['at']} (on {good['build']})" if good else "verified never"
        if not current:
            lines.append(f"{host}: no rigkit llama.cpp build; {verified}")
        else:
            previous = info.get("previous")
            lines.append(
                f"{host}: llama.cpp b{current['build']} ({current['commit'][:9]}, ref "
                f"{current['ref']}), built {current['built_at']}, {verified}"
                + (f"; previous b{previous['build']}" if previous else "")
            )
        for svc in info.get("services", []):
            model = "model present" if svc["model_present"] else "MODEL MISSING"
            dog = svc.get("watchdog") or {}
            watchdog = (
                f"watchdog {dog.get('timer', 'unknown')}"
                + (f", {dog['failures']} failed" if dog.get("failures") else "")
                + (f", {dog['restarts']} restarts" if dog.get("restarts") else "")
            )
            lines.append(
                f"  {svc['name']:<16} :{svc['port']:<5} {svc['active']:<9} "
                f"{'healthy' if svc['healthy'] else 'unhealthy'}  {model} "
                f"({svc['model_bytes'] / 1e9:.2f} GB) {svc['model']}; {watchdog}"
            )
            for model in svc.get("models", []):
                lines.append(
                    f"    model {model['id']:<24} {model['state'] or 'unknown'}"
                    + ("" if model["present"] else " MODEL MISSING")
                )
        for engine in CONTAINER_ENGINES:
            lines += status_containers.lines(info.get(engine.name, {}), engine)
        lines += status_interconnect.lines(info.get("interconnect"))
        lines += memory_lines(info.get("memory"))
        lines += download_lines(info.get("downloads"))
        for problem in info["problems"]:
            lines.append(f"  DRIFT/PROBLEM: {problem}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rigkit status", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inventory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    code, report = collect(args.inventory)
    if code == INVALID:
        print("\n".join(report["errors"]["problems"]), file=sys.stderr)
        return code
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
