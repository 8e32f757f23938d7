#!/usr/bin/env python3
"""
GPU validation of rigkit's llama.cpp build path: a real CUDA build (FA_ALL_QUANTS on and
off, timed), the binary's GPU code checked, a generated model served and measured against
the memory-bandwidth roofline.

On a machine with network (the build machine), make what the GPU box needs::

    .venv/bin/python benchmarks/gpu.py prepare [--dest .carry]

      .carry/llama.cpp-b11312.bundle   git bundle of the pinned ref (all history up to it)
      .carry/whl/*.whl                 cp312 manylinux wheels: pyinfra 3.10, its deps, gguf

On the GPU box (CUDA toolkit, cmake, git, a C++ compiler, python3 with numpy; no network)::

    python3 -m pip install --no-index --no-deps --target /tmp/site .carry/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu.py run --work /root/gpubench \
        --bundle .carry/llama.cpp-b11312.bundle

``run`` does, in order, writing ``results.json`` and ``results.md`` under --work after each
step: (1) ``pyinfra @local`` build with FA_ALL_QUANTS on (rigkit's default) and the switch to
it, (2) ``cuobjdump --list-elf`` of the binaries, (3) a random-weight llama GGUF in F16 and
Q8_0, (4) llama-bench: pp512 and tg128 at depths 0/4096/16384 with q8_0 KV + flash
attention, f16 KV + flash attention and f16 KV without, (5) llama-server started with the
exact argv rigkit renders for the service, ``timings`` of /completion, (6) the same build
with FA_ALL_QUANTS off, timed. ``follow`` streams a detached ``run``'s log and copies its
results (used where one command may only run for a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))

REF = "b11312"
SDIST = "0.3.36"  # llama-cpp-python sdist that vendors b11312
ROOT = "/opt/rigkit/llama.cpp"
NOMINAL_BW = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12}

# The generated model: Llama-3.2-3B-like shapes (GQA 24/8, head dim 128), untied output.
SHAPE = {"hidden": 3072, "layers": 28, "heads": 24, "kv_heads": 8, "ffn": 8192, "ctx": 32768}
KV_CONFIGS = [  # (label, flash attention, K type, V type)
    ("q8_0 KV, FA on", "1", "q8_0", "q8_0"),
    ("f16 KV, FA on", "1", "f16", "f16"),
    ("f16 KV, FA off", "0", "f16", "f16"),
]
DEPTHS = "0,4096,16384"
WHEELS = [
    "pyinfra==3.10.0",
    "distro==1.9.0",
    "gevent==26.9.0",
    "greenlet==3.5.6",
    "zope.event==6.2",
    "zope.interface==8.7",
    "paramiko==4.0.0",
    "bcrypt==5.0.0",
    "cryptography==50.0.2",
    "PyNaCl==1.6.2",
    "cffi==2.1.1",
    "pycparser==3.12",
    "invoke==3.0.3",
    "pydantic==2.14.3",
    "pydantic_core==2.50.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typeguard==4.6.0",
    "types-paramiko==4.0.0.20260518",
    "typing_extensions==4.16.0",
    "gguf==0.19.0",
]


def log(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    shown = cmd if isinstance(cmd, str) else " ".join(cmd)
    log(f"$ {shown}")
    res = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shown} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


# --- prepare (build machine) ---------------------------------------------------------------


def prepare(args: argparse.Namespace) -> None:
    from rigkit.sandbox.offline import make_llama_mirror

    dest = Path(args.dest)
    (dest / "whl").mkdir(parents=True, exist_ok=True)
    mirror = Path(args.mirror)
    if not (mirror / "HEAD").exists():
        make_llama_mirror(mirror, [SDIST], cache=Path(args.sdists))
    bundle = dest / f"llama.cpp-{REF}.bundle"
    sh(["git", "bundle", "create", str(bundle.resolve()), REF], cwd=mirror)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (5, 17, 24, 26, 27, 28, 31, 34)]
    platforms += ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    sh(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(dest / "whl"),
            *WHEELS,
        ]
    )
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    log(f"{dest}: {size / 2**20:.1f} MiB (bundle {bundle.stat().st_size / 2**20:.1f} MiB)")


# --- run (GPU box) -------------------------------------------------------------------------


class Results:
    def __init__(self, work: Path):
        self.path = work / "results.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def __getitem__(self, key):
        return self.data[key]

    def __contains__(self, key):
        return key in self.data

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        (self.path.parent / "results.md").write_text(markdown(self.data))


def machine() -> dict:
    def out(cmd: str) -> str:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip()

    q = out(
        "nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm,"
        "clocks.max.mem --format=csv,noheader"
    )
    return {
        "gpu": q,
        "cpu_cores": os.cpu_count(),
        "kernel": out("uname -r"),
        "cpu": out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "nvcc": out("nvcc --version | tail -2 | head -1"),
        "cmake": out("cmake --version | head -1"),
        "gcc": out("c++ --version | head -1"),
        "git": out("git --version"),
        "ccache": out("command -v ccache || echo none"),
        "python": sys.version.split()[0],
        "nvcc_path": out("command -v nvcc || echo none"),
        "cublas": out("ls /usr/local/cuda/lib64/libcublas.so* 2>&1 | head -3"),
    }


def measure_bandwidth() -> dict:
    """Device-to-device copy of 4 GiB (bytes read + written), the practical HBM ceiling."""
    try:
        import torch
    except ImportError:
        return {}
    n = 4 * 2**30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    a.random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    bw = 2 * n / times[len(times) // 2]
    del a, b
    torch.cuda.empty_cache()
    return {"d2d_copy_bytes_per_s": bw, "name": torch.cuda.get_device_name()}


def pyinfra_deploy(work: Path, bundle: Path, fa: bool, activate: bool, model: str, root: str) -> dict:
    """``pyinfra @local`` with rigkit's ops; returns the build's build.json and wall time."""
    env = dict(
        os.environ,
        RIGKIT_GPU_BUNDLE=str(bundle),
        RIGKIT_GPU_FA_ALL_QUANTS="1" if fa else "0",
        RIGKIT_GPU_ACTIVATE="1" if activate else "0",
        RIGKIT_GPU_MODEL=model,
        RIGKIT_GPU_ROOT=root,
        RIGKIT_GPU_REF=REF,
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Both builds compile everything: no ccache hits from the first build in the second.
    env.setdefault("CCACHE_DISABLE", "1")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from pyinfra_cli.main import main; sys.argv[0] = 'pyinfra'; main()",
        "-y",
        "benchmarks/gpu/inventory.py",
        "benchmarks/gpu/deploy.py",
    ]
    log(f"pyinfra @local deploy, FA_ALL_QUANTS {'on' if fa else 'off'}")
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    (work / f"pyinfra-fa{int(fa)}.log").write_text(res.stdout + res.stderr)
    print(res.stdout[-4000:] + res.stderr[-4000:], flush=True)
    builds = sorted(Path(root, "builds").glob("b*/build.json"))
    for failed in Path(root, "builds").glob(".*.failed.log"):
        print(f"--- {failed} (tail) ---\n" + "\n".join(failed.read_text().splitlines()[-60:]), flush=True)
    if res.returncode != 0:
        raise RuntimeError(f"pyinfra deploy (FA_ALL_QUANTS {fa}) exited {res.returncode}")
    for path in builds:
        info = json.loads(path.read_text())
        if ("-DGGML_CUDA_FA_QUANTS=all" in info["flags"] or "-DGGML_CUDA_FA_ALL_QUANTS=ON" in info["flags"]) == fa:
            info["dir"] = str(path.parent)
            info["pyinfra_wall_seconds"] = round(wall, 1)
            return info
    raise RuntimeError(f"no build.json with FA_ALL_QUANTS {fa} under {root}/builds")


def cuobjdump(binary: Path) -> dict:
    res = sh(["cuobjdump", "--list-elf", str(binary)], check=False)
    ptx = sh(["cuobjdump", "--list-ptx", str(binary)], check=False)
    elfs = [line.split()[-1] for line in res.stdout.splitlines() if line.startswith("ELF file")]
    archs = sorted({e.rsplit(".", 2)[-2] for e in elfs if ".sm_" in e})
    return {
        "binary": str(binary),
        "elf_count": len(elfs),
        "archs": archs,
        "ptx_count": sum(1 for line in ptx.stdout.splitlines() if line.startswith("PTX file")),
        "first": elfs[:3],
        "size_mb": round(binary.stat().st_size / 1e6, 1),
        "stderr": res.stderr.strip()[:500],
    }


# --- model ---------------------------------------------------------------------------------


def make_models(repo_git: Path, out_dir: Path, shape: dict, pool_elems: int = 1 << 24, stem: str = "rand-3b") -> dict:
    """A random-weight llama GGUF in F16 and Q8_0 with the same weights (the Q8_0 file is the
    F16 file quantized). The weights tile one random pool (speed does not depend on values;
    this keeps generation to seconds); tokenizer and chat template from the llama.cpp tree."""
    import gguf
    import numpy as np

    from rigkit.sandbox.offline import LlamaShape, MirrorRef, llama_gguf_writer, llama_tensor_shapes

    out_dir.mkdir(parents=True, exist_ok=True)
    src = MirrorRef(repo_git, REF) if (repo_git / "HEAD").exists() else repo_git
    dims = LlamaShape(
        layers=shape["layers"],
        hidden=shape["hidden"],
        heads=shape["heads"],
        kv_heads=shape["kv_heads"],
        ffn=shape["ffn"],
        ctx=shape["ctx"],
        rope_freq_base=500000.0,
        rms_eps=1e-5,
    )

    rng = np.random.default_rng(20261123)
    pool = (rng.standard_normal(pool_elems, dtype=np.float32) * 0.02).astype(np.float16)
    qpool = gguf.quants.quantize(pool.astype(np.float32).reshape(-1, 32), gguf.GGMLQuantizationType.Q8_0).reshape(
        -1, 34
    )
    pool2, qpool2 = np.concatenate([pool, pool]), np.concatenate([qpool, qpool])

    def data(index: int, rows: int, cols: int, q8: bool):
        n = rows * cols
        off = (index * 7919 * 32) % pool_elems  # a different phase of the pool per tensor
        if q8:
            blocks = np.resize(qpool2[off // 32 : off // 32 + pool_elems // 32], (n // 32, 34))
            return blocks.reshape(rows, cols // 32 * 34)
        return np.resize(pool2[off : off + pool_elems], n).reshape(rows, cols)

    models = {}
    for ftype, q8 in (("F16", False), ("Q8_0", True)):
        path = out_dir / f"{stem}-{ftype}.gguf"
        started = time.monotonic()
        writer, n_vocab = llama_gguf_writer(
            src, path, f"{stem}-{ftype}", dims, gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.MOSTLY_F16
        )
        shapes = llama_tensor_shapes(dims, n_vocab, tied_output=False)
        read_per_token = 0
        for name, shp in shapes:
            if len(shp) == 1:
                writer.add_tensor_info(name, shp, np.dtype(np.float32), shp[0] * 4)
                nbytes = shp[0] * 4
            elif q8:
                nbytes = shp[0] * shp[1] // 32 * 34
                writer.add_tensor_info(
                    name,
                    (shp[0], shp[1] // 32 * 34),
                    np.dtype(np.uint8),
                    nbytes,
                    raw_dtype=gguf.GGMLQuantizationType.Q8_0,
                )
            else:
                nbytes = shp[0] * shp[1] * 2
                writer.add_tensor_info(name, shp, np.dtype(np.float16), nbytes)
            if name != "token_embd.weight":  # the input embedding is a row gather, not a read
                read_per_token += nbytes
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, (_name, shp) in enumerate(shapes):
            if len(shp) == 1:
                writer.write_tensor_data(np.ones(shp, dtype=np.float32))
            else:
                writer.write_tensor_data(data(index, shp[0], shp[1], q8))
        writer.close()
        params = sum(int(np.prod(s)) for _, s in shapes)
        models[ftype] = {
            "path": str(path),
            "file_bytes": path.stat().st_size,
            "params": params,
            "weight_bytes_read_per_token": read_per_token,
            "seconds": round(time.monotonic() - started, 1),
        }
        log(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {models[ftype]['seconds']}s")
    models["shape"] = dict(shape, vocab=n_vocab, head_dim=dims.head_dim)
    return models


def kv_bytes_per_token_read(shape: dict, depth: float, kv_type: str) -> float:
    """Bytes of K and V cache one decoded token reads at a context of ``depth`` tokens."""
    per_elem = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}[kv_type]
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * depth * per_elem


# --- measurements --------------------------------------------------------------------------


def llama_bench(bench: Path, models: dict, work: Path, reps: int) -> list[dict]:
    rows = []
    for label, fa, ctk, ctv in KV_CONFIGS:
        cmd = [
            str(bench),
            "-m",
            f"{models['F16']['path']},{models['Q8_0']['path']}",
            "-ngl",
            "99",
            "-fa",
            fa,
            "-ctk",
            ctk,
            "-ctv",
            ctv,
            "-p",
            "512",
            "-n",
            "128",
            "-d",
            DEPTHS,
            "-r",
            str(reps),
            "-o",
            "json",
        ]
        started = time.monotonic()
        res = sh(cmd, check=False, timeout=900)
        (work / f"llama-bench-{ctk}-fa{fa}.json").write_text(res.stdout)
        (work / f"llama-bench-{ctk}-fa{fa}.err").write_text(res.stderr)
        if res.returncode != 0:
            log(f"llama-bench {label} exited {res.returncode}: {res.stderr[-2000:]}")
            continue
        for r in json.loads(res.stdout):
            ftype = "Q8_0" if "Q8_0" in r["model_filename"] else "F16"
            rows.append(
                {
                    "config": label,
                    "model": ftype,
                    "type_k": r["type_k"],
                    "type_v": r["type_v"],
                    "flash_attn": r["flash_attn"],
                    "n_prompt": r["n_prompt"],
                    "n_gen": r["n_gen"],
                    "n_depth": r["n_depth"],
                    "avg_ts": r["avg_ts"],
                    "stddev_ts": r["stddev_ts"],
                }
            )
        log(f"llama-bench {label}: {time.monotonic() - started:.0f}s")
    return rows


def serve(service, binary: str, work: Path) -> dict:
    """Start llama-server with rigkit's argv for the service; /completion timings."""
    from rigkit.render.llama_server import command_line

    argv = command_line(service, binary)
    log("llama-server: " + " ".join(argv))
    logf = open(work / "llama-server.log", "w")  # noqa: SIM115 - the server writes it until stopped
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=False)
    base = f"http://127.0.0.1:{service.port}"
    result: dict = {"argv": argv}
    try:
        started = time.monotonic()
        while time.monotonic() - started < 180:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("llama-server /health did not turn 200 in 180 s")
        result["load_seconds"] = round(time.monotonic() - started, 1)
        words = [
            "rigkit",
            "builds",
            "llama.cpp",
            "for",
            "the",
            "GPU",
            "it",
            "finds",
            "and",
            "serves",
            "the",
            "model",
            "with",
            "the",
            "flags",
            "pinned",
            "in",
            "its",
            "host",
            "data",
            "while",
            "the",
            "cache",
            "stays",
            "quantized",
        ]
        runs = []
        for i, n_words in enumerate((200, 1500, 1500)):
            prompt = f"Run {i}: " + " ".join(words[(j * 7 + i) % len(words)] for j in range(n_words))
            body = json.dumps(
                {"prompt": prompt, "n_predict": 256, "ignore_eos": True, "temperature": 0, "cache_prompt": False}
            ).encode()
            req = urllib.request.Request(f"{base}/completion", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as resp:
                timings = json.loads(resp.read())["timings"]
            runs.append(timings)
            log(f"/completion {i}: {json.dumps(timings)}")
        result["timings"] = runs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
    return result


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "pid").write_text(str(os.getpid()))
    (work / "done").unlink(missing_ok=True)
    res = Results(work)
    try:
        _run(args, work, res)
        res.set("status", "done")
    except Exception as exc:  # keep what was measured; say what broke
        import traceback

        traceback.print_exc()
        res.set("status", f"failed: {exc}")
    finally:
        (work / "done").write_text(res.data.get("status", "?"))


def _run(args: argparse.Namespace, work: Path, res: Results) -> None:
    from inventory import rig_data

    from rigkit.hostdata import parse_rig

    root = args.root
    # The bundle is the git URL of both builds: keep it where later steps still find it.
    bundle = work / Path(args.bundle).name
    if not bundle.exists():
        shutil.copy(args.bundle, bundle)
    models_dir = work / "models"
    model_q8 = str(models_dir / "rand-3b-Q8_0.gguf")
    if "machine" not in res:
        res.set("machine", machine())
        log(json.dumps(res["machine"], indent=1))
    if "bandwidth" not in res:
        res.set("bandwidth", measure_bandwidth())
        log(f"bandwidth: {res['bandwidth']}")

    steps = [s for s in args.steps.split(",") if s]
    if "build-on" in steps and "build_fa_on" not in res:
        res.set("build_fa_on", pyinfra_deploy(work, bundle, True, True, model_q8, root))
    bin_dir = Path(root, "current", "bin")
    if "cuobjdump" in steps and "cuobjdump" not in res:
        res.set("cuobjdump", [cuobjdump(bin_dir / "llama-server"), cuobjdump(bin_dir / "llama-bench")])
    if "model" in steps and "models" not in res:
        res.set("models", make_models(Path(root, "repo.git"), models_dir, {**SHAPE, **json.loads(args.shape)}))
    if "bench" in steps and "llama_bench" not in res:
        res.set("llama_bench", llama_bench(bin_dir / "llama-bench", res["models"], work, args.reps))
    if "serve" in steps and "server" not in res:
        rig = parse_rig("@local", rig_data(str(bundle), True, model_q8, REF, root))
        res.set("server", serve(rig.services[0], str(bin_dir / "llama-server"), work))
    if "build-off" in steps and "build_fa_off" not in res:
        res.set("build_fa_off", pyinfra_deploy(work, bundle, False, False, model_q8, root))
    print(markdown(res.data), flush=True)


# --- report --------------------------------------------------------------------------------


def markdown(d: dict) -> str:
    out = []
    m = d.get("machine", {})
    if m:
        out += [
            "## Machine",
            "",
            f"- GPU: {m.get('gpu')}",
            f"- CPU: {m.get('cpu_cores')} cores "
            f"({m.get('cpu', '').strip()}), {m.get('mem_gib')} GiB, kernel {m.get('kernel')}",
            f"- {m.get('nvcc')}; {m.get('cmake')}; {m.get('gcc')}; ccache: {m.get('ccache')}",
            "",
        ]
    bw = d.get("bandwidth", {}).get("d2d_copy_bytes_per_s")
    nominal = next((v for k, v in NOMINAL_BW.items() if k in m.get("gpu", "")), None)
    if "build_fa_on" in d or "build_fa_off" in d:
        out += [
            f"## Build (rigkit `llama_cpp.build` via `pyinfra @local`, {m.get('cpu_cores')} jobs, no ccache)",
            "",
            "| FA_ALL_QUANTS | build key | flags | build_seconds | pyinfra wall s |",
            "|---|---|---|---|---|",
        ]
        for key, label in (("build_fa_on", "on"), ("build_fa_off", "off")):
            b = d.get(key)
            if b:
                flags = " ".join(f for f in b["flags"] if "CUDA" in f)
                out.append(
                    f"| {label} | {Path(b['dir']).name} | `{flags}` | {b['build_seconds']} | "
                    f"{b['pyinfra_wall_seconds']} |"
                )
        out.append("")
    for c in d.get("cuobjdump", []):
        out.append(
            f"- `cuobjdump --list-elf {Path(c['binary']).name}`: {c['elf_count']} ELF images, "
            f"architectures {', '.join(c['archs']) or 'NONE'}; {c['ptx_count']} PTX; "
            f"{c['size_mb']} MB"
        )
    if d.get("cuobjdump"):
        out.append("")
    models = d.get("models")
    if models:
        s = models["shape"]
        out += [
            "## Model",
            "",
            f"Random-weight llama: hidden {s['hidden']}, {s['layers']} layers, "
            f"{s['heads']}/{s['kv_heads']} heads (dim {s['head_dim']}), FFN {s['ffn']}, vocab {s['vocab']}, "
            f"{models['F16']['params'] / 1e9:.2f} B parameters.",
            "",
            "| type | file GB | weights read per token GB |",
            "|---|---|---|",
        ]
        for t in ("F16", "Q8_0"):
            out.append(
                f"| {t} | {models[t]['file_bytes'] / 1e9:.2f} | {models[t]['weight_bytes_read_per_token'] / 1e9:.2f} |"
            )
        out.append("")
    rows = d.get("llama_bench")
    if rows and models:
        ceil = [("measured copy", bw)] if bw else []
        if nominal:
            ceil.append(("nominal", nominal))
        out += [
            "## llama-bench (pp512 / tg128, -ngl 99, -r reps)",
            "",
            "Roofline for decode = bandwidth / (weights read per token + K/V cache read at the "
            "mean depth of the 128 generated tokens). "
            + "; ".join(f"{n} bandwidth {v / 1e12:.2f} TB/s" for n, v in ceil),
            "",
            "| model | KV / FA | depth | pp512 t/s | tg128 t/s | tg roofline t/s | tg / roofline |",
            "|---|---|---|---|---|---|---|",
        ]
        by = {}
        for r in rows:
            by.setdefault((r["model"], r["config"], r["n_depth"]), {})["pp" if r["n_prompt"] else "tg"] = r
        order = [c[0] for c in KV_CONFIGS]
        for (model, config, depth), v in sorted(by.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]), kv[0][2])):
            pp, tg = v.get("pp"), v.get("tg")
            roof, frac = "", ""
            if tg and ceil:
                kv = tg["type_k"] if tg["type_k"] == tg["type_v"] else "f16"
                per_tok = models[model]["weight_bytes_read_per_token"] + kv_bytes_per_token_read(
                    models["shape"], depth + 64, kv
                )
                r = ceil[0][1] / per_tok
                roof, frac = f"{r:.0f}", f"{tg['avg_ts'] / r:.0%}"
            out.append(
                f"| {model} | {config} | {depth} | {pp['avg_ts']:.0f} ± {pp['stddev_ts']:.0f} |"
                if pp
                else f"| {model} | {config} | {depth} | |"
            )
            out[-1] += f" {tg['avg_ts']:.1f} ± {tg['stddev_ts']:.1f} | {roof} | {frac} |" if tg else " | | |"
        out.append("")
    srv = d.get("server")
    if srv:
        out += [
            "## llama-server (rigkit's argv for the service)",
            "",
            "`" + " ".join(srv["argv"]) + "`",
            "",
            f"Loaded in {srv.get('load_seconds')} s.",
            "",
            "| request | prompt tokens | prefill t/s | generated | decode t/s |",
            "|---|---|---|---|---|",
        ]
        for i, t in enumerate(srv.get("timings", [])):
            out.append(
                f"| {i} | {t['prompt_n']} | {t['prompt_per_second']:.0f} | {t['predicted_n']} | "
                f"{t['predicted_per_second']:.1f} |"
            )
        out.append("")
    if d.get("status"):
        out.append(f"Status: {d['status']}")
    return "\n".join(out) + "\n"


def tail_until_done(logfile: Path, done_marker: Path, limit: float) -> bool:
    """Print ``logfile`` as it grows until ``done_marker`` exists (True) or ``limit`` seconds
    pass (False)."""
    started, pos = time.monotonic(), 0
    while True:
        if logfile.exists():
            with open(logfile) as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                print(chunk, end="", flush=True)
        if done_marker.exists():
            return True
        if time.monotonic() - started > limit:
            return False
        time.sleep(3)


def follow(args: argparse.Namespace) -> None:
    """Stream a detached run's log until it is done or --limit seconds pass; copy results."""
    work, out = Path(args.work), Path(args.out)
    done = tail_until_done(work / "run.log", work / "done", args.limit)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "run.log", "llama-server.log", "pyinfra-fa1.log", "pyinfra-fa0.log"):
        if (work / name).exists():
            shutil.copy(work / name, out / name)
    if (work / "results.json").exists():
        print(markdown(json.loads((work / "results.json").read_text())), flush=True)
    print("DONE" if done else f"STILL RUNNING after {args.limit}s", flush=True)


def report(args: argparse.Namespace) -> None:
    print(markdown(json.loads(Path(args.results).read_text())), end="")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare", help="bundle + wheels for a GPU box without network")
    s.add_argument("--dest", default=str(REPO / ".carry"))
    s.add_argument("--mirror", default="/var/cache/rigkit/mirrors/llama.cpp-b11312.git")
    s.add_argument("--sdists", default="/var/cache/rigkit/sdists")
    s = sub.add_parser("run", help="build, check, generate, measure (on the GPU box)")
    s.add_argument("--work", default="/root/gpubench")
    s.add_argument("--bundle", default=str(REPO / ".carry" / f"llama.cpp-{REF}.bundle"))
    s.add_argument("--root", default=ROOT)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--steps", default="build-on,cuobjdump,model,bench,serve,build-off")
    s.add_argument("--shape", default="{}", help='JSON overrides of the model shape, e.g. {"layers": 2}')
    s = sub.add_parser("follow", help="stream a detached run's log, then copy its results")
    s.add_argument("--work", default="/root/gpubench")
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=float, default=540)
    s = sub.add_parser("report", help="markdown tables of a results.json")
    s.add_argument("results")
    args = p.parse_args()
    {"prepare": prepare, "run": run, "follow": follow, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
