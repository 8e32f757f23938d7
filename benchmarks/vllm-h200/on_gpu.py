#!/usr/bin/env python3
"""
The H200 side of benchmarks/vllm-h200 (README.md there). Runs under the GPU machine's own
python3 (torch 2.11.0+cu130), from the repository root, one step per device call:

    on_gpu.py gather                 copy the carried site parts (.carry/site*) to /tmp/rk/parts
    on_gpu.py setup                  all parts there: check, unpack vLLM 0.20.2 into
                                     /tmp/rk/site-plain and /tmp/rk/site-rigkit; rigkit's
                                     apply.py and selfcheck.py on each (--patches "" and
                                     --patches inc-hybrid-fp8, as files/vllm/Dockerfile runs
                                     them); the models generated from the committed code and
                                     compared with digests.json; the hybrid built by rigkit's
                                     derived-checkpoint code
    on_gpu.py serve NAME [NAME...]   for each run of runs.json: vllm serve with its argv,
                                     rigkit's check_service.py, the dispatch lines of the
                                     log, rigkit bench --url --local over 4K/16K/64K, vLLM's
                                     spec-decode counters (MTP acceptance), stop
    on_gpu.py pack                   everything under /tmp/rk/out into $OUT/results.tar.gz

Each step appends to /tmp/rk/out/steps.jsonl; a run's time is bounded (--budget seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RK = Path("/tmp/rk")
OUTDIR = RK / "out"
PY = sys.executable
ENV_BASE = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_LOGGING_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    # DeepGEMM JIT-compiles every block-FP8 shape at start otherwise (132 s here); the kernels
    # still compile on first use.
    "VLLM_DEEP_GEMM_WARMUP": "skip",
}
DEPTHS = "4k,16k,64k"


def log_step(step: str, **data) -> None:
    OUTDIR.mkdir(parents=True, exist_ok=True)
    rec = {"step": step, "time": time.strftime("%H:%M:%S"), **data}
    with open(OUTDIR / "steps.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"[on_gpu] {json.dumps(rec)[:2000]}", flush=True)


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, out: Path | None = None) -> tuple[int, str]:
    res = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    text = res.stdout + res.stderr
    if out:
        out.write_text(text)
    return res.returncode, text


# --------------------------------------------------------------------------------------


def gather() -> None:
    parts = RK / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    got = []
    # the parts travel in .carry/site* here, or beside this tree's snapshot (stage: prepare.py)
    for d in sorted([*(HERE / ".carry").glob("site*"), *REPO.parent.glob("site*")]):
        for f in d.iterdir():
            shutil.copy(f, parts / f.name)
            got.append(f.name)
    log_step("gather", copied=got, have=sorted(p.name for p in parts.iterdir()))


def setup() -> None:
    manifest = json.loads((HERE / "site-manifest.json").read_text())
    parts = RK / "parts"
    names = [f"site.tar.xz.{i + 1:02d}" for i in range(len(manifest["parts"]))]
    missing = [n for n in names if not (parts / n).is_file()]
    if missing:
        log_step("setup", error=f"parts missing: {missing}")
        sys.exit(1)
    t0 = time.time()
    h = hashlib.sha256()
    for n in names:
        h.update((parts / n).read_bytes())
    if h.hexdigest() != manifest["sha256"]:
        log_step("setup", error="site.tar.xz sha256 differs from site-manifest.json")
        sys.exit(1)
    for site in ("site-plain", "site-rigkit"):
        shutil.rmtree(RK / site, ignore_errors=True)
        (RK / site).mkdir(parents=True)
    cat = " ".join(str(parts / n) for n in names)
    subprocess.run(["bash", "-c", f"cat {cat} | xz -d -T0 | tar -C {RK / 'site-plain'} -xf -"], check=True)
    subprocess.run(["cp", "-a", f"{RK / 'site-plain'}/.", str(RK / "site-rigkit")], check=True)
    log_step("unpack", seconds=round(time.time() - t0, 1))
    # rigkit's patching, exactly as files/vllm/Dockerfile runs it (apply.py, then selfcheck.py
    # reading /opt/rigkit/vllm/applied.json), once per copy.
    apply = REPO / "files/vllm/rigkit_vllm_patches/apply.py"
    check = REPO / "files/vllm/rigkit_vllm_patches/selfcheck.py"
    for site, patches in (("site-plain", ""), ("site-rigkit", "inc-hybrid-fp8")):
        env = {"PYTHONPATH": f"{RK / site}:{REPO / 'files/vllm'}", **ENV_BASE}
        rc, text = run([PY, str(apply), "--patches", patches], env=env)
        shutil.copy("/opt/rigkit/vllm/applied.json", OUTDIR / f"applied-{site}.json")
        rc2, text2 = run([PY, str(check)], env=env, timeout=300)
        (OUTDIR / f"selfcheck-{site}.json").write_text(text2)
        log_step("patch", site=site, patches=patches, apply_rc=rc, apply=text.strip()[-1500:], selfcheck_rc=rc2,
                 selfcheck=text2.strip()[-1500:])  # fmt: skip
    t0 = time.time()
    models = RK / "models"
    rc, text = run([PY, str(HERE / "models.py"), str(models)], timeout=300)
    rc2, text2 = run(
        [PY, str(HERE / "build_hybrid.py"), "--ckpt-code", str(HERE / ".carry/ckpt"), "--int4", str(models / "int4"),
         "--fp8", str(models / "fp8"), "--out", str(models / "hybrid")], timeout=300)  # fmt: skip
    (OUTDIR / "build_hybrid.log").write_text(text2)
    sys.path.insert(0, str(HERE))
    import models as gen

    want = json.loads((HERE / "digests.json").read_text())
    same = {n: gen.digest(models / n) == want[n] for n in ("int4", "fp8", "hybrid")}
    log_step("models", rc=rc, build_rc=rc2, build=text2.strip()[-1500:], same_as_prepared=same,
             seconds=round(time.time() - t0, 1))  # fmt: skip


# --------------------------------------------------------------------------------------


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001
        return getattr(exc, "code", 0) or 0, str(exc)


def spec_counters(base: str) -> dict[str, float]:
    status, text = get(f"{base}/metrics", timeout=10)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in text.splitlines():
        if line.startswith("vllm:spec_decode") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0]
            if "position" in name:
                key += "{" + name.split("position=")[1].split(",")[0].split("}")[0] + "}"
            try:
                out[key] = out.get(key, 0.0) + float(value)
            except ValueError:
                pass
    return out


def tail(path: Path, n: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def dispatch_lines(log: Path) -> dict:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = text.splitlines()
    hybrid = [x for x in lines if "Hybrid INT4+FP8" in x]
    intro = [x.split("[rigkit-introspect] ", 1)[1] for x in lines if "[rigkit-introspect]" in x]
    shared = [x for x in intro if "shared_expert." in x]
    counts: dict[str, int] = {}
    for x in intro:
        method = x.rsplit("-> ", 1)[-1]
        counts[method] = counts.get(method, 0) + 1
    interesting = [
        x
        for x in lines
        if any(
            k in x
            for k in (
                "attention backend",
                "FlashAttention version",
                "Available KV cache memory",
                "GPU KV cache size",
                "Maximum concurrency",
                "Using MarlinLinearKernel",
                "Marlin",
                "Fp8",
                "CUTLASS",
                "speculative",
                "SpecDecoding",
                "Loading weights took",
                "Model loading took",
                "torch.compile takes",
                "Graph capturing finished",
                "init engine",
                "Traceback",
                "Error",
            )
        )
    ]
    return {"hybrid_log": hybrid, "shared_expert_methods": shared, "method_counts": counts, "notable": interesting[:80]}


def serve(name: str, budget: float, bench_runs: int, gen: int, server: list[str] | None = None) -> None:
    spec = json.loads((HERE / "runs.json").read_text())
    r = spec["runs"][name]
    port = spec["port"]
    base = f"http://127.0.0.1:{port}"
    out = OUTDIR / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "server.log"
    site = RK / f"site-{r['site']}"
    pythonpath = [str(site), str(REPO / "files/vllm"), str(HERE / "introspect")]
    env = {**os.environ, **ENV_BASE, "PYTHONPATH": ":".join(pythonpath)}
    argv = [*(server or [PY, "-m", "vllm.entrypoints.cli.main"]), "serve", *r["argv"]]
    (out / "argv.json").write_text(json.dumps({"argv": argv, "changes": r["changes"], "env": ENV_BASE,
                                               "PYTHONPATH": pythonpath}, indent=2))  # fmt: skip
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/tmp",
                                env=env, start_new_session=True)  # fmt: skip
    result: dict = {"run": name, "argv": r["argv"], "changes": r["changes"]}
    try:
        ready = None
        while time.time() - t0 < min(budget, 420):
            if proc.poll() is not None:
                break
            status, _ = get(f"{base}/health", timeout=2)
            if status == 200:
                ready = time.time() - t0
                break
            time.sleep(1)
        result["ready_s"] = round(ready, 1) if ready else None
        if ready is None:
            result["error"] = f"not ready (exit code {proc.poll()}) after {time.time() - t0:.0f}s"
            return
        # rigkit's engine-neutral check, as the host runs it, with the unit probes answered by
        # this process (no systemd here) and the journal read from the server's log.
        sys.path.insert(0, str(REPO / "rigkit/scripts"))
        import check_service as cs

        cs.systemctl = lambda *a: (
            "ActiveState=active\nSubState=running\nNRestarts=0\n"
            if proc.poll() is None
            else "ActiveState=failed\nSubState=failed\nNRestarts=0\n"
        )
        cs.journal_tail = lambda unit, lines=40: tail(log, lines)
        cs.WATCHDOG_STATE = RK / "watchdog"
        svc = {"name": name, "unit": f"vllm-{name}.service", "port": port, "model": r["argv"][0],
               "model_id": spec["served_model_name"], "key_file": None, "ready_timeout": 60, "engine": "vllm"}  # fmt: skip
        lines: list[str] = []
        problems = cs.check_all([svc], log=lines.append)
        result["check"] = {"ok": not problems, "lines": lines, "problems": [p[:3000] for p in problems]}
        status, body = get(f"{base}/v1/models")
        result["v1_models"] = body[:1000]
        # one tool call with tools offered (what the qwen3_coder parser returns on random weights)
        req = urllib.request.Request(
            f"{base}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": spec["served_model_name"],
                    "max_tokens": 16,
                    "temperature": 0,
                    "messages": cs.TOOL_REPLAY,
                    "tools": cs.TOOLS,
                }
            ).encode(),  # fmt: skip
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                result["tool_replay_answer"] = json.loads(resp.read())["choices"][0]
        except Exception as exc:  # noqa: BLE001
            result["tool_replay_answer"] = repr(exc)
        left = budget - (time.time() - t0)
        if left > 60 and bench_runs > 0:
            before = spec_counters(base)
            tb = time.time()
            rc, text = run(
                [PY, "-m", "rigkit.bench.command", "--url", base, "--local", "--depths", DEPTHS, "--runs",
                 str(bench_runs), "--gen", str(gen), "--out", str(out / "bench")],
                env={"PYTHONPATH": str(REPO)}, timeout=max(30, left - 20), out=out / "bench.log")  # fmt: skip
            after = spec_counters(base)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if "_created" not in k}
            drafts = delta.get("vllm:spec_decode_num_draft_tokens_total", 0)
            accepted = delta.get("vllm:spec_decode_num_accepted_tokens_total", 0)
            result["bench"] = {"rc": rc, "seconds": round(time.time() - tb, 1), "tail": text.strip()[-2500:]}
            result["spec_decode"] = {
                "counters_during_bench": delta,
                "acceptance": accepted / drafts if drafts else None,
                "mean_accepted_per_step": (1 + accepted / delta["vllm:spec_decode_num_drafts_total"])
                if delta.get("vllm:spec_decode_num_drafts_total")
                else None,
            }
        else:
            result["bench"] = {"skipped": f"{left:.0f}s left"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        time.sleep(2)
        result["dispatch"] = dispatch_lines(log)
        result["seconds"] = round(time.time() - t0, 1)
        (out / "server-tail.log").write_text(tail(log, 150))
        (out / "result.json").write_text(json.dumps(result, indent=2))
        log_step("serve", **{k: v for k, v in result.items() if k not in ("argv", "changes")})


def pack() -> None:
    dest = Path(os.environ.get("OUT", "/tmp/rk/packed"))
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "results.tar.gz", "w:gz") as t:
        t.add(OUTDIR, arcname="out")
    if (OUTDIR / "steps.jsonl").exists():
        shutil.copy(OUTDIR / "steps.jsonl", dest / "steps.jsonl")


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["gather", "setup", "serve", "pack"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--budget", type=float, default=280, help="seconds per served run")
    ap.add_argument("--runs", type=int, default=2, help="bench requests per depth")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--server", help="another server command instead of vLLM's CLI (a local test with a stand-in)")
    args = ap.parse_args()
    if args.step == "gather":
        gather()
    elif args.step == "setup":
        setup()
    elif args.step == "serve":
        for n in args.names:
            serve(n, args.budget, args.runs, args.gen, args.server.split() if args.server else None)
    else:
        pack()
    return 0


if __name__ == "__main__":
    sys.exit(main())
