"""
Seed 003: Qwen3.5-122B-A10B on one DGX Spark (GB10, 128 GB unified memory) with vLLM 0.20.2,
Intel's AutoRound INT4 checkpoint, the INC hybrid INT4+FP8 dispatch patch and MTP
speculative decoding (the checkpoint's model_extra_tensors.safetensors, referenced by its
index; checked on the host before MTP is enabled).

    rigkit lock inventories/spark.py                  # writes inventories/spark.lock.yaml
    SPARK_HOST=spark.lan pyinfra inventories/spark.py deploys/spark.py

Serves on 127.0.0.1:8000; set SPARK_API_KEY_FILE and SPARK_LISTEN=0.0.0.0 to open it to the LAN.
"""

import os

from rigkit.models.lockfile import lock_path_for

_key = os.environ.get("SPARK_API_KEY_FILE")
_listen = os.environ.get("SPARK_LISTEN", "127.0.0.1")

spark = [
    (
        os.environ.get("SPARK_HOST", "spark.lan"),
        {
            "ssh_user": os.environ.get("SPARK_USER", "root"),
            "model_lock": str(lock_path_for(__file__)),
            "gpus": {"count": 1, "cuda_arch": ["121"]},
            "models": [
                {
                    "name": "qwen122b-int4",
                    "repo": "Intel/Qwen3.5-122B-A10B-int4-AutoRound",
                    "revision": "main",
                    "include": ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.py", "merges.txt", "vocab.json"],
                    "dest": "/srv/models/qwen122b-int4-autoround",
                }
            ],
            "services": [
                {
                    "name": "qwen122b",
                    "engine": "vllm",
                    "model": "ref:qwen122b-int4",
                    "alias": "qwen3.5-122b",
                    "host": _listen,
                    "port": 8000,
                    "ctx": 262144,
                    # vLLM's official image, pinned by its exact tag: 0.20.x is built for CUDA 13
                    # and runs on the GB10 (SM121) as it is; inc-hybrid-fp8 has an edit for 0.20.x
                    # (and for 0.19.x: "vllm/vllm-openai:v0.19.1" still builds). README: vLLM versions.
                    "base_image": "vllm/vllm-openai:v0.20.2",
                    "patches": ["inc-hybrid-fp8"],
                    "gpu_memory_utilization": 0.90,
                    "reasoning_parser": "qwen3",
                    "attention_backend": "FLASHINFER",
                    "enable_auto_tool_choice": True,
                    "tool_call_parser": "qwen3_coder",
                    "speculative": {"method": "mtp", "num_speculative_tokens": 1},
                    "drop_page_cache": True,  # unified memory
                    "ready_timeout": 900,
                    **({"api_key_file": _key} if _key else {}),
                }
            ],
        },
    )
]
