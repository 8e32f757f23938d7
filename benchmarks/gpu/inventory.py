"""
The lent GPU box as a rigkit host: ``@local``, one GPU (architecture read from nvidia-smi),
llama.cpp pinned at b11312 from a git bundle, one llama-server service (q8_0 KV, flash
attention on). benchmarks/gpu.py runs ``pyinfra benchmarks/gpu/inventory.py
benchmarks/gpu/deploy.py`` with these variables set:

    RIGKIT_GPU_BUNDLE           git URL of llama.cpp (a bundle path works; no network there)
    RIGKIT_GPU_REF              pinned ref (default b11312)
    RIGKIT_GPU_FA_ALL_QUANTS    1 (rigkit's default) or 0
    RIGKIT_GPU_ROOT             llama.cpp root (default /opt/rigkit/llama.cpp)
    RIGKIT_GPU_MODEL            the served model (an absolute .gguf path)
    RIGKIT_GPU_ACTIVATE         1: switch ``current`` to this build after it compiled
"""

import os


def rig_data(
    bundle: str,
    fa_all_quants: bool,
    model: str,
    ref: str = "b11312",
    root: str = "/opt/rigkit/llama.cpp",
    activate: bool = True,
) -> dict:
    return {
        "gpus": {"count": 1},  # no cuda_arch: rigkit reads it off the GPU (NvidiaGpus fact)
        "llama_cpp": {
            "ref": ref,
            "git_url": bundle,
            "cuda": True,
            "fa_all_quants": fa_all_quants,
            "targets": ["llama-server", "llama-bench"],
            "root": root,
        },
        "services": [
            {
                "name": "bench",
                "model": model,
                "host": "127.0.0.1",
                "port": 8080,
                "ctx": 32768,
                "cache_type_k": "q8_0",
                "cache_type_v": "q8_0",
                "flash_attn": "on",
                "n_gpu_layers": 999,
                "parallel": 1,
            }
        ],
        "activate": activate,
    }


local = [
    (
        "@local",
        rig_data(
            bundle=os.environ.get("RIGKIT_GPU_BUNDLE", "/root/gpubench/llama.cpp-b11312.bundle"),
            fa_all_quants=os.environ.get("RIGKIT_GPU_FA_ALL_QUANTS", "1") == "1",
            model=os.environ.get("RIGKIT_GPU_MODEL", "/root/gpubench/models/rand-3b-Q8_0.gguf"),
            ref=os.environ.get("RIGKIT_GPU_REF", "b11312"),
            root=os.environ.get("RIGKIT_GPU_ROOT", "/opt/rigkit/llama.cpp"),
            activate=os.environ.get("RIGKIT_GPU_ACTIVATE", "1") == "1",
        ),
    )
]
