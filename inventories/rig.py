"""
The seeds' rig: 6x RTX 3090 (Threadripper), llama.cpp b8137 with CUDA and FA_ALL_QUANTS,
Qwen3.5-122B-A10B UD-Q6_K_XL on port 8000 with seed 000's exact server settings, and the
397B UD-TQ1_0 of seed 001 through the same port: one llama-server router service, the 122B
loaded at its start, the 397B loaded when a request names it (--models-max 1: the two do not
fit together, so loading one unloads the other).

    rigkit lock inventories/rig.py                      # pin the models: rig.lock.yaml (commit it)
    pyinfra inventories/rig.py deploys/rig.py --dry     # the plan
    pyinfra inventories/rig.py deploys/rig.py           # do it

Set RIG_HOST to the box's address (ssh as root or a sudo user: add ssh_user / _sudo).
"""

import os

from rigkit.models.lockfile import lock_path_for

MODELS = "/srv/models/qwen-3.5"

# The server settings both seeds use, per model: all layers on the GPUs, the full 262k
# context with a q8_0 KV cache, one slot, layer split, Qwen3.5's thinking sampling preset,
# Jinja templates.
QWEN_SERVER = {
    "n_gpu_layers": 999,
    "ctx": 262144,
    "cache_type_k": "q8_0",
    "cache_type_v": "q8_0",
    "parallel": 1,
    "split_mode": "layer",
    "sampling": "qwen3.5-thinking",  # --temp 0.6 --top-p 0.95 --top-k 20 --min-p 0.0
    "jinja": True,
}

rig = [
    (
        os.environ.get("RIG_HOST", "rig.lan"),
        {
            "ssh_user": os.environ.get("RIG_SSH_USER", "root"),
            **({"ssh_key": os.environ["RIG_SSH_KEY"]} if os.environ.get("RIG_SSH_KEY") else {}),
            "model_lock": str(lock_path_for(__file__)),  # inventories/rig.lock.yaml, by `rigkit lock`
            "gpus": {"count": 6, "cuda_arch": ["86"]},  # RTX 3090: sm_86
            # NVIDIA driver branch 580 (open modules) held, CUDA 13.0, every GPU at 350 W (the seeds')
            "nvidia": {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350},
            "llama_cpp": {
                "ref": "b8137",  # b7991 crashed on Qwen3.5 tool calls (seed 001)
                "cuda": True,
                "fa_all_quants": True,
            },
            # Fetched on the host from the Hub (or hf_endpoint, a LAN mirror), pinned by the lock.
            "models": [
                {
                    "name": "qwen122b-q6",
                    "repo": "unsloth/Qwen3.5-122B-A10B-GGUF",
                    "revision": "main",
                    "include": ["UD-Q6_K_XL/*.gguf"],
                    "dest": MODELS,
                },  # 4 shards, ~105 GB (seed 000)
                {
                    "name": "qwen397b-tq1",
                    "repo": "unsloth/Qwen3.5-397B-A17B-GGUF",
                    "revision": "main",
                    "include": ["Qwen3.5-397B-A17B-UD-TQ1_0.gguf"],
                    "dest": MODELS,
                },  # one file, ~88 GB (seed 001)
            ],
            "services": [
                {
                    "name": "qwen",
                    # The seeds serve the LAN without a key; rigkit listens on 127.0.0.1 unless
                    # told, and opens a port without a key only when the inventory says so
                    # (RIG_API_KEY_FILE adds one).
                    "host": "0.0.0.0",
                    "allow_unauthenticated": True,
                    "port": 8000,
                    "api_key_file": os.environ.get("RIG_API_KEY_FILE") or None,
                    # The default model, loaded at the start (seed 000).
                    **QWEN_SERVER,
                    "model": "ref:qwen122b-q6",
                    "alias": "Qwen3.5-122B-A10B-UD-Q6_K_XL",
                    "display_name": "Qwen3.5-122B",
                    "tensor_split": [0.9, 1, 1, 1, 1, 1],  # 0.9 on GPU 0 against OOM (seed 000)
                    "extra_args": ["--no-warmup"],
                    # One model loaded at a time: a request naming the other unloads this one.
                    "models_max": 1,
                    "router_models": [
                        {
                            **QWEN_SERVER,
                            "model": "ref:qwen397b-tq1",
                            "alias": "Qwen3.5-397B-A17B-UD-TQ1_0",
                            "display_name": "Qwen3.5-397B",
                        },  # seed 001
                    ],
                },
            ],
        },
    ),
]
