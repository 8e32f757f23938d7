"""
Seed 003's model across two DGX Sparks joined by their ConnectX-7 link: Qwen3.5-122B-A10B
(Intel's AutoRound INT4 checkpoint, the INC hybrid INT4+FP8 patch, MTP) served by vLLM with
tensor parallel 2 through Ray ("No problem with Ray using the unmodified model, and up to
56t/s", seed 003's thread). Ray runs in the service's image on both nodes; spark-1 is the
head, where the API listens.

    rigkit lock inventories/spark-cluster.py     # writes inventories/spark-cluster.lock.yaml
    SPARK_1=spark-1.lan SPARK_2=spark-2.lan pyinfra inventories/spark-cluster.py deploys/spark.py

The head (spark-1) downloads the model once, from the Hub (or SPARK_MODEL_MIRROR, a LAN
mirror: ``rigkit mirror serve``), and builds the image once; spark-2 fetches the model from
the head's mirror and loads the head's image over the ConnectX-7 link, for the deploy's
duration (rigkit.cluster_share), verifying the files against the lock and the image's ID.

The interconnect addresses (SPARK_1_LINK, SPARK_2_LINK, /SPARK_LINK_PREFIX) are the nodes'
addresses on the ConnectX-7 interface (SPARK_LINK_IF), which the deploy configures from bare
and measures (200 Gb/s negotiated, SPARK_LINK_EXPECTED_GBPS over TCP) before Ray starts;
NCCL, Gloo and Ray use it. Serves on 127.0.0.1:8000 of
the head; set SPARK_API_KEY_FILE and SPARK_LISTEN=0.0.0.0 to open it to the LAN.
"""

import os
import runpy
from pathlib import Path

from rigkit.models.lockfile import lock_path_for

_link = os.environ.get("SPARK_LINK_IF", "enp1s0f0np0")
_nodes = {
    os.environ.get("SPARK_1", "spark-1.lan"): os.environ.get("SPARK_1_LINK", "192.168.100.11"),
    os.environ.get("SPARK_2", "spark-2.lan"): os.environ.get("SPARK_2_LINK", "192.168.100.12"),
}
# Where the head fetches the model (the Hub, or rigkit mirror serve on the LAN); the other
# node fetches it from the head over the link. Every node verifies every file against the lock.
_mirror = os.environ.get("SPARK_MODEL_MIRROR")

# Seed 003's model and service as inventories/spark.py declares them for one Spark (its
# SPARK_API_KEY_FILE and SPARK_LISTEN apply), spanning the cluster with tensor parallel 2;
# declared alike on both nodes (checked across the inventory before any host changes).
_seed = runpy.run_path(str(Path(__file__).with_name("spark.py")))["spark"][0][1]
_model = _seed["models"][0]
_service = {
    **_seed["services"][0],
    "cluster": "qwen122b",
    "tensor_parallel": 2,
    "ready_timeout": 1200,  # loading across two nodes, NCCL set-up included
}

sparks = [
    (
        host,
        {
            "ssh_user": os.environ.get("SPARK_USER", "root"),
            "model_lock": str(lock_path_for(__file__)),
            # A LAN mirror on plain http, knowingly (no token is sent to it).
            **({"hf_endpoint": _mirror, "hf_insecure_http": _mirror.startswith("http://")} if _mirror else {}),
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
            # The CX7 port and its cable, configured and measured by the deploy before Ray.
            "interconnect": {
                "interface": _link,
                "address": f"{address}/{os.environ.get('SPARK_LINK_PREFIX', '24')}",
                "peers": [a for a in _nodes.values() if a != address],
                "mtu": 9000,
                "link_gbps": 200,
                "expected_gbps": float(os.environ.get("SPARK_LINK_EXPECTED_GBPS", "20")),
            },
            "models": [_model],
            "services": [_service],
        },
    )
    for host, address in _nodes.items()
]
