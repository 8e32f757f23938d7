#!/usr/bin/env python3
"""
Here (rigkit's venv): the llama-server runs of the memory-plan measurement (issue 25), each
argv exactly as ``rigkit.render.llama_server.command_line`` renders it for a service of the
host data below, and the llama.cpp source that travels to the H200::

    .venv/bin/python benchmarks/fit-h200/prepare.py      # runs.json; .carry/fit/*.tar.xz

Then on the H200 (carry ``.carry/fit``): ``python3 benchmarks/fit-h200/on_gpu.py build`` (in
the background), later ``... measure`` and ``... pack`` (on_gpu.py's docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

SDIST = Path("/var/cache/rigkit/llama_cpp_python-0.3.36.tar.gz")  # vendors llama.cpp b11312
CARRY = REPO / ".carry" / "fit"
MODELS = "/srv/models/fit"
BINARY = "/tmp/fit/build/bin/llama-server"
# Llama-3.1-8B's shapes (GQA 32/8, head dim 128, FFN 14336), Qwen2's 151936-token vocabulary.
SHAPE = {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "ffn": 14336, "ctx": 131072}
# (run, model type, context, K type, V type, parallel, -ngl): rigkit's default service first.
RUNS = [
    ("q8-32k-q8kv", "Q8_0", 32768, "q8_0", "q8_0", 1, 999),
    ("q8-128k-f16kv", "Q8_0", 131072, "f16", "f16", 1, 999),
    ("f16-64k-q8kv-np4", "F16", 65536, "q8_0", "q8_0", 4, 999),
    ("q8-16k-f16kv", "Q8_0", 16384, "f16", "f16", 1, 999),
    ("q8-32k-q8kv-ngl20", "Q8_0", 32768, "q8_0", "q8_0", 1, 20),
]


def runs() -> dict:
    from rigkit.hostdata import parse_rig
    from rigkit.render.llama_server import command_line

    out = {}
    for name, ftype, ctx, ctk, ctv, parallel, ngl in RUNS:
        model = f"{MODELS}/rand-8b-{ftype}.gguf"
        data = {
            "gpus": {"count": 1},
            "llama_cpp": {"ref": "b11312", "cuda": True, "cuda_arch": ["90"]},
            "services": [
                {
                    "name": "fit",
                    "model": model,
                    "host": "127.0.0.1",
                    "port": 8080,
                    "ctx": ctx,
                    "cache_type_k": ctk,
                    "cache_type_v": ctv,
                    "flash_attn": "on",
                    "n_gpu_layers": ngl,
                    "parallel": parallel,
                }
            ],
        }
        service = parse_rig("@local", data).services[0]
        out[name] = {
            "model": model,
            "ftype": ftype,
            "ctx": ctx,
            "cache_type_k": ctk,
            "cache_type_v": ctv,
            "parallel": parallel,
            "n_gpu_layers": ngl,
            "argv": command_line(service, BINARY),
        }
    return out


def source() -> None:
    """llama.cpp b11312 from the sdist, less what a CUDA llama-server build never reads (docs,
    tests, other backends); the vocabulary and template the generated model borrows apart."""
    CARRY.mkdir(parents=True, exist_ok=True)
    top = "llama_cpp_python-0.3.36/vendor/llama.cpp"
    skip = {"docs", "models", "benches", "tests", "examples"}
    skip |= {f"ggml/src/ggml-{b}" for b in ("vulkan", "sycl", "metal", "cann", "opencl", "musa", "hip")}
    keep_models = ["models/ggml-vocab-qwen2.gguf", "models/templates/Qwen-Qwen3-0.6B.jinja"]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(SDIST) as sdist:
            sdist.extractall(tmp, members=[m for m in sdist if m.name.startswith(top + "/")], filter="data")
        tree = Path(tmp, top)
        with tarfile.open(CARRY / "llama-src.tar.xz", "w:xz") as src:
            src.add(tree, arcname=".", filter=lambda t: None if t.name.removeprefix("./") in skip else t)
        with tarfile.open(CARRY / "llama-models.tar.xz", "w:xz") as models:
            for rel in keep_models:
                models.add(tree / rel, arcname=rel)
    for p in sorted(CARRY.iterdir()):
        print(f"{p}: {p.stat().st_size / 1e6:.1f} MB")


def main() -> int:
    (HERE / "runs.json").write_text(json.dumps({"shape": SHAPE, "runs": runs()}, indent=2) + "\n")
    print(f"{HERE / 'runs.json'}: {len(RUNS)} runs")
    source()
    subprocess.run(["git", "-C", str(REPO), "status", "--short", str(HERE)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
