"""
Seed 002: the GPTQ 4-bit Qwen3.5-122B-A10B on a host with 4 GPUs, tensor parallel 4, with the
model card's exact `vllm serve` flags, deployed by deploys/rig.py (vLLM services need no
llama_cpp section). The rope-keys patch is applied only if the base's vLLM still has the list
form (0.19.x and 0.20.x have the set: the patch records "not needed").

    rigkit lock inventories/vllm-tp4.py               # writes inventories/vllm-tp4.lock.yaml
    TP4_HOST=gpu4.lan pyinfra inventories/vllm-tp4.py deploys/rig.py
"""

import os

from rigkit.models.lockfile import lock_path_for

tp4 = [
    (
        os.environ.get("TP4_HOST", "gpu4.lan"),
        {
            "model_lock": str(lock_path_for(__file__)),
            "gpus": {"count": 4},
            "models": [
                {
                    "name": "qwen122b-gptq",
                    "repo": "btbtyler09/Qwen3.5-122B-A10B-GPTQ-4bit",
                    "revision": "main",
                    "include": ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.py", "merges.txt", "vocab.json"],
                    "dest": "/srv/models/qwen122b-gptq",
                }
            ],
            "services": [
                {
                    "name": "qwen122b",
                    "engine": "vllm",
                    "model": "ref:qwen122b-gptq",
                    "alias": "btbtyler09/Qwen3.5-122B-A10B-GPTQ-4bit",
                    "port": 8000,
                    "base_image": "vllm/vllm-openai:v0.20.2",
                    "patches": ["rope-keys-set"],
                    # vllm serve btbtyler09/Qwen3.5-122B-A10B-GPTQ-4bit --gpu-memory-utilization 0.95
                    #   --max-model-len 32768 --tensor-parallel-size 4 --reasoning-parser qwen3
                    #   --enable-auto-tool-choice --tool-call-parser qwen3_coder --dtype float16
                    #   --skip-mm-profiling --limit-mm-per-prompt '{"image": 2}'
                    "gpu_memory_utilization": 0.95,
                    "ctx": 32768,
                    "tensor_parallel": 4,
                    "reasoning_parser": "qwen3",
                    "enable_auto_tool_choice": True,
                    "tool_call_parser": "qwen3_coder",
                    "dtype": "float16",
                    "skip_mm_profiling": True,
                    "limit_mm_per_prompt": {"image": 2},
                }
            ],
        },
    )
]
