"""
What rigkit renders for a node of a Ray cluster (host data ``cluster``) that a vLLM service
spans: the node's role unit, running Ray in the service's image (``ray start --head ...
--block`` on the head; on a worker, once the head answers, ``ray start --address HEAD:PORT
... --block``), the head's readiness unit that waits until Ray reports every node, and what
the head's vLLM container needs to join the cluster. Pure functions of the validated host
data; every value goes through :mod:`rigkit.render.systemd`.

Ray's token authentication (Ray 2.52 and newer): every Ray process and the vLLM driver run
with ``RAY_AUTH_MODE=token`` and read the cluster's token from the file
``RAY_AUTH_TOKEN_PATH`` names (the host's 0400 token file, mounted read-only), so the units,
argv and ``docker inspect`` carry the token's path, never its value. An older Ray ignores
both variables: its ports are open to anyone on the interconnect, which the deploy says.
"""

from __future__ import annotations

import re

from rigkit import host_paths
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
#: Where the containers read the cluster's Ray token (mounted read-only from token_path).
CONTAINER_TOKEN = "/run/rigkit/ray-auth-token"
#: The first Ray with token authentication (RAY_AUTH_MODE=token).
TOKEN_AUTH_SINCE = (2, 52)
_RELEASE = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})(?:\.[0-9]{1,4})?(?:[.+-]?[A-Za-z0-9.+-]{0,32})?", re.ASCII)


def node_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}.service"


def ready_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-ready-{cluster.name}.service"


def container_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}"


def volume_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}"


def token_path(cluster: Cluster) -> str:
    """The cluster's Ray token on every node (0400, owned by :data:`USER`)."""
    return f"{host_paths.key_dir('ray')}/{cluster.name}.token"


def token_auth_args(cluster: Cluster) -> list[str]:
    """What every container of the cluster adds for Ray's token authentication: the token file
    read-only, the mode, and the path Ray reads the token from (no value in any argv)."""
    return [
        "-v",
        f"{token_path(cluster)}:{CONTAINER_TOKEN}:ro",
        "-e",
        "RAY_AUTH_MODE=token",
        "-e",
        f"RAY_AUTH_TOKEN_PATH={CONTAINER_TOKEN}",
    ]


def supports_token_auth(version: str | None) -> bool:
    """Whether Ray ``version`` (``ray.__version__`` as the image's Ray reports it) enforces
    ``RAY_AUTH_MODE=token``; anything unreadable counts as an older Ray."""
    found = _RELEASE.fullmatch(version or "")
    return found is not None and (int(found.group(1)), int(found.group(2))) >= TOKEN_AUTH_SINCE


def exposure_warning(cluster: Cluster, image: str, version: str | None) -> str | None:
    """The deploy's one warning line where the image's Ray cannot authenticate (None where it can)."""
    if supports_token_auth(version):
        return None
    # The image's own words: shown only when they read as a version.
    found = f"Ray {version}" if version and _RELEASE.fullmatch(version) else "no readable Ray version"
    since = ".".join(map(str, TOKEN_AUTH_SINCE))
    return (
        f"cluster {cluster.name}: {image} has {found}, without token authentication (Ray {since}+): "
        f"Ray's ports (GCS :{cluster.ray_port}, every node's raylet and workers) take any client "
        f"that reaches the nodes, over the interconnect {cluster.interconnect} included"
    )


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
    argv += interconnect_env(cluster, rdma) + token_auth_args(cluster) + ["-e", "HF_HUB_OFFLINE=1"]
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
    volume, the head's address, the interconnect and the cluster's token (vLLM's ``ray.init``
    reads it as ``ray start`` does)."""
    return ["-v", f"{volume_name(cluster)}:{SESSION_DIR}", "-e", f"RAY_ADDRESS={head_address(head)}"] + (
        interconnect_env(cluster) + token_auth_args(cluster)
    )


VLLM_SERVE_ARGS = ["--distributed-executor-backend", "ray"]
