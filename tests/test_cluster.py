"""Host data ``cluster`` (validated across hosts), the vLLM service that spans it, and the
Ray and vLLM units rendered from them."""

from __future__ import annotations

import copy

import pytest

from rigkit.hostdata import parse_rig
from rigkit.hostdata.cluster import parse_cluster, validate_cluster
from rigkit.hostdata.rig import check_clusters
from rigkit.hostdata.schema import HostDataError
from rigkit.render import ray as render
from rigkit.render import vllm as render_vllm

BASE = "vllm/vllm-openai:v0.19.1"


def qwen_service(**kw) -> dict:
    """Seed 003's service, across the pair with tensor parallel 2."""
    return {
        "name": "qwen122b",
        "engine": "vllm",
        "model": "/srv/models/qwen122b-int4",
        "alias": "qwen3.5-122b",
        "port": 8000,
        "ctx": 262144,
        "base_image": BASE,
        "tensor_parallel": 2,
        "reasoning_parser": "qwen3",
        "cluster": "qwen",
        **kw,
    }


def spark_pair(**shared) -> dict[str, dict]:
    common = {"name": "qwen", "nodes": ["spark-1", "spark-2"], "tensor_parallel": 2, "pipeline_parallel": 1, **shared}
    return {
        "spark-1": {
            "gpus": {"count": 1},
            "cluster": {**common, "interconnect": "enp1s0f0np0", "address": "192.168.100.11"},
            "services": [qwen_service()],
        },
        "spark-2": {
            "gpus": {"count": 1},
            "cluster": {**common, "interconnect": "enp1s0f0np0", "address": "192.168.100.12"},
            "services": [qwen_service()],
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


def rigs(data=None):
    data = data or spark_pair()
    return {n: parse_rig(n, d) for n, d in data.items()}


def test_head_and_worker_units_run_ray_in_the_services_image():
    nodes = parsed()
    head, worker = nodes["spark-1"], nodes["spark-2"]
    svc = rigs()["spark-1"].services[0]
    image = "rigkit/vllm:0123456789abcdef"
    head_unit = render.render_node_unit(head, head, True, svc, image, 1)
    worker_unit = render.render_node_unit(worker, head, False, svc, image, 1)
    docker_run = (
        "/usr/bin/docker run --name rigkit-ray-qwen --pull never --network host --ipc host --init "
        "--security-opt no-new-privileges --label org.rigkit.cluster=qwen --gpus all -v /srv/models/qwen122b-int4:/srv/models/qwen122b-int4:ro "
        "-v rigkit-ray-qwen:/tmp/ray -e NCCL_SOCKET_IFNAME=enp1s0f0np0 -e GLOO_SOCKET_IFNAME=enp1s0f0np0 "
    )
    assert f"ExecStart={docker_run}-e VLLM_HOST_IP=192.168.100.11 " in head_unit
    assert (
        "--entrypoint ray rigkit/vllm:0123456789abcdef start --head --port 6379 --include-dashboard=false "
        "--node-ip-address 192.168.100.11 "
        "--block --disable-usage-stats\n" in head_unit
    )
    assert "ray_wait_head" not in head_unit and "PrivateNetwork=yes" in head_unit
    assert f"ExecStart={docker_run}-e VLLM_HOST_IP=192.168.100.12 " in worker_unit
    assert (
        "rigkit/vllm:0123456789abcdef start --address 192.168.100.11:6379 --node-ip-address 192.168.100.12 --block"
        in worker_unit
    )
    assert (
        "ExecStartPre=/usr/bin/python3 /usr/local/lib/rigkit/ray_wait_head.py 192.168.100.11 6379 300\n" in worker_unit
    )
    for unit in (head_unit, worker_unit):
        assert "ExecStartPre=-/usr/bin/docker rm -f rigkit-ray-qwen\n" in unit
        assert "RemoveIPC=no\n" in unit and "Restart=always\n" in unit and "User=rigkit-ray\n" in unit
        assert "SupplementaryGroups=docker\n" in unit and "NoNewPrivileges=yes\n" in unit
    ready = render.render_ready_unit(head, nodes, 2)
    assert (
        "ExecStart=/usr/bin/python3 /usr/local/lib/rigkit/ray_ready.py --container rigkit-ray-qwen "
        "--address 192.168.100.11:6379 --timeout 300 --gpus 2 --node spark-1=192.168.100.11 "
        "--node spark-2=192.168.100.12\n" in ready
    )
    assert "Requires=rigkit-ray-qwen.service\n" in ready


def test_head_vllm_joins_the_cluster_and_waits_for_it():
    rig = rigs()["spark-1"]
    svc = rig.services[0]
    argv = render_vllm.command_line(svc, "rigkit/vllm:x", 1, rig.cluster)
    assert argv[argv.index("rigkit/vllm:x") - 18 :][:4] == [
        "-v",
        "rigkit-ray-qwen:/tmp/ray",
        "-e",
        "RAY_ADDRESS=192.168.100.11:6379",
    ]
    assert "NCCL_SOCKET_IFNAME=enp1s0f0np0" in argv
    serve = argv[argv.index("rigkit/vllm:x") + 1 :]
    assert serve[serve.index("--tensor-parallel-size") + 1] == "2"
    assert serve[serve.index("--distributed-executor-backend") + 1] == "ray"
    ready = render.ready_argv(rig.cluster, parsed(), 2)
    unit = render_vllm.render_unit(svc, "rigkit/vllm:x", 1, rig.cluster, ready)
    assert "Wants=rigkit-ray-qwen.service\nAfter=rigkit-ray-qwen.service\n" in unit
    # Every start waits for the whole cluster (and Restart= retries a failed wait).
    assert (
        "ExecStartPre=/usr/bin/python3 /usr/local/lib/rigkit/ray_ready.py --container rigkit-ray-qwen "
        "--address 192.168.100.11:6379 --timeout 300 --gpus 2 --node spark-1=192.168.100.11 "
        "--node spark-2=192.168.100.12\n" in unit
    )
    assert "Restart=on-failure\n" in unit and "Requires=" not in unit
    assert f"TimeoutStartSec={900 + 60 + 300}\n" in unit
    alone = render_vllm.render_unit(svc, "rigkit/vllm:x", 1)
    assert "ray_ready" not in alone and "RAY_ADDRESS" not in alone and "distributed-executor" not in alone


def test_every_ray_process_and_the_driver_authenticate_with_the_token_file():
    both = rigs()
    head, worker = both["spark-1"], both["spark-2"]
    svc = head.services[0]
    auth = [
        "-v",
        "/etc/rigkit/ray/qwen.token:/run/rigkit/ray-auth-token:ro",
        "-e",
        "RAY_AUTH_MODE=token",
        "-e",
        "RAY_AUTH_TOKEN_PATH=/run/rigkit/ray-auth-token",
    ]

    def has_auth(argv: list[str]) -> bool:
        return any(argv[i : i + len(auth)] == auth for i in range(len(argv)))

    for rig in (head, worker):
        assert rig.cluster is not None
        argv = render.node_argv(rig.cluster, head.cluster, rig.is_head, svc, "rigkit/vllm:x", 1)
        # Before the image: docker's options, not Ray's.
        assert has_auth(argv[: argv.index("rigkit/vllm:x")]), argv
        unit = render.render_node_unit(rig.cluster, head.cluster, rig.is_head, svc, "rigkit/vllm:x", 1)
        assert " -e RAY_AUTH_MODE=token -e RAY_AUTH_TOKEN_PATH=/run/rigkit/ray-auth-token " in unit
        assert "RAY_AUTH_TOKEN=" not in unit  # the path, never a value
    driver = render_vllm.command_line(svc, "rigkit/vllm:x", 1, head.cluster)
    assert has_auth(driver[: driver.index("rigkit/vllm:x")]), driver
    # A vLLM service that spans no cluster runs no Ray: no token, no mode.
    alone = render_vllm.command_line(svc, "rigkit/vllm:x", 1)
    assert not any("RAY_AUTH" in a or "ray-auth-token" in a for a in alone), alone


@pytest.mark.parametrize(
    "version, supported",
    [
        ("2.52.0", True),
        ("2.54.1", True),
        ("2.60.0", True),
        ("3.0.0.dev0", True),
        ("2.52.0rc1", True),
        ("2.51.2", False),
        ("2.40.0", False),
        ("1.99.9", False),
        ("", False),
        (None, False),
        ("2.52.0\n; reboot", False),
        ("latest", False),
        ("2", False),
    ],
)
def test_token_authentication_needs_ray_2_52(version, supported):
    assert render.supports_token_auth(version) is supported
    head = rigs()["spark-1"].cluster
    assert head is not None
    warning = render.exposure_warning(head, "rigkit/vllm:x", version)
    assert (warning is None) is supported
    if warning:
        assert "\n" not in warning
        assert warning.startswith("cluster qwen: rigkit/vllm:x has ")
        assert "without token authentication (Ray 2.52+)" in warning
        assert "GCS :6379" in warning and "over the interconnect enp1s0f0np0" in warning


def test_only_the_head_serves():
    both = rigs()
    head, worker = both["spark-1"], both["spark-2"]
    svc = head.services[0]
    assert head.is_head and head.serves(svc)
    assert not worker.is_head and not worker.serves(worker.services[0])
    assert render_vllm.services_manifest(worker, {svc.name: "rigkit/vllm:x"}).count('"name"') == 0
    assert '"name": "qwen122b"' in render_vllm.services_manifest(head, {svc.name: "rigkit/vllm:x"})


def test_clustered_service_checks():
    check_clusters(spark_pair())  # one GPU per node, tensor parallel 2 across them
    data = spark_pair()
    data["spark-1"]["services"][0]["cluster"] = "other"
    with pytest.raises(
        HostDataError, match=r"services\[0\].cluster: expected the name of this host's cluster \(qwen\)"
    ):
        parse_rig("spark-1", data["spark-1"])
    data = spark_pair()
    data["spark-1"]["services"][0]["tensor_parallel"] = 1
    with pytest.raises(
        HostDataError, match=r"tensor_parallel: expected the cluster's tensor_parallel and pipeline_parallel \(2, 1\)"
    ):
        parse_rig("spark-1", data["spark-1"])
    data = spark_pair()
    del data["spark-2"]["services"]
    with pytest.raises(HostDataError, match="host spark-2: cluster: expected one vLLM service that spans it"):
        check_clusters(data)
    data = spark_pair()
    data["spark-2"]["services"][0]["patches"] = ["inc-hybrid-fp8"]
    with pytest.raises(
        HostDataError,
        match="host spark-2: services: expected the service that spans cluster qwen declared as on its head spark-1",
    ):
        check_clusters(data)
    data = spark_pair()
    data["spark-1"]["services"][0].pop("cluster")
    # Without the cluster the same service does not fit the node's one GPU.
    with pytest.raises(HostDataError, match="at most the 1 GPU"):
        parse_rig("spark-1", data["spark-1"])
    data["spark-1"]["services"][0]["tensor_parallel"] = 1
    with pytest.raises(HostDataError, match="host spark-1: cluster: expected one vLLM service"):
        parse_rig("spark-1", data["spark-1"])


def test_a_clustered_service_takes_every_gpu_and_leaves_the_interconnect_alone():
    data = spark_pair()
    data["spark-1"]["services"][0]["gpus"] = [0]
    with pytest.raises(HostDataError, match=r"services\[0\].gpus: expected no GPU subset"):
        parse_rig("spark-1", data["spark-1"])
    for var in ("NCCL_SOCKET_IFNAME", "VLLM_HOST_IP", "RAY_ADDRESS"):
        data = spark_pair()
        data["spark-1"]["services"][0]["env"] = {var: "eth0"}
        with pytest.raises(HostDataError, match=rf"services\[0\].env.{var}: expected none of"):
            parse_rig("spark-1", data["spark-1"])
    data = spark_pair()
    for d in data.values():
        del d["cluster"]["tensor_parallel"], d["cluster"]["pipeline_parallel"]
    with pytest.raises(
        HostDataError, match=r"cluster: expected tensor_parallel and pipeline_parallel \(the nodes bring 2"
    ):
        validate_cluster(data)


@pytest.mark.parametrize("value", ["qwen\nExecStartPre=/bin/sh", "$(reboot)", "../qwen", "qwen --api-key x", ""])
def test_hostile_cluster_reference_is_refused(value):
    data = spark_pair()
    data["spark-1"]["services"][0]["cluster"] = value
    with pytest.raises(HostDataError, match=r"services\[0\]"):
        parse_rig("spark-1", data["spark-1"])


def test_ipv6_head_address():
    data = spark_pair()
    data["spark-1"]["cluster"]["address"] = "fd00::11"
    data["spark-2"]["cluster"]["address"] = "fd00::12"
    nodes = parsed(data)
    svc = rigs(data)["spark-2"].services[0]
    unit = render.render_node_unit(nodes["spark-2"], nodes["spark-1"], False, svc, "rigkit/vllm:x", 1)
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


def test_spark_cluster_inventory():
    """inventories/spark-cluster.py: two Sparks, seed 003's service with tensor parallel 2."""
    import runpy
    from pathlib import Path

    from rigkit.render.vllm import image_identity

    inventory = runpy.run_path(str(Path(__file__).resolve().parent.parent / "inventories" / "spark-cluster.py"))
    data = dict(inventory["sparks"])
    check_clusters(data)
    head, worker = (
        parse_rig(h, {k: v for k, v in d.items() if k in ("gpus", "cluster", "services", "models")})
        for h, d in data.items()
    )
    assert head.is_head and not worker.is_head
    svc = head.services[0]
    image = image_identity(svc.options).tag
    argv = render_vllm.command_line(svc, image, head.gpus.count, head.cluster)
    serve = argv[argv.index(image) + 1 :]
    assert serve[serve.index("--tensor-parallel-size") + 1] == "2"
    assert serve[serve.index("--distributed-executor-backend") + 1] == "ray"
    assert '{"method":"mtp","num_speculative_tokens":1}' in serve and "--enable-auto-tool-choice" in serve
    assert "RAY_ADDRESS=192.168.100.11:6379" in argv and "NCCL_SOCKET_IFNAME=enp1s0f0np0" in argv
    unit = render.render_node_unit(worker.cluster, head.cluster, False, worker.services[0], image, 1)
    assert "--gpus all" in unit and "start --address 192.168.100.11:6379 --node-ip-address 192.168.100.12" in unit


def test_a_second_vllm_service_on_the_head_is_not_wired_into_ray():
    from rigkit.engines.vllm import spanned

    data = spark_pair()
    data["spark-1"]["services"].append(
        {"name": "small", "engine": "vllm", "model": "/srv/models/small", "port": 8001, "base_image": BASE}
    )
    rig = parse_rig("spark-1", data["spark-1"])
    assert spanned(rig, rig.services[1]) == (None, None)
    unit = render_vllm.render_unit(rig.services[1], "rigkit/vllm:x", 1, *spanned(rig, rig.services[1]))
    assert "ray" not in unit.lower().replace("array", "")


class _Data(dict):
    def dict(self):
        return dict(self)


class _Run:
    """What rig_for reads of a pyinfra run: hosts with data, their inventory and state."""

    def __init__(self, data):
        self.hosts = [
            type("Host", (), {"name": n, "data": _Data(d), "state": self, "inventory": self})() for n, d in data.items()
        ]

    def __iter__(self):
        return iter(self.hosts)


def test_the_cluster_is_resolved_once_per_run_into_each_nodes_rig(monkeypatch):
    from rigkit.cluster import cluster_gpus, nodes_of
    from rigkit.hostdata import rig as rig_module

    calls = []
    real = rig_module.check_clusters
    monkeypatch.setattr(rig_module, "check_clusters", lambda data: calls.append(sorted(data)) or real(data))
    run = _Run(spark_pair())
    head, worker = (rig_module.rig_for(h) for h in run)
    assert calls == [["spark-1", "spark-2"]]  # once for the run, not once per host
    for rig in (head, worker):
        assert rig.members is not None and list(rig.members.nodes) == ["spark-1", "spark-2"]
        assert rig.members.head.address == "192.168.100.11" and rig.members.gpu_count == 2
        assert rig.members.addresses == {"spark-1": "192.168.100.11", "spark-2": "192.168.100.12"}
        assert nodes_of(rig) == parsed() and cluster_gpus(rig) == 2
    assert head == parse_rig("spark-1", spark_pair()["spark-1"])  # the same rig, members aside
    rig_module.rig_for(next(iter(_Run(spark_pair()))))
    assert len(calls) == 2  # a new run checks its own inventory

    bad = spark_pair()
    bad["spark-2"]["services"][0]["port"] = 8001
    run = _Run(bad)
    for host in run:  # every host of the run is refused, the inventory checked once
        with pytest.raises(HostDataError, match="declared as on its head spark-1"):
            rig_module.rig_for(host)
    assert len(calls) == 3


def test_image_bases_are_recorded_per_run():
    from rigkit.operations import cluster as cluster_ops

    one, two = _Run({}), _Run({})
    cluster_ops.recorded(one, "qwen")["spark-1"] = "sha256:a"
    assert cluster_ops.recorded(one, "qwen") == {"spark-1": "sha256:a"}
    assert cluster_ops.recorded(two, "qwen") == {} and cluster_ops.recorded(one, "other") == {}


def test_the_clusters_token_is_generated_once_on_this_machine(tmp_path, monkeypatch):
    from rigkit.operations import secrets as secret_ops

    monkeypatch.setattr(secret_ops, "LOCAL_GENERATED", tmp_path / "secrets")
    first = secret_ops.generated_secret("ray-token-qwen")
    assert len(first) == 64 and int(first, 16) >= 0
    assert secret_ops.generated_secret("ray-token-qwen") == first  # every node, every deploy
    assert secret_ops.generated_secret("ray-token-other") != first
    assert (tmp_path / "secrets" / "ray-token-qwen").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["ray-token-other", "ray-token-qwen"]
    for hostile in ("../x", "a/b", ".hidden", "", "x y", "tok\n"):
        with pytest.raises(ValueError):
            secret_ops.generated_secret(hostile)


def test_the_images_ray_version_is_read_from_its_package():
    from rigkit.facts.cluster import ImageRayVersion

    fact = ImageRayVersion()
    command = fact.command(image="rigkit/vllm:x").get_raw_value()
    assert "--network none" in command and "--pull never" in command and 'version("ray")' in command
    assert fact.process([]) is None  # no such image
    assert fact.process(["present"]) == {"ray": None}  # an image without Ray
    assert fact.process(["present", "2.54.1"]) == {"ray": "2.54.1"}


@pytest.mark.parametrize("role", ["spark-1", "spark-2"])
def test_the_head_warns_once_where_the_images_ray_cannot_authenticate(monkeypatch, caplog, role):
    import logging

    from rigkit import cluster as cluster_mod

    rig = rigs()[role]
    facts: list[str] = []
    scheduled: list[dict] = []
    found: dict = {"image": {"ray": "2.40.0"}}
    host = type("Host", (), {"get_fact": lambda self, fact, image: facts.append(image) or found["image"]})()
    monkeypatch.setattr(cluster_mod, "host", host)
    monkeypatch.setattr(cluster_mod.cluster_ops, "ray_auth_checked", lambda **kw: scheduled.append(kw))

    def built() -> bool:
        return True

    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        cluster_mod.warn_unauthenticated(rig, "rigkit/vllm:x", built)
        found["image"] = {"ray": "2.54.1"}
        cluster_mod.warn_unauthenticated(rig, "rigkit/vllm:x", built)
    warnings = [r.getMessage() for r in caplog.records]
    if not rig.is_head:  # one line for the cluster, from its head
        assert facts == [] and warnings == [] and scheduled == []
        return
    assert facts == ["rigkit/vllm:x", "rigkit/vllm:x"] and scheduled == []
    assert warnings == [
        "host spark-1: cluster qwen: rigkit/vllm:x has Ray 2.40.0, without token authentication (Ray 2.52+): "
        "Ray's ports (GCS :6379, every node's raylet and workers) take any client that reaches the nodes, "
        "over the interconnect enp1s0f0np0 included"
    ]
    # Not built yet: read after this run's build, by the operation.
    found["image"] = None
    cluster_mod.warn_unauthenticated(rig, "rigkit/vllm:x", built)
    assert [(op["image"], op["_if"]) for op in scheduled] == [("rigkit/vllm:x", built)]
    assert "has Ray 2.51.2, without token authentication" in scheduled[0]["warning_of"]("2.51.2")
    assert scheduled[0]["warning_of"]("2.52.1") is None
