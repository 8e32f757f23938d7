"""Wait until the Ray cluster reports every expected node alive (and at least the GPUs
they bring), at most TIMEOUT seconds; otherwise fail naming the nodes that are missing.

    ray_ready.py --address HEAD:PORT --timeout S --gpus N --node NAME=ADDR [--node ...]

Runs on the head with the cluster's Python (it imports ray)."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--gpus", type=float, default=0)
    parser.add_argument("--node", action="append", default=[], required=True)
    args = parser.parse_args(argv)
    expected = dict(n.split("=", 1) for n in args.node)

    import ray

    deadline = time.monotonic() + args.timeout
    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    try:
        while True:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            addresses = {n["NodeManagerAddress"] for n in alive}
            gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
            missing = [f"{name} ({addr})" for name, addr in expected.items() if addr not in addresses]
            if not missing and gpus >= args.gpus:
                cpus = ", ".join(
                    f"{name}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                    for name, addr in expected.items()
                    for n in alive
                    if n["NodeManagerAddress"] == addr
                )
                print(f"ray cluster at {args.address}: all {len(expected)} nodes alive ({cpus})", flush=True)
                return 0
            if time.monotonic() >= deadline:
                what = f"missing node(s): {', '.join(missing)}" if missing else f"{gpus:g} of {args.gpus:g} GPUs"
                print(
                    f"ray cluster at {args.address}: not complete after {args.timeout:g} s; {what}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(1)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
