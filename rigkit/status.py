"""``rigkit status INVENTORY``: per host, the llama.cpp build, each service, the models."""

from __future__ import annotations

import sys

from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_facts

from rigkit.facts.llama_cpp import RigStatus


def collect(inventory_path: str) -> dict[str, dict | None]:
    """RigStatus of every host of an inventory file (None: host unreachable)."""
    import os

    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    # The same set-up as pyinfra's own CLI: a state in context while the inventory loads.
    state = State()
    state.cwd = os.getcwd()
    ctx_state.set(state)
    inventory = make_inventory(inventory_path, cwd=state.cwd)
    ctx_inventory.set(inventory)
    state.init(inventory, Config())
    connect_all(state)
    try:
        facts = get_facts(state, RigStatus)
    finally:
        disconnect_all(state)
    return {host.name: facts.get(host) for host in inventory}


def render(status: dict[str, dict | None]) -> str:
    lines = []
    for host, info in status.items():
        if info is None:
            lines.append(f"{host}: unreachable")
            continue
        current = info.get("current")
        if not current:
            lines.append(f"{host}: no rigkit llama.cpp build")
        else:
            verified = current.get("verified_at") or "never"
            previous = info.get("previous")
            lines.append(f"{host}: llama.cpp b{current['build']} ({current['commit'][:9]}, ref "
                         f"{current['ref']}), built {current['built_at']}, verified {verified}"
                         + (f"; previous b{previous['build']}" if previous else ""))
        for svc in info.get("services", []):
            model = "model present" if svc["model_present"] else "MODEL MISSING"
            lines.append(f"  {svc['name']:<16} :{svc['port']:<5} {svc['active']:<9} "
                         f"{'healthy' if svc['healthy'] else 'unhealthy'}  {model} "
                         f"({svc['model_bytes'] / 1e9:.2f} GB) {svc['model']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="rigkit status")
    parser.add_argument("inventory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    status = collect(args.inventory)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0 if all(status.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
