"""``rigkit status`` for a vLLM service across a Ray cluster: the cluster's nodes as Ray on
the head reports them (the services themselves: rigkit.status_containers)."""

from __future__ import annotations

from typing import Any

from rigkit.facts.cluster import RayNodes
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


def cluster_info(rig: Rig, ray: dict | None) -> dict:
    """The host's part of its cluster, with Ray's view of the nodes on the head."""
    assert rig.cluster is not None
    role = {"name": rig.cluster.name, "role": "head" if rig.is_head else "worker", "head": rig.cluster.head}
    return {**role, "ray_port": rig.cluster.ray_port, **(ray or {})}


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
    if info["role"] != "head":
        return [f"  cluster {info['name']}: Ray worker of {info['head']} (the head reports the nodes)"]
    nodes = ", ".join(
        f"{n['name']} " + (f"alive ({n['cpu']:g} CPU, {n['gpu']:g} GPU)" if n["alive"] else "MISSING")
        for n in info.get("nodes", [])
    )
    return [f"  cluster {info['name']}: Ray head :{info['ray_port']}; {nodes or 'Ray not answering'}"]
