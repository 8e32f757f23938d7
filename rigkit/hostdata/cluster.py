"""
Host data ``cluster``: a Ray cluster that a vLLM service spans across machines. Every node
of the cluster carries the same ``cluster`` entry, plus its own ``interconnect`` (the
interface NCCL, Gloo and Ray use between the nodes) and ``address`` (this node's address
on that interface)::

    "cluster": {"name": "qwen122b", "nodes": ["spark-1", "spark-2"], "ray_port": 6379, "share_port": 8470,
                "tensor_parallel": 2, "pipeline_parallel": 1,
                "interconnect": "enp1s0f0np0", "address": "192.168.100.11"}

``nodes`` are inventory host names; the first is the head (where Ray's GCS and the API
listen). ``tensor_parallel`` x ``pipeline_parallel`` must equal the GPUs the nodes bring
(``gpus.count`` summed over the nodes); both absent is for nodes without GPUs (the sandbox).
:func:`validate_cluster` checks all of it across hosts, before any host changes.

What runs on the cluster is a vLLM service that names it (``"cluster": "qwen122b"`` among its
options, the same service declared on every node): Ray runs in that service's image on every
node, and the head serves the model (:mod:`rigkit.cluster`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rigkit.hostdata.gpus import parse_gpus
from rigkit.hostdata.schema import HostDataError, build, check_address, check_pattern

CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}", re.ASCII)
# An inventory host name: a DNS name or an address, nothing a shell or a unit would read.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}", re.ASCII)
# A Linux interface name (IFNAMSIZ 16 with the NUL): what NCCL_SOCKET_IFNAME takes.
INTERFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}", re.ASCII)
ADDRESS = re.compile(r"[0-9A-Fa-f.:]{2,39}", re.ASCII)


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[str, ...]
    interconnect: str
    address: str
    ray_port: int = 6379
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    # How long a worker waits for the head's port, and the head for every node, in seconds.
    join_timeout: int = 300
    # Where the head serves the cluster's model files and image to the other nodes, on its
    # interconnect address only, for the deploy's duration (rigkit.cluster_share).
    share_port: int = 8470

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def parallel(self) -> tuple[int, int] | None:
        """(tensor, pipeline) parallel sizes, when declared."""
        if self.tensor_parallel is None or self.pipeline_parallel is None:
            return None
        return self.tensor_parallel, self.pipeline_parallel

    def shared(self) -> tuple:
        """What every node must declare alike."""
        return (self.name, self.nodes, self.ray_port, self.share_port, self.tensor_parallel, self.pipeline_parallel)


@dataclass(frozen=True)
class ClusterMembers:
    """A cluster across its nodes, resolved once per run from the validated inventory: each
    node's own entry (its address on the interconnect), head first, and the GPUs it brings."""

    nodes: Mapping[str, Cluster]
    gpus: Mapping[str, int]

    @property
    def head(self) -> Cluster:
        return next(iter(self.nodes.values()))

    @property
    def addresses(self) -> dict[str, str]:
        return {n: c.address for n, c in self.nodes.items()}

    @property
    def gpu_count(self) -> int:
        return sum(self.gpus.values())


def members(hosts_data: Mapping[str, Mapping[str, Any]], cluster: Cluster) -> ClusterMembers:
    """``cluster``'s nodes from the inventory's host data (validated: :func:`validate_cluster`)."""
    return ClusterMembers(
        nodes={n: parse_cluster(n, hosts_data[n]["cluster"]) for n in cluster.nodes},
        gpus={n: parse_gpus(n, hosts_data[n].get("gpus")).count for n in cluster.nodes},
    )


def parse_cluster(host: str, raw: Any) -> Cluster:
    """One host's ``cluster`` entry, checked on its own (see :func:`validate_cluster`)."""
    c = build(Cluster, raw, host, "cluster")
    check_pattern(c.name, CLUSTER_NAME, host, "cluster.name", "a cluster name: lower-case letters, digits and '-'")
    if not c.nodes:
        raise HostDataError(host, "cluster.nodes", "the inventory hosts the cluster spans, head first", [])
    for i, node in enumerate(c.nodes):
        check_pattern(node, NODE_NAME, host, f"cluster.nodes[{i}]", "an inventory host name")
    dupes = sorted({n for n in c.nodes if c.nodes.count(n) > 1})
    if dupes:
        raise HostDataError(host, "cluster.nodes", "each host once", dupes[0])
    if host not in c.nodes:
        raise HostDataError(host, "cluster.nodes", f"a list that names this host ({host})", list(c.nodes))
    check_pattern(
        c.interconnect,
        INTERFACE,
        host,
        "cluster.interconnect",
        "a network interface name (1-15 of letters, digits, _ . : -)",
    )
    if c.interconnect in (".", ".."):
        raise HostDataError(host, "cluster.interconnect", "a network interface name", c.interconnect)
    check_pattern(c.address, ADDRESS, host, "cluster.address", "this node's IP address on the interconnect")
    address = check_address(c.address, host, "cluster.address", "this node's IP address on the interconnect")
    ip = ipaddress.ip_address(address)
    c = dataclasses.replace(c, address=address)
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback and len(c.nodes) > 1:
        raise HostDataError(host, "cluster.address", "an address the other nodes can reach", c.address)
    if not 1024 <= c.ray_port <= 65535:
        raise HostDataError(host, "cluster.ray_port", "a port from 1024 to 65535", c.ray_port)
    if not 1024 <= c.share_port <= 65535 or c.share_port == c.ray_port:
        raise HostDataError(host, "cluster.share_port", "a port from 1024 to 65535, not ray_port", c.share_port)
    if (c.tensor_parallel is None) != (c.pipeline_parallel is None):
        raise HostDataError(host, "cluster", "tensor_parallel and pipeline_parallel together, or neither")
    for key in ("tensor_parallel", "pipeline_parallel"):
        value = getattr(c, key)
        if value is not None and value < 1:
            raise HostDataError(host, f"cluster.{key}", "1 or more", value)
    if not 10 <= c.join_timeout <= 3600:
        raise HostDataError(host, "cluster.join_timeout", "10 to 3600 seconds", c.join_timeout)
    return c


def validate_cluster(hosts_data: Mapping[str, Mapping[str, Any]]) -> None:
    """Every host's ``cluster`` entry checked, then the clusters across hosts: every node
    exists in the inventory and declares the same cluster, no address is used twice, and
    tensor x pipeline parallel equals the GPUs the nodes bring. Raises :class:`HostDataError`
    naming the host and key; changes nothing."""
    clusters = {
        host: parse_cluster(host, data["cluster"])
        for host, data in hosts_data.items()
        if isinstance(data, dict) and data.get("cluster") is not None
    }
    for host, c in clusters.items():
        for i, node in enumerate(c.nodes):
            if node not in hosts_data:
                raise HostDataError(host, f"cluster.nodes[{i}]", "a host of this inventory", node)
            other = clusters.get(node)
            if other is None:
                raise HostDataError(node, "cluster", f"the cluster {c.name!r} that {host} names this host in")
            if other.shared() != c.shared():
                raise HostDataError(
                    node,
                    "cluster",
                    f"the same name, nodes, ray_port, share_port and parallel sizes as {host} ({c.name}, {list(c.nodes)})",
                    f"{other.name}, {list(other.nodes)}",
                )
        addresses = [clusters[n].address for n in c.nodes]
        for node in c.nodes:
            if addresses.count(clusters[node].address) > 1:
                raise HostDataError(
                    node, "cluster.address", "an address no other node of the cluster has", clusters[node].address
                )
        gpus: dict[str, int] = {n: parse_gpus(n, hosts_data[n].get("gpus")).count for n in c.nodes}
        total = sum(gpus.values())
        if c.parallel is None and total > 0:
            raise HostDataError(
                host, "cluster", f"tensor_parallel and pipeline_parallel (the nodes bring {total} GPUs)"
            )
        if c.tensor_parallel is not None and c.pipeline_parallel is not None:
            wanted = c.tensor_parallel * c.pipeline_parallel
            if wanted != sum(gpus.values()):
                brought = ", ".join(f"{n}: {g}" for n, g in gpus.items())
                raise HostDataError(
                    host,
                    "cluster",
                    f"tensor_parallel x pipeline_parallel ({c.tensor_parallel} x {c.pipeline_parallel} = {wanted}) "
                    f"equal to the GPUs the nodes bring ({sum(gpus.values())}: {brought})",
                )
