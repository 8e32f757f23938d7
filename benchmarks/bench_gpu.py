#!/usr/bin/env python3
"""
``rigkit bench`` on a lent GPU box: rigkit's own CUDA build of llama.cpp (``pyinfra @local``,
benchmarks/gpu/deploy.py), a generated random-weight model of a few GB, llama-server started
with the exact argv rigkit renders for the service (benchmarks/bench-h100/inventory.py), and
the seeds' context sweep through ``rigkit bench INVENTORY --service bench`` with NVML energy
read (read only: no GPU setting is changed).

Prepare on the build machine (git bundle of llama.cpp + wheels, see benchmarks/gpu.py)::

    .venv/bin/python benchmarks/gpu.py prepare

On the GPU box (no network; one command may run 10 minutes, so the work runs detached and
``follow`` streams it)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    setsid nohup python3 benchmarks/bench_gpu.py run --work /root/benchwork \
        --bundle .carry/llama.cpp-b11312.bundle > /root/benchwork.log 2>&1 &
    python3 benchmarks/bench_gpu.py follow --work /root/benchwork --out $OUT --limit 560

On a machine without a GPU (to try it): ``run --binary BUILT/llama-server --model TINY.gguf
--ctx 2048 --depths 128,256 --runs 2 --gen 32``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
INVENTORY = "benchmarks/bench-h100/inventory.py"
# The generated model: benchmarks/gpu.py's 3.75 B llama shapes, with a 262144-token context.
SHAPE = {"ctx": 262144}


def log(msg: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _env(args: argparse.Namespace, model: str) -> dict:
    env = dict(
        os.environ,
        RIGKIT_GPU_BUNDLE=str(args.bundle_path),
        RIGKIT_GPU_MODEL=model,
        RIGKIT_GPU_ROOT=args.root,
        RIGKIT_GPU_FA_ALL_QUANTS="1" if args.fa_all_quants else "0",
        RIGKIT_BENCH_CTX=str(args.ctx),
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def service_and_argv(args, model: str, binary: str):
    """The service as rigkit parses it from the inventory, and the argv rigkit renders."""
    import importlib.util

    try:
        from rigkit.render.llama_server import command_line
    except ImportError:  # before the renderers moved
        from rigkit.llama_server import command_line
    from rigkit.hostdata import parse_rig

    os.environ.update({k: v for k, v in _env(args, model).items() if k.startswith("RIGKIT_")})
    spec = importlib.util.spec_from_file_location("bench_inventory", REPO / INVENTORY)
    inv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inv)
    name, data = inv.local[0]
    rig = parse_rig(name, {k: data[k] for k in ("gpus", "llama_cpp", "services", "models") if k in data})
    service = rig.services[0]
    return service, command_line(service, binary)


def wait_health(port: int, proc: subprocess.Popen, limit: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama-server /health did not answer 200 in {limit:.0f} s")


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "done").unlink(missing_ok=True)
    meta: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    status = "failed"
    try:
        import gpu  # benchmarks/gpu.py: machine(), measure_bandwidth(), pyinfra_deploy(), make_models()

        meta["machine"] = gpu.machine()
        log(json.dumps(meta["machine"]))
        if args.binary:  # a CPU try-out: an existing build and model
            binary, model = args.binary, args.model
        else:
            meta["bandwidth"] = gpu.measure_bandwidth()
            log(f"bandwidth: {meta['bandwidth']}")
            args.bundle_path = work / Path(args.bundle).name
            if not args.bundle_path.exists():
                shutil.copy(args.bundle, args.bundle_path)
            model = str(work / "models" / "rand-3b-Q8_0.gguf")
            built: dict = {}

            def build():
                try:
                    env = _env(args, model)
                    for k, v in env.items():
                        if k.startswith("RIGKIT_"):
                            os.environ[k] = v
                    built["info"] = gpu.pyinfra_deploy(
                        work, args.bundle_path, args.fa_all_quants, True, model, args.root
                    )
                except Exception as exc:  # reported below
                    built["error"] = exc

            thread = threading.Thread(target=build)
            thread.start()  # the CUDA build and the model's generation at once
            src = work / "src.git"  # the tokenizer and template the model borrows, from the bundle
            if not (src / "HEAD").exists():
                subprocess.run(["git", "clone", "--bare", "-q", str(args.bundle_path), str(src)], check=True)
            if not Path(model).exists():
                meta["models"] = gpu.make_models(src, work / "models", {**gpu.SHAPE, **SHAPE})
                log(f"models: {json.dumps(meta['models'])}")
            thread.join()
            if "error" in built:
                raise built["error"]
            meta["build"] = built["info"]
            log(f"build: {json.dumps(built['info'])}")
            binary = str(Path(args.root, "current", "bin", "llama-server"))
            args.bundle_path = str(args.bundle_path)
        if args.binary:
            args.bundle_path = str(Path(args.bundle).resolve())
        service, argv = service_and_argv(args, model, binary)
        meta["argv"] = argv
        log("llama-server: " + " ".join(argv))
        server_log = open(work / "llama-server.log", "w")  # noqa: SIM115 (closed in the finally below)
        proc = subprocess.Popen(argv, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            meta["load_seconds"] = round(wait_health(service.port, proc), 1)
            log(f"llama-server healthy in {meta['load_seconds']} s")
            bench = [
                sys.executable,
                "-m",
                "rigkit.cli",
                "bench",
                INVENTORY,
                "--service",
                service.name,
                "--out",
                str(work / "out"),
                "--runs",
                str(args.runs),
                "--gen",
                str(args.gen),
            ]
            if args.depths:
                bench += ["--depths", args.depths]
            bw = (meta.get("bandwidth") or {}).get("d2d_copy_bytes_per_s")
            if bw:
                bench += ["--bandwidth", f"{bw / 1e9:.0f}"]
            meta["bench_command"] = bench
            log("$ " + " ".join(bench))
            (work / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            rc = subprocess.run(bench, cwd=REPO, env=_env(args, model)).returncode
            meta["bench_rc"] = rc
            status = "done" if rc == 0 else f"rigkit bench exited {rc}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            server_log.close()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        status = f"failed: {exc}"
    meta["status"] = status
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (work / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    (work / "done").write_text(status)
    log(f"status: {status}")
    return 0 if status == "done" else 1


def follow(args: argparse.Namespace) -> int:
    """Stream the detached run's log until it is done or --limit seconds pass; pack results."""
    work, out = Path(args.work), Path(args.out)
    logfile = Path(args.log)
    import gpu  # benchmarks/gpu.py

    done = gpu.tail_until_done(logfile, work / "done", args.limit)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for p in [work / "out", work / "meta.json", work / "llama-server.log", logfile, *work.glob("pyinfra-*.log")]:
            if p.exists():
                tar.add(p, arcname=p.name)
    for md in (work / "out").glob("*/*/bench.md"):  # out/<host>/<service>/bench.md
        shutil.copy(md, out / "bench.md")
    print("DONE: " + (work / "done").read_text() if done else f"STILL RUNNING after {args.limit}s", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("run")
    s.add_argument("--work", default="/root/benchwork")
    s.add_argument("--bundle", default=str(REPO / ".carry" / "llama.cpp-b11312.bundle"))
    s.add_argument("--root", default="/opt/rigkit/llama.cpp")
    s.add_argument("--fa-all-quants", action="store_true", help="build with FA_ALL_QUANTS (slower build)")
    s.add_argument("--ctx", type=int, default=262144)
    s.add_argument("--runs", type=int, default=3)
    s.add_argument("--gen", type=int, default=128)
    s.add_argument("--depths", help="default: rigkit bench's (the seeds' 4K ... 262K)")
    s.add_argument("--binary", help="an existing llama-server: skip the build and model generation")
    s.add_argument("--model", help="with --binary: the model to serve")
    s = sub.add_parser("follow")
    s.add_argument("--work", default="/root/benchwork")
    s.add_argument("--log", default="/root/benchwork.log")
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=float, default=560)
    args = p.parse_args()
    return {"run": run, "follow": follow}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
