"""
A vLLM service across the nodes of a Ray cluster (host data ``cluster``, validated across
the inventory before any host changes): on every node the service's image (built once on
the head and loaded from it by the others, rigkit.cluster_share), proven the same across
the nodes (the same image ID) before anything starts, and a unit
running the node's Ray role in that image; on the head, the readiness unit that the vLLM
unit requires. The vLLM engine (:mod:`rigkit.engines.vllm`) calls :func:`ray_node` for the service
that spans the host's cluster.

Ray authenticates with the cluster's token (generated once on the deploying machine, placed on
every node as a 0400 secret file of Ray's user) where the image's Ray has token
authentication; the head says in one warning line what an older Ray leaves open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from rigkit.facts import per_run
from rigkit.facts.cluster import ImageRayVersion, RayTokens
from rigkit.facts.interconnect import InterconnectHost
from rigkit.facts.secrets import VERSION_SUFFIX
from rigkit.host_paths import key_dir, unit_path
from rigkit.hostdata import Rig, Service
from rigkit.hostdata.cluster import CLUSTER_NAME, Cluster, ClusterMembers, parse_cluster
from rigkit.hostdata.gpus import parse_gpus
from rigkit.operations import cluster as cluster_ops
from rigkit.operations import secrets as secret_ops
from rigkit.operations import users
from rigkit.render import ray as render

SCRIPTS = Path(__file__).resolve().parent / "scripts"
logger = logging.getLogger("pyinfra")


def _run_ops(kind: str, cluster: str) -> list:
    """Every node's operations of ``kind`` for ``cluster`` in this run (pyinfra prepares all
    hosts before running any): the image builds, and what (re)starts the node's Ray. The
    head's vLLM restarts when any node's Ray did: its Ray actors lived there."""
    return per_run.for_run(host.state).setdefault(f"cluster_{kind}_ops", {}).setdefault(cluster, [])


def _members(rig: Rig) -> ClusterMembers:
    """The cluster as rig_for resolved it once for the run (else read from the inventory)."""
    assert rig.cluster is not None
    if rig.members is not None:
        return rig.members
    data = {n: host.inventory.get_host(n).data for n in rig.cluster.nodes}
    return ClusterMembers(
        nodes={n: parse_cluster(n, d.get("cluster")) for n, d in data.items()},
        gpus={n: parse_gpus(n, d.get("gpus")).count for n, d in data.items()},
    )


def nodes_of(rig: Rig) -> dict[str, Cluster]:
    """Every node's cluster entry, head first (the inventory was validated by rig_for)."""
    return dict(_members(rig).nodes)


def cluster_gpus(rig: Rig) -> int:
    return _members(rig).gpu_count


def _any(ops: list) -> Callable[[], bool]:
    # A node that failed earlier never ran its operations: they did not change anything.
    return lambda: any(op.is_complete() and op.did_change() for op in ops)


def _any_or_failed(ops: list) -> Callable[[], bool]:
    """Whether any node's image changed, or did not come (that node failed: the nodes'
    comparison then names it, and no node goes on to change its Ray)."""
    return lambda: any(not op.is_complete() or not op.did_succeed() or op.did_change() for op in ops)


def rdma_devices(rig: Rig) -> tuple[str, ...]:
    """The RDMA devices behind this node's interconnect port (none without an ``interconnect``;
    the port found as the interconnect operation finds it, before any rename)."""
    if rig.interconnect is None:
        return ()
    links = host.get_fact(InterconnectHost)["links"]
    for port in links:
        if (
            (rig.interconnect.pci and port.get("pci") == rig.interconnect.pci)
            or (rig.interconnect.mac and port.get("mac") == rig.interconnect.mac)
            or (not rig.interconnect.pci and not rig.interconnect.mac and port["name"] == rig.interconnect.interface)
        ):
            return tuple(port.get("rdma") or ())
    return ()


def ray_token(cluster: Cluster) -> bytes:
    """The cluster's Ray token: generated once on this machine, the same for every node."""
    return secret_ops.generated_secret(f"ray-token-{cluster.name}")


def remove_undeclared_tokens(rig: Rig) -> None:
    """The Ray tokens of clusters this host is no longer a node of (gone from its host data)
    removed, with their version markers; the declared cluster's stays. Only names a cluster
    could have are touched."""
    keep = f"{rig.cluster.name}.token" if rig.cluster is not None else None
    for name in host.get_fact(RayTokens, directory=key_dir("ray")):
        if name == keep or not CLUSTER_NAME.fullmatch(name.removesuffix(".token")):
            continue
        path = f"{key_dir('ray')}/{name}"
        files.file(name=f"Remove the Ray token {path} (its cluster is not declared here)", path=path, present=False)
        files.file(name=f"Remove {path}{VERSION_SUFFIX}", path=path + VERSION_SUFFIX, present=False)


def warn_unauthenticated(rig: Rig, image: str, built: Callable[[], bool]) -> None:
    """On the head: one warning line where the image's Ray has no token authentication,
    read from an image already here now, else after this run builds it."""
    mine = rig.cluster
    assert mine is not None
    if not rig.is_head:
        return
    found = host.get_fact(ImageRayVersion, image=image)
    if found is None:
        cluster_ops.ray_auth_checked(
            name=f"Ray token authentication in {image}",
            image=image,
            warning_of=lambda version: render.exposure_warning(mine, image, version),
            _if=built,
        )
        return
    warning = render.exposure_warning(mine, image, found["ray"])
    if warning:
        logger.warning(f"host {rig.host}: {warning}")


def ray_node(rig: Rig, service: Service, image: str, image_op) -> Callable[[], bool]:
    """This node's part of ``service``'s cluster; returns whether any node's Ray (re)started
    in this run (evaluated when the operations run)."""
    mine = rig.cluster
    assert mine is not None
    nodes = nodes_of(rig)
    head = nodes[mine.head]
    image_ops = _run_ops("image", mine.name)
    image_ops.append(image_op)
    ray_ops = _run_ops("ray", mine.name)

    built = _any_or_failed(image_ops)
    cluster_ops.record_image(name=f"ID of {image} on this node", cluster=mine.name, image=image, _if=built)
    cluster_ops.same_image(
        name=f"Same image on every node of cluster {mine.name}",
        cluster=mine.name,
        image=image,
        nodes=list(nodes),
        _if=built,
    )
    warn_unauthenticated(rig, image, built)
    users.system_user(name=f"System user {render.USER}", user=render.USER, home=f"/var/lib/{render.USER}")
    # Placed whatever the image's Ray: an older one ignores it, a newer one refuses to start without.
    token = secret_ops.secret_file(
        name=f"Ray token of cluster {mine.name} (0400, {render.USER} only)",
        src=ray_token(mine),
        dest=render.token_path(mine),
        user=render.USER,
        group=render.USER,
        mode="400",
    )
    scripts = [
        files.put(
            name=f"Script {script}",
            src=str(SCRIPTS / Path(script).name),
            dest=script,
            mode="755",
            create_remote_dir=True,
        )
        for script in ((render.READY,) if rig.is_head else (render.WAIT_HEAD,))
    ]
    unit = render.node_unit_name(mine)
    node_unit = files.put(
        name=f"Unit {unit}",
        src=StringIO(
            render.render_node_unit(mine, head, rig.is_head, service, image, rig.gpus.count, rdma_devices(rig))
        ),
        dest=unit_path(unit),
        mode="644",
    )
    changed = [*scripts, node_unit]
    if rig.is_head:
        changed.append(
            files.put(
                name=f"Unit {render.ready_unit_name(mine)}",
                src=StringIO(render.render_ready_unit(head, nodes, cluster_gpus(rig))),
                dest=unit_path(render.ready_unit_name(mine)),
                mode="644",
            )
        )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*changed))
    start = systemd.service(name=f"Start {unit}", service=unit, running=True, enabled=True)
    restart = systemd.service(
        name=f"Restart {unit}",
        service=unit,
        restarted=True,
        # Only for its own unit, image or token: a new readiness check or script restarts nothing.
        _if=[any_changed(node_unit, image_op, token), lambda: not start.did_change()],
    )
    ray_ops += [start, restart]
    ray_changed = _any(ray_ops)
    if rig.is_head:
        # Workers (re)join in the operations above on their hosts; this waits for every node.
        systemd.service(
            name=f"Ray cluster {mine.name}: every node joined",
            service=render.ready_unit_name(mine),
            restarted=True,
            _if=ray_changed,
        )
    return ray_changed
