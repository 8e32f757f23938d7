"""
What rigkit renders for a node of a Ray cluster (host data ``cluster``): the node's role
unit (``ray start --head ... --block`` on the head, ``ray start --address HEAD:PORT ...
--block`` on a worker, which first waits for the head's port) and, on the head, the
readiness unit that waits until Ray reports every node. Pure functions of the validated
host data; every value goes through :mod:`rigkit.render.systemd`.
"""

from __future__ import annotations

import posixpath

from rigkit.hostdata.cluster import Cluster
from rigkit.render.systemd import exec_line, templates

USER = "rigkit-ray"
SCRIPT_DIR = "/usr/local/lib/rigkit"
WAIT_HEAD = f"{SCRIPT_DIR}/ray_wait_head.py"
READY = f"{SCRIPT_DIR}/ray_ready.py"


def node_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-{cluster.name}.service"


def ready_unit_name(cluster: Cluster) -> str:
    return f"rigkit-ray-ready-{cluster.name}.service"


def python(cluster: Cluster) -> str:
    """The Python beside the ``ray`` command (its virtualenv's)."""
    return posixpath.join(posixpath.dirname(cluster.ray), "python")


def head_address(head: Cluster) -> str:
    """``HOST:PORT`` of the head (``[v6]:PORT`` for an IPv6 address)."""
    return f"[{head.address}]:{head.ray_port}" if ":" in head.address else f"{head.address}:{head.ray_port}"


def start_argv(cluster: Cluster, head: Cluster, is_head: bool) -> list[str]:
    common = ["--node-ip-address", cluster.address, "--block", "--disable-usage-stats"]
    if is_head:
        return [cluster.ray, "start", "--head", "--port", str(cluster.ray_port), *common]
    return [cluster.ray, "start", "--address", head_address(head), *common]


def render_node_unit(cluster: Cluster, head: Cluster, is_head: bool) -> str:
    """The unit of this node's Ray role; ``head`` is the head node's own cluster entry."""
    wait = None
    if not is_head:
        wait = exec_line([python(cluster), WAIT_HEAD, head.address, str(head.ray_port), str(cluster.join_timeout)])
    return templates.get_template("ray-node.service.j2").render(
        role="head" if is_head else "worker",
        cluster=cluster.name,
        user=USER,
        interconnect=cluster.interconnect,
        wait_head=wait,
        exec_start=exec_line(start_argv(cluster, head, is_head)),
        exec_stop=exec_line([cluster.ray, "stop"]),
        start_timeout=cluster.join_timeout + 60,
    )


def ready_argv(head: Cluster, nodes: dict[str, Cluster], gpus: int, timeout: int | None = None) -> list[str]:
    """The readiness check: every node of ``nodes`` (name -> its cluster entry) alive."""
    argv = [
        python(head),
        READY,
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
