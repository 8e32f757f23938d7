"""Wait until the Ray cluster reports every expected node alive (and at least the GPUs
they bring), at most TIMEOUT seconds; otherwise fail naming the nodes that are missing.

    ray_ready.py --container NAME --address HEAD:PORT --timeout S --gpus N --node NAME=ADDR [--node ...]
    ray_ready.py ... --json     # once, no waiting: each node's state as JSON (rigkit status)

Runs on the head with the host's Python (standard library only); Ray is asked inside the
head's Ray container (``docker exec``), whose Ray is the cluster's own version."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# Run by the container's Python: the cluster's nodes as JSON (argv[1]: the head's address).
PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"address": n["NodeManagerAddress"], "alive": bool(n.get("Alive")),
                   "cpu": n.get("Resources", {}).get("CPU", 0), "gpu": n.get("Resources", {}).get("GPU", 0)}
                  for n in ray.nodes()]))
"""


def nodes(container: str, address: str) -> tuple[list[dict] | None, str]:
    """Ray's nodes (None when Ray cannot be asked) and why not."""
    try:
        done = subprocess.run(
            ["docker", "exec", container, "python3", "-c", PROBE, address],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None, "ray did not answer within 60 s"
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or [f"docker exec exited {done.returncode}"])[-1]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unexpected answer: {done.stdout[-200:]!r}"


def report(expected: dict[str, str], found: list[dict] | None) -> dict:
    alive = {n["address"]: n for n in found or [] if n["alive"]}
    return {
        "nodes": [
            {
                "name": name,
                "address": addr,
                "alive": addr in alive,
                "cpu": alive.get(addr, {}).get("cpu", 0),
                "gpu": alive.get(addr, {}).get("gpu", 0),
            }
            for name, addr in expected.items()
        ],
        "gpus": sum(n["gpu"] for n in alive.values()),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--container", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--gpus", type=float, default=0)
    parser.add_argument("--node", action="append", default=[], required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    expected = dict(n.split("=", 1) for n in args.node)

    if args.json:
        found, why = nodes(args.container, args.address)
        print(json.dumps({**report(expected, found), "reachable": found is not None, "error": why}))
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        found, why = nodes(args.container, args.address)
        state = report(expected, found)
        missing = [f"{n['name']} ({n['address']})" for n in state["nodes"] if not n["alive"]]
        if found is not None and not missing and state["gpus"] >= args.gpus:
            each = ", ".join(f"{n['name']}: {n['cpu']:g} CPU, {n['gpu']:g} GPU" for n in state["nodes"])
            print(f"ray cluster at {args.address}: all {len(expected)} nodes alive ({each})", flush=True)
            return 0
        if time.monotonic() >= deadline:
            if found is None:
                what = f"ray not answering ({why})"
            elif missing:
                what = f"missing node(s): {', '.join(missing)}"
            else:
                what = f"{state['gpus']:g} of {args.gpus:g} GPUs"
            print(f"ray cluster at {args.address}: not complete after {args.timeout:g} s; {what}", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
