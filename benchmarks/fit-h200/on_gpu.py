#!/usr/bin/env python3
"""
The H200 side of benchmarks/fit-h200 (issue 25: rigkit's memory plan against what llama-server
really holds). Runs under the GPU machine's python3 from the repository root, carrying
``.carry/fit`` (prepare.py makes it):

    on_gpu.py build     detached: unpack llama.cpp b11312, cmake + ninja llama-server (CUDA,
                        sm_90) into /tmp/fit/build; and, beside it, the random-weight 8B llama
                        GGUFs (F16 and Q8_0, benchmarks/gpu.py's generator) in /srv/models/fit
    on_gpu.py measure   waits for both (bounded), then for each run of runs.json: llama-server
                        with its argv; after /health turns 200, the GPU's used memory
                        (nvidia-smi: the process's and the whole GPU's against a baseline taken
                        before the start), again after one request; llama-server's own buffer
                        lines from its log; stop
    on_gpu.py pack      results, logs and the GGUF headers (up to the tensor data) into
                        $OUT/fit-results.tar.gz

Nothing here needs the network: the GPU machine reaches none.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CARRY = REPO / ".carry" / "fit"
WORK = Path("/tmp/fit")
SRC = WORK / "src"
OUTDIR = WORK / "out"
MODELS = Path("/srv/models/fit")
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_CUDA=ON",
    "-DCMAKE_CUDA_ARCHITECTURES=90",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would fetch the web UI from the Hub
    "-DLLAMA_OPENSSL=OFF",
]
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def log(msg: str) -> None:
    print(f"[fit {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(jobs: int) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    OUTDIR.mkdir(parents=True, exist_ok=True)
    SRC.mkdir(parents=True, exist_ok=True)
    for name in ("llama-src.tar.xz", "llama-models.tar.xz"):
        subprocess.run(["tar", "-C", str(SRC), "-xJf", str(CARRY / name)], check=True)
    configure = " ".join(["cmake", "-S", str(SRC), "-B", str(WORK / "build"), "-G", "Ninja", *CMAKE_FLAGS])
    script = (
        f"set -o pipefail; start=$(date +%s); {configure} && ninja -C {WORK / 'build'} -j {jobs} llama-server; "
        f"rc=$?; echo $rc $(( $(date +%s) - start )) > {WORK / 'build.rc'}"
    )
    with open(OUTDIR / "build.log", "w") as f:  # the child keeps its own copy of the descriptor
        subprocess.Popen(["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    spec = json.loads((HERE / "runs.json").read_text())
    models = (
        f"import sys, json; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'benchmarks')!r}, {str(SRC / 'gguf-py')!r}]\n"
        "from pathlib import Path\nimport gpu\n"
        f"m = gpu.make_models(Path({str(SRC)!r}), Path({str(MODELS)!r}), {spec['shape']!r}, stem='rand-8b')\n"
        f"Path({str(OUTDIR / 'models.json')!r}).write_text(json.dumps(m, indent=2))\n"
    )
    with open(OUTDIR / "models.log", "w") as f:
        subprocess.Popen([sys.executable, "-c", models], stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    log(f"build (-j {jobs}) and models started; logs in {OUTDIR}")


def smi(query: str, kind: str = "gpu") -> list[list[str]]:
    flag = "--query-gpu" if kind == "gpu" else "--query-compute-apps"
    res = subprocess.run(["nvidia-smi", f"{flag}={query}", "--format=csv,noheader,nounits"], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    return [[c.strip() for c in line.split(",")] for line in res.stdout.strip().splitlines() if line.strip()]


def gpu_used_mib() -> int:
    return int(smi("memory.used")[0][0])


def proc_used_mib(pid: int) -> int | None:
    for row in smi("pid,used_memory", kind="apps"):
        if row and row[0] == str(pid):
            return int(row[1])
    return None


BUFFER = re.compile(r"(?P<what>[\w ]*?)\s*(?P<dev>CUDA\d+|CUDA_Host|CPU_Mapped|CPU|CUDA_Split)\s+(?P<kind>[\w ]+?) "
                    r"buffer size\s*=\s*(?P<mib>[\d.]+) MiB")  # fmt: skip


def buffers(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        m = BUFFER.search(line)
        if m:
            out.append({"source": line.split(":")[0].strip(), "device": m["dev"], "kind": m["kind"].strip(),
                        "mib": float(m["mib"])})  # fmt: skip
    return out


def wait_for(path: Path, limit: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < limit:
        if path.exists():
            return True
        time.sleep(2)
    return False


def measure(limit: float) -> None:
    t0 = time.time()
    ok_build = wait_for(WORK / "build.rc", limit)
    ok_models = wait_for(OUTDIR / "models.json", max(1.0, limit - (time.time() - t0)))
    rc = (WORK / "build.rc").read_text().split() if ok_build else None
    log(f"build: {rc}; models: {ok_models}")
    if not (ok_build and ok_models and rc and rc[0] == "0"):
        subprocess.run(["tail", "-30", str(OUTDIR / "build.log"), str(OUTDIR / "models.log")], check=False)
        sys.exit(1)
    spec = json.loads((HERE / "runs.json").read_text())
    results = {"build": {"rc": int(rc[0]), "seconds": int(rc[1]), "flags": CMAKE_FLAGS},
               "gpu": smi("name,memory.total,driver_version")[0], "runs": {}}  # fmt: skip
    for name, run in spec["runs"].items():
        results["runs"][name] = one(name, run)
        (OUTDIR / "results.json").write_text(json.dumps(results, indent=2))
    log("done")


def one(name: str, run: dict) -> dict:
    baseline = gpu_used_mib()
    logf = OUTDIR / f"{name}.log"
    t0 = time.time()
    with open(logf, "w") as f:
        proc = subprocess.Popen(run["argv"], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **ENV}, start_new_session=True)  # fmt: skip
    res: dict = {"baseline_gpu_used_mib": baseline}
    try:
        while time.time() - t0 < 150:
            if proc.poll() is not None:
                res["error"] = f"exited {proc.returncode}"
                return res
            try:
                with urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            res["error"] = "not healthy in 150 s"
            return res
        res["ready_s"] = round(time.time() - t0, 1)
        time.sleep(3)
        res["after_load"] = {"process_mib": proc_used_mib(proc.pid), "gpu_used_mib": gpu_used_mib()}
        body = json.dumps({"prompt": "rigkit plans memory " * 600, "n_predict": 64, "ignore_eos": True,
                           "temperature": 0, "cache_prompt": False}).encode()  # fmt: skip
        req = urllib.request.Request("http://127.0.0.1:8080/completion", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as r:
            res["timings"] = json.loads(r.read())["timings"]
        time.sleep(1)
        res["after_request"] = {"process_mib": proc_used_mib(proc.pid), "gpu_used_mib": gpu_used_mib()}
    except Exception as exc:  # noqa: BLE001 - recorded, the next run goes on
        res["error"] = repr(exc)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        text = logf.read_text(errors="replace")
        res["buffers"] = buffers(text)
        res["seconds"] = round(time.time() - t0, 1)
        log(f"{name}: {json.dumps({k: v for k, v in res.items() if k != 'buffers'})}")
        time.sleep(2)
    return res


def gguf_header(path: Path, dest: Path) -> None:
    """The file up to its tensor data: what ``rigkit lock`` reads by range request."""
    sys.path.insert(0, str(SRC / "gguf-py"))
    import gguf

    offset = gguf.GGUFReader(path).data_offset
    with open(path, "rb") as src, open(dest, "wb") as out:
        out.write(src.read(offset))


def pack() -> None:
    for p in sorted(MODELS.glob("*.gguf")):
        try:
            gguf_header(p, OUTDIR / f"{p.stem}.header.gguf")
        except Exception as exc:  # noqa: BLE001
            log(f"header of {p}: {exc!r}")
    dest = Path(os.environ.get("OUT", "/tmp/fit/packed"))
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "fit-results.tar.gz", "w:gz") as t:
        t.add(OUTDIR, arcname="fit")
    log(f"packed {dest / 'fit-results.tar.gz'} ({(dest / 'fit-results.tar.gz').stat().st_size / 1e6:.1f} MB)")


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["build", "measure", "pack"])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--limit", type=float, default=420, help="seconds to wait for the build and models")
    a = ap.parse_args()
    if a.step == "build":
        build(a.jobs)
    elif a.step == "measure":
        measure(a.limit)
    else:
        pack()
    return 0


if __name__ == "__main__":
    sys.exit(main())
