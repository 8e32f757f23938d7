"""
The lent GPU box as a rigkit host for ``rigkit bench`` (``@local``): benchmarks/gpu's host
data (llama.cpp b11312 from a git bundle, architecture read from the GPU, one llama-server
service with q8_0 KV and flash attention), the service at the seeds' 262144-token context.

    RIGKIT_GPU_BUNDLE, RIGKIT_GPU_MODEL, RIGKIT_GPU_ROOT, RIGKIT_GPU_FA_ALL_QUANTS as in
    benchmarks/gpu/inventory.py; RIGKIT_BENCH_CTX (default 262144)
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu"))

from inventory import rig_data  # noqa: E402  (benchmarks/gpu/inventory.py)

data = rig_data(
    bundle=os.environ.get("RIGKIT_GPU_BUNDLE", "/root/benchwork/llama.cpp-b11312.bundle"),
    fa_all_quants=os.environ.get("RIGKIT_GPU_FA_ALL_QUANTS", "0") == "1",
    model=os.environ.get("RIGKIT_GPU_MODEL", "/root/benchwork/models/rand-3b-Q8_0.gguf"),
    root=os.environ.get("RIGKIT_GPU_ROOT", "/opt/rigkit/llama.cpp"),
)
data["services"][0]["ctx"] = int(os.environ.get("RIGKIT_BENCH_CTX", "262144"))

local = [("@local", data)]
