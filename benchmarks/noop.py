#!/usr/bin/env python3
"""
The no-op run of the rig deploy (nothing to do: every fact says "as declared") on 1 and N
sandbox hosts, and where its time goes: the CPU seconds of pyinfra's own process and of everything else on
this machine, which during the run is the sandbox hosts' sshd and commands (on real hosts
that work runs on each host's own CPUs; here all share these cores).

    sudo .venv/bin/python benchmarks/noop.py [--hosts 8] [--runs 5]

Uses its own sandbox instance (/var/lib/rigkit/sandbox-bench-noop) and tears it down. The
first deploy on each host builds llama.cpp from the ccache the suite left warm.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench-noop"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def busy_seconds() -> float:
    """CPU seconds this machine spent not idle, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU: dict[int, list[tuple[float, float]]] = {}


def deploy(hosts: int) -> float:
    """One run's wall time; its CPU split (pyinfra's own process, everything else on this
    machine, which is the sandbox hosts' sshd and commands) goes to CPU[hosts]."""
    limits = [arg for i in range(1, hosts + 1) for arg in ("--limit", f"sandbox-{i}")]
    cpu_before, busy_before = children_cpu(), busy_seconds()
    started = time.monotonic()
    proc = subprocess.run(
        [PYINFRA, "-y", "--json", *limits, "inventories/sandbox.py", "deploys/rig.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    pyinfra_cpu = children_cpu() - cpu_before
    CPU.setdefault(hosts, []).append((pyinfra_cpu, busy_seconds() - busy_before - pyinfra_cpu))
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    try:
        operations = json.loads(proc.stdout)["results"]["operations"]
    except (ValueError, KeyError, TypeError):
        sys.exit(f"pyinfra printed no results:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    ran = {h for op in operations for h in op["success"] + op["no_change"]}
    if len(ran) != hosts:  # a limit that matched fewer hosts would time nothing
        sys.exit(f"expected {hosts} hosts in the run, pyinfra ran on {sorted(ran)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    try:
        sandbox.up(hosts=args.hosts)
        print(f"first deploy on {args.hosts} hosts: {deploy(args.hosts):.1f}s", flush=True)
        rows = []
        for n in (1, args.hosts):
            times = [deploy(n) for _ in range(args.runs)]
            rows.append((n, statistics.median(times), min(times), max(times)))
        print(
            "\n| hosts | no-op run, median s | min | max | pyinfra CPU s | hosts' CPU s (sshd, commands) |"
            "\n|---:|---:|---:|---:|---:|---:|"
        )
        for n, med, lo, hi in rows:
            runs = CPU[n][-args.runs :]
            mine = statistics.median(c for c, _ in runs)
            theirs = statistics.median(o for _, o in runs)
            print(f"| {n} | {med:.2f} | {lo:.2f} | {hi:.2f} | {mine:.2f} | {theirs:.2f} |")
        print(f"\n{args.hosts} hosts / 1 host: {rows[1][1] / rows[0][1]:.2f}x")
    finally:
        sandbox.down()


if __name__ == "__main__":
    main()
