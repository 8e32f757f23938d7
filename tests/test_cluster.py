"""Host data ``cluster`` (validated across hosts) and the Ray units rendered from it."""

from __future__ import annotations

import copy

import pytest

from rigkit.hostdata.cluster import parse_cluster, validate_cluster
from rigkit.hostdata.schema import HostDataError
from rigkit.render import ray as render


def spark_pair(**shared) -> dict[str, dict]:
    common = {"name": "qwen", "nodes": ["spark-1", "spark-2"], "tensor_parallel": 2, "pipeline_parallel": 1, **shared}
    return {
        "spark-1": {
            "gpus": {"count": 1},
            "cluster": {**common, "interconnect": "enp1s0f0np0", "address": "192.168.100.11"},
        },
        "spark-2": {
            "gpus": {"count": 1},
            "cluster": {**common, "interconnect": "enp1s0f0np0", "address": "192.168.100.12"},
        },
    }


def test_valid_pair():
    validate_cluster(spark_pair())
    validate_cluster({**spark_pair(), "other": {"gpus": {"count": 6}}})  # a host outside the cluster


def test_parallel_sizes_must_equal_the_gpus_the_nodes_bring():
    with pytest.raises(
        HostDataError, match=r"2 x 2 = 4\) equal to the GPUs the nodes bring \(2: spark-1: 1, spark-2: 1\)"
    ):
        validate_cluster(spark_pair(tensor_parallel=2, pipeline_parallel=2))
    validate_cluster(spark_pair(tensor_parallel=1, pipeline_parallel=2))
    data = spark_pair()
    del data["spark-1"]["cluster"]["pipeline_parallel"]
    with pytest.raises(HostDataError, match="together, or neither"):
        validate_cluster(data)


def test_unknown_node_is_refused():
    data = spark_pair(nodes=["spark-1", "spark-2", "spark-3"])
    with pytest.raises(
        HostDataError, match=r"host spark-1: cluster.nodes\[2\]: expected a host of this inventory, got 'spark-3'"
    ):
        validate_cluster(data)


def test_nodes_must_agree_and_name_themselves():
    data = spark_pair()
    data["spark-2"]["cluster"]["ray_port"] = 6380
    with pytest.raises(HostDataError, match="host spark-2: cluster: expected the same name, nodes, ray_port"):
        validate_cluster(data)
    data = spark_pair()
    del data["spark-2"]["cluster"]
    with pytest.raises(HostDataError, match="host spark-2: cluster: expected the cluster 'qwen'"):
        validate_cluster(data)
    data = spark_pair()
    data["spark-2"]["cluster"]["address"] = "192.168.100.11"
    with pytest.raises(HostDataError, match="cluster.address: expected an address no other node"):
        validate_cluster(data)
    with pytest.raises(HostDataError, match=r"a list that names this host \(spark-9\)"):
        parse_cluster("spark-9", spark_pair()["spark-1"]["cluster"])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("interconnect", "eth0\nExecStartPre=/bin/sh", "control characters"),
        ("interconnect", "$(reboot)", "network interface name"),
        ("interconnect", "../../etc", "network interface name"),
        ("interconnect", "..", "network interface name"),
        ("interconnect", "a-very-long-interface", "network interface name"),
        ("interconnect", "eth0 ", "network interface name"),
        ("address", "192.168.100.11\n", "control characters"),
        ("address", "$(id)", "IP address"),
        ("address", "192.168.100.300", "IP address"),
        ("address", "0.0.0.0", "an address the other nodes can reach"),
        ("name", "Qwen;reboot", "a cluster name"),
        ("name", "../x", "a cluster name"),
        ("ray_port", 22, "1024 to 65535"),
        ("ray_port", "6379", "an integer"),
        ("ray", "/opt/../bin/ray", "absolute and normalised"),
        ("ray", "ray", "absolute and normalised"),
        ("ray_version", "2.40.0; rm -rf /", "a release"),
        ("join_timeout", 0, "10 to 3600"),
        ("tensor_parallel", 0, "1 or more"),
        ("unknown", 1, "one of the known keys"),
    ],
)
def test_hostile_values_are_refused(key, value, message):
    data = spark_pair()
    data["spark-1"]["cluster"][key] = value
    with pytest.raises(HostDataError, match=message):
        validate_cluster(data)


@pytest.mark.parametrize("node", ["spark-2\n", "$(reboot)", "../spark-2", "spark 2", ""])
def test_hostile_node_names_are_refused(node):
    data = spark_pair(nodes=["spark-1", node])
    with pytest.raises(HostDataError, match=r"cluster.nodes"):
        validate_cluster(data)


def test_duplicate_node():
    with pytest.raises(HostDataError, match="each host once"):
        validate_cluster(spark_pair(nodes=["spark-1", "spark-1"]))


def parsed(data=None):
    data = data or spark_pair()
    return {n: parse_cluster(n, d["cluster"]) for n, d in data.items()}


def test_head_and_worker_units():
    nodes = parsed()
    head, worker = nodes["spark-1"], nodes["spark-2"]
    head_unit = render.render_node_unit(head, head, is_head=True)
    worker_unit = render.render_node_unit(worker, head, is_head=False)
    assert (
        "ExecStart=/opt/rigkit/ray/bin/ray start --head --port 6379 --node-ip-address 192.168.100.11 --block"
        in head_unit
    )
    assert "ExecStartPre" not in head_unit
    assert (
        "ExecStart=/opt/rigkit/ray/bin/ray start --address 192.168.100.11:6379 --node-ip-address 192.168.100.12 --block"
        in worker_unit
    )
    assert (
        "ExecStartPre=/opt/rigkit/ray/bin/python /usr/local/lib/rigkit/ray_wait_head.py 192.168.100.11 6379 300"
        in worker_unit
    )
    for unit in (head_unit, worker_unit):
        assert "Environment=NCCL_SOCKET_IFNAME=enp1s0f0np0\n" in unit
        assert "Environment=GLOO_SOCKET_IFNAME=enp1s0f0np0\n" in unit
        assert "RemoveIPC=no\n" in unit and "Restart=always\n" in unit and "User=rigkit-ray\n" in unit
        assert "NoNewPrivileges=yes\n" in unit and "ProtectSystem=strict\n" in unit
    ready = render.render_ready_unit(head, nodes, 2)
    assert "--gpus 2 --node spark-1=192.168.100.11 --node spark-2=192.168.100.12\n" in ready
    assert "Requires=rigkit-ray-qwen.service\n" in ready


def test_ipv6_head_address():
    data = spark_pair()
    data["spark-1"]["cluster"]["address"] = "fd00::11"
    data["spark-2"]["cluster"]["address"] = "fd00::12"
    nodes = parsed(data)
    unit = render.render_node_unit(nodes["spark-2"], nodes["spark-1"], is_head=False)
    assert "--address [fd00::11]:6379 " in unit


def test_wait_head_script_times_out(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from rigkit.cluster import SCRIPTS

    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "ray_wait_head.py"), "127.0.0.1", str(port), "1"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and f"127.0.0.1:{port} did not answer within 1 s" in proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "ray_wait_head.py"), "127.0.0.1", str(port), "5"],
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 0, proc.stderr


def test_validation_does_not_mutate():
    data = spark_pair()
    before = copy.deepcopy(data)
    validate_cluster(data)
    assert data == before
