"""
What rigkit renders for a node of a Ray cluster (host data ``cluster``) that a vLLM service
spans: the node's role unit, running Ray in the service's image (``ray start --head ...
--block`` on the head; on a worker, once the head answers, ``ray start --address HEAD:PORT
... --block``), the head's readiness unit that waits until Ray reports every node, and what
the head's vLLM container needs to join the cluster. Pure functions of the validated host
data; every value goes through :mod:`rigkit.render.systemd`.
"""

from __future__ import annotations

from rigkit.hostdata.cluster import Cluster
from rigkit.hostdata.services import Service
from rigkit.hostdata.vllm import options_of
from rigkit.render.systemd import exec_line, templates

USER = "rigkit-ray"
SCRIPT_DIR = "/usr/local/lib/rigkit"
WAIT_HEAD = f"{SCRIPT_DIR}/ray_wait_head.py"
READY = f"{SCRIPT_DIR}/ray_ready.py"
HOST_PYTHON = "/usr/bin/python3"
DOCKER = "/usr/bin/docker"
#: Ray's session directory, a Docker volume the head's Ray and vLLM containers share (the
#: driver finds the node's raylet and object store there).
SESSION_DIR = "/tmp/ray"


def node_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}.service"


def ready_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-ready-{cluster.name}.service"


def container_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}"


def volume_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}"


def head_address(head: Cluster) -> str:
    """``HOST:PORT`` of the head (``[v6]:PORT`` for an IPv6 address)."""
    return f"[{head.address}]:{head.ray_port}" if ":" in head.address else f"{head.address}:{head.ray_port}"


def interconnect_env(cluster: Cluster, rdma: tuple[str, ...] = ()) -> list[str]:
    """``-e`` arguments of the cluster's containers on a node: the interconnect for NCCL,
    Gloo and vLLM's own address; ``rdma``, the RDMA devices behind the interconnect port
    (read on the node), for NCCL's IB/RoCE transport."""
    env = {
        "NCCL_SOCKET_IFNAME": cluster.interconnect,
        "GLOO_SOCKET_IFNAME": cluster.interconnect,
        "VLLM_HOST_IP": cluster.address,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if rdma:
        # Only the interconnect's own HCA (the '=' makes NCCL match the names exactly).
        env["NCCL_IB_HCA"] = "=" + ",".join(rdma)
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def ray_argv(cluster: Cluster, head: Cluster, is_head: bool) -> list[str]:
    common = ["--node-ip-address", cluster.address, "--block", "--disable-usage-stats"]
    if is_head:
        # No dashboard: its job API runs code for anyone who reaches it (CVE-2023-48022).
        return ["start", "--head", "--port", str(cluster.ray_port), "--include-dashboard=false", *common]
    return ["start", "--address", head_address(head), *common]


def node_argv(
    cluster: Cluster, head: Cluster, is_head: bool, service: Service, image: str, gpus: int, rdma: tuple[str, ...] = ()
) -> list[str]:
    """The ``docker run`` argv of the node's Ray container: host network and IPC (NCCL and
    Ray's object store), the GPUs, the model read-only at the path the head's vLLM names."""
    argv = [DOCKER, "run", "--name", container_name(cluster), "--pull", "never", "--network", "host", "--ipc", "host"]
    argv += ["--init", "--security-opt", "no-new-privileges", "--label", f"org.rigkit.cluster={cluster.name}"]
    if service.gpus:
        argv += ["--gpus", '"device=' + ",".join(str(g) for g in service.gpus) + '"']
    elif gpus:
        argv += ["--gpus", "all"]
    argv += ["-v", f"{service.model}:{service.model}:ro", "-v", f"{volume_name(cluster)}:{SESSION_DIR}"]
    # vLLM's workers are Ray's worker processes: they inherit this container's environment.
    argv += interconnect_env(cluster, rdma) + ["-e", "HF_HUB_OFFLINE=1"]
    for name, value in sorted(options_of(service).env.items()):
        argv += ["-e", f"{name}={value}"]
    return argv + ["--entrypoint", "ray", image, *ray_argv(cluster, head, is_head)]


def render_node_unit(
    cluster: Cluster, head: Cluster, is_head: bool, service: Service, image: str, gpus: int, rdma: tuple[str, ...] = ()
) -> str:
    """The unit of this node's Ray role; ``head`` is the head node's own cluster entry."""
    wait = None
    if not is_head:
        wait = exec_line([HOST_PYTHON, WAIT_HEAD, head.address, str(head.ray_port), str(cluster.join_timeout)])
    name = container_name(cluster)
    return templates.get_template("ray-node.service.j2").render(
        role="head" if is_head else "worker",
        cluster=cluster.name,
        image=image,
        user=USER,
        wait_head=wait,
        exec_remove=exec_line([DOCKER, "rm", "-f", name]),
        exec_start=exec_line(node_argv(cluster, head, is_head, service, image, gpus, rdma)),
        exec_stop=exec_line([DOCKER, "stop", "-t", "30", name]),
        start_timeout=cluster.join_timeout + 60,
    )


def ready_argv(head: Cluster, nodes: dict[str, Cluster], gpus: int, timeout: int | None = None) -> list[str]:
    """The readiness check: every node of ``nodes`` (name -> its cluster entry) alive, asked
    of Ray inside the head's container."""
    argv = [
        HOST_PYTHON,
        READY,
        "--container",
        container_name(head),
        "--address",
        head_address(head),
        "--timeout",
        str(timeout if timeout is not None else head.join_timeout),
        "--gpus",
        str(gpus),
    ]
    for name, c in nodes.items():
        argv += ["--node", f"{name}={c.address}"]
    return argv


def render_ready_unit(head: Cluster, nodes: dict[str, Cluster], gpus: int) -> str:
    return templates.get_template("ray-ready.service.j2").render(
        cluster=head.name,
        user=USER,
        head_unit=node_unit_name(head),
        exec_start=exec_line(ready_argv(head, nodes, gpus)),
        start_timeout=head.join_timeout + 60,
    )


def vllm_docker_args(cluster: Cluster, head: Cluster) -> list[str]:
    """What the head's vLLM container adds to join the cluster as Ray's driver: the session
    volume, the head's address and the interconnect."""
    return ["-v", f"{volume_name(cluster)}:{SESSION_DIR}", "-e", f"RAY_ADDRESS={head_address(head)}"] + (
        interconnect_env(cluster)
    )


VLLM_SERVE_ARGS = ["--distributed-executor-backend", "ray"]
