"""
``rigkit plan INVENTORY [--service NAME]``: each host's services planned on its GPUs, without
deploying: the per-GPU table (need, have, by what), the split that would fit where the
declared one does not, and what the memory allows where the inventory leaves a choice (the
KV cache type). The GPUs are read from each host (nvidia-smi, read only), else from host data
``gpus`` (``--offline``: host data only, no host contacted). Exit code: 0 every service fits,
1 one does not, 2 the inventory does not validate.
"""

from __future__ import annotations

import argparse
import json
import sys

from pyinfra.api.exceptions import PyinfraError

OK, DOES_NOT_FIT, INVALID = 0, 1, 2


def collect(inventory_path: str, service: str | None, offline: bool) -> tuple[int, dict]:
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.facts import get_facts

    from rigkit.facts.nvidia import NvidiaGpus
    from rigkit.fit.plan import plan_rig
    from rigkit.status import load_rigs

    state, rigs, errors = load_rigs(inventory_path)
    if errors:
        return INVALID, {"errors": errors}
    found: dict = {}
    if not offline:
        try:
            connect_all(state)
        except PyinfraError:
            pass  # none reachable: host data alone
        else:
            try:
                found = {h.name: gpus for h, gpus in get_facts(state, NvidiaGpus).items()}
            finally:
                disconnect_all(state)
    code, report = OK, {}
    for name, rig in rigs.items():
        plans = plan_rig(rig, found.get(name), only=service)
        report[name] = plans
        if any(p.planned and not p.fits for p in plans):
            code = DOES_NOT_FIT
    return code, report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rigkit plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inventory")
    parser.add_argument("--service", help="plan this service only")
    parser.add_argument("--offline", action="store_true", help="GPUs from host data only; contact no host")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    code, report = collect(args.inventory, args.service, args.offline)
    if code == INVALID:
        print("\n".join(report["errors"]), file=sys.stderr)
        return code
    if args.json:
        print(
            json.dumps({h: [p.to_data() | {"notes": p.notes} for p in plans] for h, plans in report.items()}, indent=2)
        )
        return code
    for host, plans in report.items():
        print(f"{host}:")
        if not plans:
            print("  no service" + (f" named {args.service}" if args.service else ""))
        for p in plans:
            print("\n".join("  " + line for line in p.lines()))
    return code
