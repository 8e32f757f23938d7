#!/usr/bin/env python3
"""
Downtime of a llama.cpp upgrade (b9976 -> b11312) while serving, and rebuild time with a
warm ccache versus cold, through rigkit's own deploy and build path on a sandbox host.

    sudo .venv/bin/python benchmarks/upgrade.py

Uses its own sandbox instance (/var/lib/rigkit/sandbox-bench-upgrade, one host) and tears it
down at the end. The rebuilds go beside the deployed builds under a new build key (as a changed pin or
flag gives); the cold one disables ccache (CCACHE_DISABLE=1) for that one build. Beside each time, the
ccache hits: for the deploys the host's `ccache --print-stats` (the counters of `ccache -s`) before and
after, cache-wide (the sandbox's cache directory is shared by every sandbox on this machine, so builds
elsewhere count too); for the timed rebuilds, exactly that build's compilations (CCACHE_STATSLOG).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench-upgrade"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402
from rigkit.facts.llama_cpp import TOOL  # noqa: E402
from rigkit.hostdata import LlamaCpp  # noqa: E402
from rigkit.operations.llama_cpp import cmake_flags  # noqa: E402
from rigkit.sandbox.health import HealthPoller  # noqa: E402
from rigkit.scripts.llama_host import CCACHE_DIR  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def deploy(ref: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [PYINFRA, "-y", "inventories/sandbox.py", "deploys/rig.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "RIGKIT_LLAMA_REF": ref},
    )
    return time.monotonic() - started


HITS = ("direct_cache_hit", "preprocessed_cache_hit")


def ccache_stats(sb: sandbox.Sandbox) -> dict[str, int]:
    """The host's ccache counters (what `ccache -s` shows), machine-readable. Before the first
    deploy installed ccache there, the same cache directory is read from this machine (the
    sandbox keeps it here), with this machine's ccache if it has one."""
    out = sb.ssh(sb.hosts[0], f"! command -v ccache >/dev/null || CCACHE_DIR={CCACHE_DIR} ccache --print-stats")
    if not out and shutil.which("ccache"):
        out = subprocess.run(
            ["ccache", "--print-stats"],
            env={**os.environ, "CCACHE_DIR": str(sandbox.cache_dir() / "sandbox-ccache")},
            capture_output=True,
            text=True,
        ).stdout
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines()) if v.isdigit()}


def hit_rate(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(hits, cacheable compilations) between two ccache_stats()."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    hits = sum(delta.get(k, 0) for k in HITS)
    return hits, hits + delta.get("cache_miss", 0)


def hits_text(before: dict[str, int], after: dict[str, int]) -> str:
    if not before or not after:
        return "n/a (no ccache to read the counters with)"
    hits, calls = hit_rate(before, after)
    return f"{hits}/{calls} hits ({100 * hits / calls:.1f} %) cache-wide" if calls else "no lookups"


def timed_deploy(sb: sandbox.Sandbox, ref: str) -> tuple[float, str]:
    before = ccache_stats(sb)
    seconds = deploy(ref)
    return seconds, hits_text(before, ccache_stats(sb))


def build_seconds(sb: sandbox.Sandbox, key: str, ccache: bool) -> tuple[float, str]:
    """One more build of b11312 through the host tool with the deploy's own flags, beside the
    deployed ones (a new build key, as a changed pin or flag gives), then removed again.
    Its seconds, and its own ccache hits as text (from a stats log of this build's compilations
    only: the cache directory is shared with every sandbox on this machine)."""
    pin = LlamaCpp(ref="b11312", cuda=False)
    flags = " ".join(shlex.quote(f) for f in cmake_flags(pin, ()))
    env = "" if ccache else "CCACHE_DISABLE=1 "
    host = sb.hosts[0]
    log = f"/tmp/rigkit-bench-{key}.stats"
    sb.ssh(
        host,
        f"rm -f {log}; {env}CCACHE_STATSLOG={log} python3 {TOOL} build --root {pin.root} --url {sb.git_url}/llama.cpp.git "
        f"--ref {pin.ref} --flags-hash {key} -- {flags}",
        timeout=None,
    )
    info = json.loads(
        sb.ssh(
            host, f"cat {pin.root}/builds/{pin.ref}-*-{key}/build.json && rm -rf {pin.root}/builds/{pin.ref}-*-{key}"
        )
    )
    outcomes = sb.ssh(host, f"cat {log} 2>/dev/null; rm -f {log}").splitlines()
    hits = sum(line in HITS for line in outcomes)
    calls = hits + outcomes.count("cache_miss")
    return info["build_seconds"], (f"{hits}/{calls} hits ({100 * hits / calls:.1f} %)" if calls else "no lookups")


def main() -> None:
    rows = []
    try:
        sb = sandbox.up(hosts=1)
        rows.append(("deploy b9976 (build, start, verify)", *timed_deploy(sb, "b9976")))
        url = f"http://{sb.hosts[0].address}:8000/health"
        with HealthPoller(url) as poller:
            rows.append(("upgrade to b11312 (build beside, switch, restart, verify)", *timed_deploy(sb, "b11312")))
        rows.append(("  longest /health outage during the upgrade", poller.longest_outage()))
        rows.append(("  share of 100 ms polls answered 200", poller.healthy_fraction * 100))
        rows.append(("re-run, nothing to do", deploy("b11312")))
        run = int(time.time())  # a build directory no earlier run used
        for name, key, ccache in (("ccache warm", f"warm{run}", True), ("ccache off (cold)", f"cold{run}", False)):
            seconds, hits = build_seconds(sb, key, ccache)
            rows.append((f"llama-server b11312 rebuild, {name}", seconds, hits))
    finally:
        sandbox.down()
    print("| step | value | ccache |\n|---|---:|---|")
    for name, value, *hits in rows:
        unit = "%" if "share" in name else "s"
        print(f"| {name} | {value:.1f} {unit} | {''.join(hits)} |")


if __name__ == "__main__":
    main()
