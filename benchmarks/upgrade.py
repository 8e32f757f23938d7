#!/usr/bin/env python3
"""
Downtime of a llama.cpp upgrade (b9976 -> b11312) while serving, and rebuild time with a
warm ccache versus cold, through rigkit's own deploy and build path on a sandbox host.

    sudo .venv/bin/python benchmarks/upgrade.py

Uses its own sandbox instance (/var/lib/rigkit/sandbox-bench-upgrade, one host) and tears it
down at the end. The rebuilds go beside the deployed builds under a new build key (as a changed pin or
flag gives); the cold one disables ccache (CCACHE_DISABLE=1) for that one build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench-upgrade"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402
from rigkit.health import HealthPoller  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def deploy(ref: str) -> float:
    started = time.monotonic()
    subprocess.run([PYINFRA, "-y", "inventories/sandbox.py", "deploys/rig.py"], cwd=REPO, check=True,
                   capture_output=True, env={**os.environ, "RIGKIT_LLAMA_REF": ref})
    return time.monotonic() - started


def ssh(sb: sandbox.Sandbox, command: str) -> str:
    return subprocess.run(
        ["ssh", "-i", sb.ssh_key, "-o", f"UserKnownHostsFile={sb.known_hosts}", "-o", "BatchMode=yes",
         f"root@{sb.hosts[0].address}", command], check=True, capture_output=True, text=True).stdout


def build_seconds(sb: sandbox.Sandbox, key: str, ccache: bool) -> float:
    """One more build of b11312 through the host tool, beside the deployed ones (a new build
    key, as a changed pin or flag gives), then removed again."""
    env = "" if ccache else "CCACHE_DISABLE=1 "
    root = "/opt/rigkit/llama.cpp"
    ssh(sb, f"{env}python3 /opt/rigkit/bin/llama_host.py build --root {root} "
            f"--url {sb.git_url}/llama.cpp.git --ref b11312 --flags-hash {key} -- "
            "-DBUILD_SHARED_LIBS=OFF -DGGML_CCACHE=ON -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
            "-DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_CUDA=OFF")
    info = json.loads(ssh(sb, f"cat {root}/builds/b11312-*-{key}/build.json"))
    ssh(sb, f"rm -rf {root}/builds/b11312-*-{key}")
    return info["build_seconds"]


def main() -> None:
    rows = []
    try:
        sb = sandbox.up(hosts=1)
        rows.append(("deploy b9976 (build, start, verify)", deploy("b9976")))
        url = f"http://{sb.hosts[0].address}:8000/health"
        with HealthPoller(url) as poller:
            rows.append(("upgrade to b11312 (build beside, switch, restart, verify)", deploy("b11312")))
        rows.append(("  longest /health outage during the upgrade", poller.longest_outage()))
        rows.append(("  share of 100 ms polls answered 200", poller.healthy_fraction * 100))
        rows.append(("re-run, nothing to do", deploy("b11312")))
        rows.append(("llama-server b11312 rebuild, ccache warm", build_seconds(sb, "benchwarm", True)))
        rows.append(("llama-server b11312 rebuild, ccache off (cold)", build_seconds(sb, "benchcold", False)))
    finally:
        sandbox.down()
    print("| step | value |\n|---|---:|")
    for name, value in rows:
        unit = "%" if "share" in name else "s"
        print(f"| {name} | {value:.1f} {unit} |")


if __name__ == "__main__":
    main()
