#!/usr/bin/env python3
"""
A bare box's first deploy with its model download and its llama.cpp compile overlapped
(issue 27), against the same two waits in a row: sandbox hosts, a real llama.cpp build,
the tiny model from a Hub mirror throttled like a home line (rigkit's own mirror over the
Hub's download API: the Hub is a stand-in here).

    sudo .venv/bin/python benchmarks/bring_up.py [--rate 64000] [--warm-ccache]

Two bare hosts, one after the other, each booted fresh (its own sandbox instance,
/var/lib/rigkit/sandbox-bench-bring-up, torn down at the end):

* serial: the models step alone (``models(config).wait()``: the download alone), then the
  whole rig deploy (the build and the service; the model already verified);
* overlapped: the whole rig deploy on a bare host (the download in the background while
  the packages install and llama.cpp compiles, the serve step waiting for it).

Goal: the overlapped deploy within 60 s of the longer of the two waits. By default ccache
is off on the hosts (a cold compile, minutes on 2 cores); ``--warm-ccache`` leaves it on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["RIGKIT_SANDBOX_DIR"] = "/var/lib/rigkit/sandbox-bench-bring-up"
sys.path.insert(0, str(REPO))

from rigkit import sandbox  # noqa: E402
from rigkit.models import lock_command, lockfile, mirror  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
HUB_REPO = "rigkit-bench/tiny-qwen"
DEST = "/srv/models/tiny-bench"

INVENTORY = """
from rigkit.sandbox import pyinfra_hosts

def rig_data(data):
    return {{
        "model_lock": {lock!r},
        "hf_endpoint": {endpoint!r},
        "hf_insecure_http": True,
        "gpus": {{"count": 0}},
        "llama_cpp": {{"ref": "b11312", "git_url": data["sandbox_git_url"] + "/llama.cpp.git", "cuda": False}},
        "models": [{{"name": "tiny", "repo": {repo!r}, "revision": "main", "include": ["*.gguf"], "dest": {dest!r}}}],
        "services": [{{"name": "tiny", "model": "ref:tiny", "host": "0.0.0.0", "allow_unauthenticated": True,
                       "port": 8000, "ctx": 2048, "parallel": 2, "n_gpu_layers": 0, "extra_args": ["--no-warmup"]}}],
    }}

hosts = [(name, {{**data, **rig_data(data)}}) for name, data in pyinfra_hosts()]
"""

MODELS_ONLY = """
from pyinfra import host

from rigkit.hostdata import rig_for
from rigkit.models.deploy import models

models(rig_for(host)).wait()
"""


def deploy(inventory: Path, deploy_file: str) -> float:
    started = time.monotonic()
    run = subprocess.run([PYINFRA, "-y", str(inventory), deploy_file], cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(f"{deploy_file} failed:\n{run.stderr[-4000:]}")
    print(f"{Path(deploy_file).name}: {seconds:.1f} s", file=sys.stderr)
    return seconds


def bare_host(cold: bool):
    sandbox.down()
    sb = sandbox.up(hosts=1)
    if cold:
        sb.ssh(sb.hosts[0], "echo 'disable = true' > /etc/ccache.conf")
    return sb


def build_seconds(sb) -> float:
    (line,) = [x for x in sb.ssh(sb.hosts[0], "cat /opt/rigkit/llama.cpp/builds.log").splitlines() if " built in " in x]
    return float(line.rsplit(" in ", 1)[1].rstrip("s"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=64_000, help="the mirror's bytes per second (all connections)")
    ap.add_argument("--warm-ccache", action="store_true")
    args = ap.parse_args()
    cold = not args.warm_ccache
    work = Path(tempfile.mkdtemp(prefix="rigkit-bench-bring-up-"))
    try:
        sb = bare_host(cold)
        shutil.copytree(sandbox.cache_dir() / "models" / "tiny-qwen", work / "hub" / HUB_REPO)
        size = sum(p.stat().st_size for p in (work / "hub" / HUB_REPO).iterdir())
        srv = mirror.serve(str(work / "hub"), host=sb.gateway, port=0)
        inventory, lock = work / "bring_up.py", work / "bring_up.lock.yaml"
        inventory.write_text(INVENTORY.format(lock=str(lock), endpoint=srv.url, repo=HUB_REPO, dest=DEST))
        lockfile.dump(
            lock_command.lock_refs(lock_command.collect_model_refs(inventory), endpoint=srv.url, log=lambda _: None),
            lock,
            inventory=str(inventory),
        )
        models_only = work / "models_only.py"
        models_only.write_text(textwrap.dedent(MODELS_ONLY))
        srv.rate_limit = args.rate
        download = deploy(inventory, str(models_only))
        rest = deploy(inventory, "deploys/rig.py")
        serial_build = build_seconds(sb)
        srv.stop()

        sb = bare_host(cold)
        srv = mirror.serve(str(work / "hub"), host=sb.gateway, port=0)
        inventory.write_text(INVENTORY.format(lock=str(lock), endpoint=srv.url, repo=HUB_REPO, dest=DEST))
        srv.rate_limit = args.rate
        overlapped = deploy(inventory, "deploys/rig.py")
        overlapped_build = build_seconds(sb)
        srv.stop()
    finally:
        sandbox.down()
        shutil.rmtree(work, ignore_errors=True)
    longer = max(download, rest)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "model_bytes": size,
        "rate_bytes_per_s": args.rate,
        "ccache": "warm" if args.warm_ccache else "off",
        "download_alone_s": round(download, 1),
        "build_and_serve_alone_s": round(rest, 1),
        "serial_s": round(download + rest, 1),
        "overlapped_s": round(overlapped, 1),
        "compile_s": {"serial": serial_build, "overlapped": overlapped_build},
        "over_the_longer_s": round(overlapped - longer, 1),
    }
    print("| first deploy of a bare host | wall | the llama.cpp compile |\n|---|---:|---:|")
    print(f"| the download alone (models step) | {download:.1f} s | |")
    print(f"| then the build and the service | {rest:.1f} s | {serial_build} s |")
    print(f"| serial (the two in a row) | {download + rest:.1f} s | |")
    print(f"| overlapped (deploys/rig.py) | {overlapped:.1f} s | {overlapped_build} s |")
    print(f"\noverlapped - the longer of the two: {overlapped - longer:+.1f} s (goal: at most 60 s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
