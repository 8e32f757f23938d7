#!/usr/bin/env python3
"""
Prepare, on the build machine, everything the H200 runs need (benchmarks/vllm-h200/README.md):

    prepare.py site      vLLM 0.20.2 and the dependencies the GPU machine's image lacks,
                         installed with ``pip --target`` for Python 3.12 / manylinux, trimmed,
                         packed (tar.xz) and split into .carry/site1 .. siteN (<= 58 MB each,
                         git-ignored; each travels with one ``run`` call through ``carry``)
    prepare.py ckpt      rigkit's derived-checkpoint code (branch ckpt, its committed
                         rigkit/checkpoints) into .carry/ckpt/rigkit_checkpoints
    prepare.py models    the tokenizer (if missing), the INT4 and FP8 checkpoints and the hybrid
                         built from them, under --models; their sha256 into digests.json, which
                         the GPU run compares with what it generates there from the same code
    prepare.py runs      runs.json: each served run's argv, from rigkit.render.vllm.serve_args
                         for seed 003's service (inventories/spark.py), with every change made
                         for the H200 listed
    prepare.py stage     what travels, into the session checkout's ignored /work/main/.carry/h200/
                         (the device tool sends that checkout, not this worktree): wt/ (this
                         worktree's files, .carry/ckpt included) and site1 .. siteN
    prepare.py all

Run with rigkit's venv (/work/main/.venv/bin/python); ``site`` needs uv (pip install uv) and
reaches PyPI; ``models`` needs numpy (and ``tokenizers`` to train the tokenizer once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CARRY = HERE / ".carry"
VLLM_VERSION = "0.20.2"
WHEEL = Path(f"/var/cache/rigkit/wheels/vllm-{VLLM_VERSION}-cp38-abi3-manylinux_2_35_x86_64.whl")
# vLLM 0.20.2 was published on 2026-05-08: its dependencies as they stood then.
EXCLUDE_NEWER = "2026-05-09"
# Not travelling: in the GPU image already (torch 2.11.0+cu130, triton 3.6.0), or GPU
# libraries vLLM only imports for other kernels (flashinfer: the attention backend is replaced).
NOT_CARRIED = re.compile(
    r"^(torch|torchaudio|torchvision|flashinfer.*|apache-tvm-ffi|tilelang|nvidia-cudnn-frontend|"
    r"fastsafetensors|nvidia-cutlass-dsl|quack-kernels)\b"
)
# xgrammar 0.2 pulls apache-tvm-ffi; 0.1.33 is what ran vLLM 0.20.0 there (shared notes).
CONSTRAINTS = ["xgrammar==0.1.33"]
# Removed from the installed tree: FlashAttention 2 (FA3 serves sm_90), xgrammar's static library.
TRIM = ["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", "xgrammar/lib/libxgrammar.a"]
PART = 58 * 1000 * 1000
PLATFORMS = [
    "manylinux_2_35_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
    "any",
]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
TARGET += ["--abi", "cp312", "--abi", "abi3", "--abi", "none"] + [x for p in PLATFORMS for x in ("--platform", p)]


def image_packages() -> set[str]:
    """The GPU image's Python packages, as the device tool's KINDS.md lists them."""
    text = Path("/work/.library/device/KINDS.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("nvidia-h200, nvidia-h200-x2"))
    return {norm(n) for n in line.split("Packages:")[1].strip().rstrip(".").split(", ")}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sh(*cmd: str, **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def requirements() -> list[str]:
    import zipfile

    with zipfile.ZipFile(WHEEL) as z:
        meta = z.read(f"vllm-{VLLM_VERSION}.dist-info/METADATA").decode()
    reqs = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    return [r for r in reqs if not NOT_CARRIED.match(r)]


def cmd_site(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "reqs.in").write_text("\n".join(requirements()) + "\n")
    (work / "constraints.txt").write_text("\n".join(CONSTRAINTS) + "\n")
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    sh(uv, "pip", "compile", str(work / "reqs.in"), "-c", str(work / "constraints.txt"), "--python-version", "3.12",
       "--python-platform", "x86_64-manylinux_2_28", "--exclude-newer", EXCLUDE_NEWER, "--no-header",
       "--no-annotate", "-o", str(work / "reqs.txt"))  # fmt: skip
    have = image_packages()
    pins = [x.strip() for x in (work / "reqs.txt").read_text().splitlines() if x.strip() and not x.startswith("#")]
    carried = [p for p in pins if norm(re.split(r"[=\[]", p)[0]) not in have]
    (work / "carried.txt").write_text("\n".join(carried) + "\n")
    dl = work / "wheels"
    shutil.rmtree(dl, ignore_errors=True)
    sh(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        *TARGET,
        "-d",
        str(dl),
        "-r",
        str(work / "carried.txt"),
    )
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site), *TARGET,
       str(WHEEL), *sorted(str(p) for p in dl.glob("*.whl")))  # fmt: skip
    for rel in TRIM:
        (site / rel).unlink()
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: vLLM runs as python3 -m
    tarball = work / "site.tar.xz"
    sh("bash", "-c", f"tar -C {site} -cf - . | xz -6 -T2 > {tarball}")
    data = tarball.read_bytes()
    for old in CARRY.glob("site*"):
        shutil.rmtree(old)
    parts = []
    for i in range(0, len(data), PART):
        d = CARRY / f"site{len(parts) + 1}"
        d.mkdir(parents=True)
        chunk = data[i : i + PART]
        (d / f"site.tar.xz.{len(parts) + 1:02d}").write_bytes(chunk)
        parts.append({"dir": d.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {
        "vllm": VLLM_VERSION,
        "wheel": WHEEL.name,
        "exclude_newer": EXCLUDE_NEWER,
        "carried": [WHEEL.name, *sorted(p.name for p in dl.glob("*.whl"))],
        "trimmed": TRIM,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "parts": parts,
    }
    (HERE / "site-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"site: {len(data) / 1e6:.1f} MB in {len(parts)} parts, {len(manifest['carried'])} wheels")


def ckpt_commit() -> str:
    return subprocess.run(
        ["git", "-C", "/work/wt-ckpt", "rev-parse", "ckpt"], check=True, capture_output=True, text=True
    ).stdout.strip()


def cmd_ckpt() -> None:
    commit = ckpt_commit()
    dest = CARRY / "ckpt"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", "/work/wt-ckpt", "archive", commit, "rigkit/checkpoints"], check=True, capture_output=True
    ).stdout
    tar = dest / "ckpt.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
    (dest / "rigkit" / "checkpoints").rename(dest / "rigkit_checkpoints")
    (dest / "rigkit").rmdir()
    (dest / "COMMIT").write_text(commit + "\n")
    print(f"ckpt: rigkit/checkpoints of ckpt {commit[:12]} in {dest}")


def cmd_models(models: Path) -> None:
    sys.path.insert(0, str(HERE))
    import models as gen

    tok = HERE / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        sh(sys.executable, str(HERE / "make_tokenizer.py"), str(tok))
    print(json.dumps(gen.write_all(models, tok)))
    sh(sys.executable, str(HERE / "build_hybrid.py"), "--ckpt-code", str(CARRY / "ckpt"), "--int4",
       str(models / "int4"), "--fp8", str(models / "fp8"), "--out", str(models / "hybrid"))  # fmt: skip
    digests = {name: gen.digest(models / name) for name in ("int4", "fp8", "hybrid")}
    digests["ckpt_commit"] = (CARRY / "ckpt" / "COMMIT").read_text().strip()
    (HERE / "digests.json").write_text(json.dumps(digests, indent=2) + "\n")
    for name in ("int4", "fp8", "hybrid"):
        size = sum(p.stat().st_size for p in (models / name).iterdir() if p.is_file())
        print(f"{name}: {size / 1e6:.1f} MB")


# --------------------------------------------------------------------------------------
# The served runs: rigkit's argv for seed 003's service, adapted to the H200
# --------------------------------------------------------------------------------------

MODELS_ON_GPU = "/tmp/rk/models"
GPU_MEMORY = "0.30"
ATTENTION = "FLASH_ATTN"


def seed_service():
    from rigkit.hostdata import parse_rig

    name, data = runpy.run_path(str(REPO / "inventories/spark.py"))["spark"][0]
    rig = parse_rig(name, {k: data[k] for k in ("gpus", "services", "models")})
    return data, rig.services[0]


def adapt(argv: list[str], model: str, mtp: bool) -> tuple[list[str], list[str]]:
    """(argv, changes): seed 003's serve argv with what the H200 machine needs changed."""
    out = list(argv)
    changes = []
    changes.append(f"model {out[0]} -> {model} (a tiny random-weight checkpoint of the same layout)")
    out[0] = model

    def set_flag(flag: str, value: str, why: str) -> None:
        i = out.index(flag)
        changes.append(f"{flag} {out[i + 1]} -> {value} ({why})")
        out[i + 1] = value

    set_flag(
        "--gpu-memory-utilization",
        GPU_MEMORY,
        "an H200 of 141 GB for a model of a few MB; 0.90 is the Spark's share of 128 GB unified memory",
    )
    set_flag(
        "--attention-backend",
        ATTENTION,
        "FlashInfer is not in the travelling set (flashinfer-python/-cubin are not carried); vLLM's FlashAttention 3 backend serves sm_90",
    )
    if not mtp:
        i = out.index("--speculative-config")
        changes.append(f"--speculative-config {out[i + 1]} dropped (the run without MTP)")
        del out[i : i + 2]
    out += ["--gdn-prefill-backend", "triton"]
    changes.append(
        "--gdn-prefill-backend triton added (vLLM 0.20.2 picks FlashInfer's GDN prefill kernel for the "
        'linear-attention layers on sm_90 and failed without flashinfer: "ModuleNotFoundError: No module '
        'named \'flashinfer\'" from "from flashinfer.gdn_prefill import" while profiling CUDA graph memory)'
    )
    out.append("--enforce-eager")
    changes.append(
        "--enforce-eager added (device time: torch.compile took 34 s + 19 s for the MTP head and the "
        "profiling run 72 s on the first start; eager decode on a model this small is bound by kernel launches)"
    )
    out.append("--language-model-only")
    changes.append("--language-model-only added (the tiny checkpoint has no vision tower; Qwen3.5's is skipped)")
    return out, changes


RUNS = [
    # name, model dir, site ("rigkit": apply.py --patches inc-hybrid-fp8; "plain": --patches ""), MTP
    ("int4", "int4", "rigkit", True),
    ("int4-nomtp", "int4", "rigkit", False),
    ("hybrid-patched", "hybrid", "rigkit", True),
    ("hybrid-patched-nomtp", "hybrid", "rigkit", False),
    ("hybrid-unpatched", "hybrid", "plain", True),
    ("fp8", "fp8", "rigkit", True),
]


def cmd_runs() -> None:
    from rigkit.render.vllm import serve_args

    data, service = seed_service()
    argv = serve_args(service)
    svc = data["services"][0]
    runs = {}
    for name, model, site, mtp in RUNS:
        a, changes = adapt(argv, f"{MODELS_ON_GPU}/{model}", mtp)
        runs[name] = {
            "model": model,
            "site": site,
            "patches": "inc-hybrid-fp8" if site == "rigkit" else "",
            "mtp": mtp,
            "argv": a,
            "changes": changes,
        }
    out = {
        "source": "rigkit.render.vllm.serve_args(parse_rig(inventories/spark.py)['qwen122b'])",
        "seed_argv": argv,
        "base_image": svc["base_image"],
        "patches": svc["patches"],
        "served_model_name": service.model_id,
        "port": service.port,
        "runs": runs,
    }
    (HERE / "runs.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["seed_argv"]))
    for name, r in runs.items():
        print(name, " ".join(r["argv"]))


STAGE = Path("/work/main/.carry/h200")


def cmd_stage() -> None:
    """Copy this worktree (tracked and untracked files, the ckpt code) and the site parts to
    STAGE: carry ``.carry/h200/wt`` and one ``.carry/h200/siteN`` per call."""
    wt = STAGE / "wt"
    shutil.rmtree(wt, ignore_errors=True)
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (wt / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, wt / rel)
    shutil.copytree(CARRY / "ckpt", wt / "benchmarks/vllm-h200/.carry/ckpt")
    for d in sorted(CARRY.glob("site*")):
        shutil.rmtree(STAGE / d.name, ignore_errors=True)
        shutil.copytree(d, STAGE / d.name)
    size = sum(p.stat().st_size for p in wt.rglob("*") if p.is_file())
    print(f"stage: {len(files)} files ({size / 1e6:.1f} MB) in {wt}; parts {[d.name for d in CARRY.glob('site*')]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["site", "ckpt", "models", "runs", "stage", "all"])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("RIGKIT_H200_WORK", "/tmp/h200/prepare")))
    ap.add_argument("--models", type=Path, default=Path("/tmp/h200/models"))
    args = ap.parse_args(argv)
    if args.step in ("ckpt", "all"):
        cmd_ckpt()
    if args.step in ("models", "all"):
        cmd_models(args.models)
    if args.step in ("runs", "all"):
        cmd_runs()
    if args.step in ("site", "all"):
        cmd_site(args.work)
    if args.step in ("stage", "all"):
        cmd_stage()
    return 0


if __name__ == "__main__":
    sys.exit(main())
