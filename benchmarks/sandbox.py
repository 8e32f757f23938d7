#!/usr/bin/env python3
"""
How long `rigkit sandbox up` takes for 1, 2 and 4 hosts, and a no-op pyinfra run on 1 vs 4.

    sudo .venv/bin/python benchmarks/sandbox.py [--debootstrap]

Uses its own sandbox instance (/var/lib/rigkit/sandbox-bench) and tears it down at the end.
"fresh" = hosts created (base root filesystem already cached); "again" = `up` on a running
sandbox (the idempotent no-op); --debootstrap also times a first-ever up with an empty cache
(the debootstrap of the base), in a temporary cache directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def timed(fn, *args, **kwargs) -> float:
    started = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - started


def pyinfra_noop(hosts: int) -> tuple[float, float]:
    sandbox.down()
    sandbox.up(hosts=hosts, sources=False)
    cmd = [PYINFRA, "-y", "inventories/sandbox.py", "deploys/sample.py"]
    first = timed(subprocess.run, cmd, cwd=REPO, check=True, capture_output=True)
    noop = timed(subprocess.run, cmd, cwd=REPO, check=True, capture_output=True)
    return first, noop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--debootstrap", action="store_true", help="also time an empty-cache up")
    args = parser.parse_args()
    rows = []
    try:
        if args.debootstrap:
            with tempfile.TemporaryDirectory(dir="/var/tmp") as cache:
                os.environ["RIGKIT_CACHE"] = cache
                rows.append(("up --hosts 1, empty cache (debootstrap)", timed(sandbox.up, 1, sources=False)))
                sandbox.down()
                del os.environ["RIGKIT_CACHE"]
        sandbox.ensure_base()
        for n in (1, 2, 4):
            sandbox.down()
            rows.append((f"up --hosts {n}, fresh hosts", timed(sandbox.up, n, sources=False)))
            rows.append((f"up --hosts {n}, again (no-op)", timed(sandbox.up, n, sources=False)))
        rows.append(("down (4 hosts)", timed(sandbox.down)))
        for n in (1, 4):
            first, noop = pyinfra_noop(n)
            rows.append((f"deploys/sample.py first run, {n} host(s)", first))
            rows.append((f"deploys/sample.py no-op run, {n} host(s)", noop))
    finally:
        sandbox.down()
    print("| step | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
