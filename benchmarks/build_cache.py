#!/usr/bin/env python3
"""
The first deploy of N bare sandbox hosts sharing a build cache (issue 27) against one bare
host's: the rig deploy (packages, llama.cpp, the tiny model, a verified service) through
rigkit's own path, a real ``rigkit cache serve`` on the sandbox bridge, each deploy with an
empty cache.

    sudo .venv/bin/python benchmarks/build_cache.py [--hosts 8] [--warm-ccache]

Uses its own sandbox instance (/var/lib/rigkit/sandbox-bench-bcache) and tears it down at
the end. By default ccache is off on the hosts (``disable = true`` in each host's
/etc/ccache.conf; the sandbox's ccache directory is shared with everything else on this
machine, so a warm one would make the one compile 10 s and hide what the cache saves):
the one-host deploy compiles llama-server cold, the fleet compiles it once, cold, while the
other hosts wait and then fetch. ``--warm-ccache`` leaves ccache on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench-bcache"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
PORT = 8094
#: The one host and the fleet build under different roots (so in different build directories):
#: their binaries, both compiled cold, show whether the build is reproducible across paths.
ONE_ROOT, FLEET_ROOT = "/opt/rigkit/llama.cpp", "/srv/rigkit-bench/llama.cpp"


def first_deploy(hosts: int, cold: bool, root: str) -> dict:
    sandbox.down()
    sb = sandbox.up(hosts=hosts)
    if cold:
        for host in sb.hosts:
            sb.ssh(host, "echo 'disable = true' > /etc/ccache.conf")
    with tempfile.TemporaryDirectory(prefix="rigkit-bench-cache-") as cache_dir:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rigkit.cli",
                "cache",
                "serve",
                cache_dir,
                "--host",
                sb.gateway,
                "--port",
                str(PORT),
            ],
            cwd=REPO,
        )
        url = f"http://{sb.gateway}:{PORT}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/v1/{'0' * 64}/manifest.json", timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        env = {**os.environ, "RIGKIT_SANDBOX_BUILD_CACHE": url, "RIGKIT_SANDBOX_LLAMA_ROOT": root}
        try:
            started = time.monotonic()
            run = subprocess.run(
                [PYINFRA, "-y", "inventories/sandbox.py", "deploys/rig.py"],
                cwd=REPO,
                capture_output=True,
                text=True,
                env=env,
            )
            seconds = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(timeout=10)
    if run.returncode != 0:
        sys.exit(f"deploy of {hosts} host(s) failed:\n{run.stderr[-4000:]}")
    print(f"first deploy of {hosts} host(s): {seconds:.1f} s", file=sys.stderr)
    logs = {h.name: sb.ssh(h, f"cat {root}/builds.log").splitlines() for h in sb.hosts}
    shas = {h.name: sb.ssh(h, f"sha256sum {root}/current/bin/llama-server").split()[0] for h in sb.hosts}
    return {
        "hosts": hosts,
        "seconds": round(seconds, 1),
        "compiled": sum(" built in " in line for lines in logs.values() for line in lines),
        "fetched": sum(" fetched from " in line for lines in logs.values() for line in lines),
        "build_seconds": [
            line.rsplit(" in ", 1)[1] for lines in logs.values() for line in lines if " built in " in line
        ],
        "identical_binaries": len(set(shas.values())) == 1,
        "llama_server_sha256": sorted(set(shas.values())),
        "root": root,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--warm-ccache", action="store_true")
    ap.add_argument("--one", help="the one-host result (its JSON line) of an earlier run, not measured again")
    args = ap.parse_args()
    try:
        one = json.loads(args.one) if args.one else first_deploy(1, cold=not args.warm_ccache, root=ONE_ROOT)
        print(json.dumps(one), file=sys.stderr)
        fleet = first_deploy(args.hosts, cold=not args.warm_ccache, root=FLEET_ROOT)
        print(json.dumps(fleet), file=sys.stderr)
    finally:
        sandbox.down()
    ratio = fleet["seconds"] / one["seconds"]
    print("| first deploy | hosts | wall | compiles | fetched | compile |\n|---|---:|---:|---:|---:|---:|")
    for row in (one, fleet):
        print(
            f"| {'one host' if row['hosts'] == 1 else 'fleet'} | {row['hosts']} | {row['seconds']} s | "
            f"{row['compiled']} | {row['fetched']} | {', '.join(row['build_seconds'])} |"
        )
    print(f"\n{args.hosts} hosts / 1 host: {ratio:.2f}x (goal: at most 1.3x)")
    print(f"the fleet's binaries identical: {fleet['identical_binaries']}")
    across = one["llama_server_sha256"] == fleet["llama_server_sha256"]
    print(f"compiled under {one['root']} and {fleet['root']}, the same bytes: {across}")
    print(json.dumps({"one": one, "fleet": fleet, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
