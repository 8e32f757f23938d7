"""``rigkit status`` for a vLLM service across a Ray cluster: the cluster's nodes as Ray on
the head reports them, and on every node whether its Ray authenticates (the services
themselves: rigkit.status_containers)."""

from __future__ import annotations

from typing import Any

from rigkit.facts.cluster import RayAuth, RayNodes
from rigkit.hostdata import Rig
from rigkit.render import ray as render_ray


def cluster_facts(hosts: list[Any], rigs: dict[str, Rig]) -> dict[str, dict]:
    """Per cluster head (pyinfra hosts, connected): Ray's view of the cluster's nodes."""
    out = {}
    for host in hosts:
        rig = rigs[host.name]
        if rig.cluster is None or not rig.is_head:
            continue
        nodes = {n: c for n in rig.cluster.nodes if (c := rigs[n].cluster) is not None}
        gpus = sum(rigs[n].gpus.count for n in nodes)
        argv = render_ray.ready_argv(rig.cluster, nodes, gpus)
        out[host.name] = host.get_fact(RayNodes, ready_argv=argv)
    return out


def auth_facts(hosts: list[Any], rigs: dict[str, Rig]) -> dict[str, dict]:
    """Per cluster node (pyinfra hosts, connected): its Ray's authentication, as it runs."""
    return {
        host.name: host.get_fact(
            RayAuth,
            container=render_ray.container_name(cluster),
            token_file=render_ray.token_path(cluster),
        )
        for host in hosts
        if (cluster := rigs[host.name].cluster) is not None
    }


def cluster_info(rig: Rig, ray: dict | None, auth: dict | None = None) -> dict:
    """The host's part of its cluster, with Ray's view of the nodes on the head, and whether
    its Ray authenticates."""
    assert rig.cluster is not None
    role = {"name": rig.cluster.name, "role": "head" if rig.is_head else "worker", "head": rig.cluster.head}
    return {**role, "ray_port": rig.cluster.ray_port, **(ray or {}), **({"auth": auth} if auth else {})}


def auth_line(name: str, auth: dict | None) -> list[str]:
    """Whether the node's running Ray authenticates: token mode in its environment, a Ray
    that has it (2.52+), the token file on the node (never the token)."""
    if auth is None:
        return []
    if not auth["running"]:
        return [f"  cluster {name}: Ray authentication unknown (no Ray container running)"]
    if auth["mode"] != "token":
        return [f"  cluster {name}: Ray authentication OFF (no RAY_AUTH_MODE=token): Ray takes any client"]
    if not render_ray.supports_token_auth(auth["ray"]):
        return [f"  cluster {name}: Ray authentication OFF: Ray {auth['ray'] or '(unreadable)'} ignores RAY_AUTH_MODE"]
    where = "token file present" if auth["token_file"] else "TOKEN FILE MISSING"
    return [f"  cluster {name}: Ray authentication on (token mode, Ray {auth['ray']}; {where})"]


def cluster_drift(info: dict) -> list[str]:
    if info["role"] != "head":
        return []
    if not info.get("reachable"):
        return [f"cluster {info['name']}: Ray on the head does not answer ({info.get('error') or 'unknown'})"]
    return [
        f"cluster {info['name']}: node {n['name']} ({n['address']}) is not in the Ray cluster"
        for n in info.get("nodes", [])
        if not n["alive"]
    ]


def cluster_lines(info: dict | None) -> list[str]:
    if not info:
        return []
    auth = auth_line(info["name"], info.get("auth"))
    if info["role"] != "head":
        return [f"  cluster {info['name']}: Ray worker of {info['head']} (the head reports the nodes)", *auth]
    nodes = ", ".join(
        f"{n['name']} " + (f"alive ({n['cpu']:g} CPU, {n['gpu']:g} GPU)" if n["alive"] else "MISSING")
        for n in info.get("nodes", [])
    )
    return [f"  cluster {info['name']}: Ray head :{info['ray_port']}; {nodes or 'Ray not answering'}", *auth]
