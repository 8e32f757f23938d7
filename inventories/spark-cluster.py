"""
Seed 003's model across two DGX Sparks joined by their ConnectX-7 link: Qwen3.5-122B-A10B
(Intel's AutoRound INT4 checkpoint, the INC hybrid INT4+FP8 patch, MTP) served by vLLM with
tensor parallel 2 through Ray ("No problem with Ray using the unmodified model, and up to
56t/s", seed 003's thread). Ray runs in the service's image on both nodes; spark-1 is the
head, where the API listens.

    rigkit lock inventories/spark-cluster.py     # writes inventories/spark-cluster.lock.yaml
    hf download Intel/Qwen3.5-122B-A10B-int4-AutoRound --local-dir /srv/mirror/Intel/Qwen3.5-122B-A10B-int4-AutoRound
    rigkit mirror serve /srv/mirror --port 8080   # the model read from the internet once, then
                                                  # served to both Sparks over the LAN
    SPARK_1=spark-1.lan SPARK_2=spark-2.lan SPARK_MODEL_MIRROR=http://this-machine.lan:8080 \
        pyinfra inventories/spark-cluster.py deploys/spark.py

The interconnect addresses (SPARK_1_LINK, SPARK_2_LINK) are the nodes' addresses on the
ConnectX-7 interface (SPARK_LINK_IF); NCCL, Gloo and Ray use it. Serves on 127.0.0.1:8000 of
the head; set SPARK_API_KEY_FILE and SPARK_LISTEN=0.0.0.0 to open it to the LAN.
"""

import os

from rigkit.models.lockfile import lock_path_for

_key = os.environ.get("SPARK_API_KEY_FILE")
_listen = os.environ.get("SPARK_LISTEN", "127.0.0.1")
_link = os.environ.get("SPARK_LINK_IF", "enp1s0f0np0")
_nodes = {
    os.environ.get("SPARK_1", "spark-1.lan"): os.environ.get("SPARK_1_LINK", "192.168.100.11"),
    os.environ.get("SPARK_2", "spark-2.lan"): os.environ.get("SPARK_2_LINK", "192.168.100.12"),
}
# Where the nodes fetch the model (rigkit mirror serve on the deploying machine): the
# internet is read once, not once per node; each node verifies every file against the lock.
_mirror = os.environ.get("SPARK_MODEL_MIRROR")

# Declared alike on both nodes (checked across the inventory before any host changes).
_service = {
    "name": "qwen122b",
    "engine": "vllm",
    "cluster": "qwen122b",
    "model": "ref:qwen122b-int4",
    "alias": "qwen3.5-122b",
    "host": _listen,
    "port": 8000,
    "ctx": 262144,
    "base_image": "vllm/vllm-openai:v0.19.1",
    "patches": ["inc-hybrid-fp8"],
    "tensor_parallel": 2,
    "gpu_memory_utilization": 0.90,
    "reasoning_parser": "qwen3",
    "attention_backend": "FLASHINFER",
    "enable_auto_tool_choice": True,
    "tool_call_parser": "qwen3_coder",
    "speculative": {"method": "mtp", "num_speculative_tokens": 1},
    "drop_page_cache": True,  # unified memory
    "ready_timeout": 1200,  # loading across two nodes, NCCL set-up included
    **({"api_key_file": _key} if _key else {}),
}
_model = {
    "name": "qwen122b-int4",
    "repo": "Intel/Qwen3.5-122B-A10B-int4-AutoRound",
    "revision": "main",
    "include": ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.py", "merges.txt", "vocab.json"],
    "dest": "/srv/models/qwen122b-int4-autoround",
}

sparks = [
    (
        host,
        {
            "ssh_user": os.environ.get("SPARK_USER", "root"),
            "model_lock": str(lock_path_for(__file__)),
            **({"hf_endpoint": _mirror} if _mirror else {}),
            "gpus": {"count": 1, "cuda_arch": ["121"]},
            "cluster": {
                "name": "qwen122b",
                "nodes": list(_nodes),
                "tensor_parallel": 2,
                "pipeline_parallel": 1,
                "ray_port": 6379,
                "interconnect": _link,
                "address": address,
                "join_timeout": 600,
            },
            "models": [_model],
            "services": [_service],
        },
    )
    for host, address in _nodes.items()
]
