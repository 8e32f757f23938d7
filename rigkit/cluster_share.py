"""
One download and one build for a whole Ray cluster: the head fetches the cluster's Hub
models (from the Hub or ``hf_endpoint``, as any host does) and builds the service's image;
the other nodes take both from the head over the interconnect. The head serves them with a
transient unit bound to its interconnect address only (``cluster.share_port``), started
once it holds them and stopped once the nodes took them:

* the models by rigkit's mirror (rigkit.models.mirror, beside the fetch script), each node
  fetching with the fetch script and verifying every file against the lock, as from the Hub;
* the image by ``image_share.py``: ``docker save`` on the head streamed into ``docker load``
  on the node, skipped where the node holds that image ID; the image's ID is then compared
  across the nodes (rigkit.operations.cluster) before any Ray unit changes.

pyinfra runs each operation on every host before the next, ordered by what every host runs:
each node calls the same start and stop operations (a no-op where it has nothing to do), so
the head's start runs after its own fetch or build and before any node takes from it, and
its stop after every node did.
"""

from __future__ import annotations

import dataclasses
import posixpath
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

from pyinfra import host

from rigkit.facts import per_run
from rigkit.facts.cluster import ImageBase
from rigkit.facts.models import ShardsVerified
from rigkit.hostdata import HubModel, Rig
from rigkit.hostdata.cluster import Cluster
from rigkit.operations import cluster_share as share_ops
from rigkit.operations import images as image_ops
from rigkit.operations import models as model_ops
from rigkit.operations import rendered
from rigkit.render.containers import ImageIdentity
from rigkit.scripts.fetch_shards import STATE_NAME

MIRROR_SCRIPT = posixpath.join(model_ops.REMOTE_DIR, "model_mirror.py")


def share_unit(cluster: Cluster) -> str:
    return f"rigkit-share-{cluster.name}.service"


def links_dir(cluster: Cluster) -> str:
    """Where the head links its models' directories in the mirror's layout (``<org>/<name>``)."""
    return f"/run/rigkit/share-{cluster.name}"


def share_url(head: Cluster) -> str:
    address = f"[{head.address}]" if ":" in head.address else head.address
    return f"http://{address}:{head.share_port}"


def _rig(name: str) -> Rig:
    """Another node's validated rig (as rig_for made it), once per run."""
    from rigkit.hostdata import rig_for

    known = per_run.for_run(host.state).setdefault("cluster_share_rigs", {})
    if name not in known:
        known[name] = rig_for(host.inventory.get_host(name))
    return known[name]


def _same(one: Rig, model: HubModel, other: Rig) -> bool:
    """Whether ``other`` declares ``model`` alike: the same files (lock) in the same place."""
    return any(
        m.ref.key == model.ref.key and m.dest == model.dest and other.lock_for(m).sha == one.lock_for(model).sha
        for m in other.hub_models
    )


def _head(rig: Rig) -> Cluster:
    assert rig.members is not None and rig.cluster is not None
    return rig.members.nodes[rig.cluster.head]


def _workers(rig: Rig) -> list[str]:
    assert rig.cluster is not None
    return [n for n in rig.cluster.nodes if n != rig.cluster.head]


def from_head(rig: Rig, model: HubModel) -> bool:
    """Whether this node takes ``model`` from its cluster's head (which declares it alike)."""
    if rig.cluster is None or rig.is_head or rig.members is None:
        return False
    return _same(rig, model, _rig(rig.cluster.head))


def _served(rig: Rig) -> list[HubModel]:
    """On the head: its models that another node takes from it; on a node: those it takes."""
    if rig.cluster is None or rig.members is None:
        return []
    if not rig.is_head:
        return [m for m in rig.hub_models if from_head(rig, m)]
    return [m for m in rig.hub_models if any(_same(rig, m, _rig(w)) for w in _workers(rig))]


def _verified(node: Any, rig: Rig, model: HubModel) -> bool:
    locked = rig.lock_for(model)
    wanted = [(posixpath.join(model.dest, f.path), f.size, f.sha256) for f in locked.files]
    status = node.get_fact(ShardsVerified, state_file=posixpath.join(model.dest, STATE_NAME), files=wanted)
    return bool(status) and all(status.get(d) == "verified" for d, _, _ in wanted)


def models_from_head(rig: Rig) -> list:
    """The head's mirror started for the other nodes, their fetches from it, the mirror
    stopped. Returns the operations that placed this node's files (none on the head, whose
    own fetches are the models step's)."""
    served = _served(rig)
    if not served:
        return []
    assert rig.cluster is not None
    head = _head(rig)
    unit, root = share_unit(rig.cluster), links_dir(rig.cluster)
    needed = False
    if rig.is_head:
        needed = any(
            not _verified(host.inventory.get_host(w), _rig(w), m)
            for w in _workers(rig)
            for m in served
            if _same(rig, m, _rig(w))
        )
        rendered.put(
            name="Install rigkit's model mirror (the cluster's nodes fetch from the head)",
            content=Path(str(package_files("rigkit") / "models" / "mirror.py")),
            dest=MIRROR_SCRIPT,
            mode="755",
        )
    start = share_ops.serving(
        name=f"Serve the model files of cluster {rig.cluster.name} to its nodes ({share_url(head)}, interconnect)",
        unit=unit,
        argv=[
            "python3",
            MIRROR_SCRIPT,
            "serve",
            root,
            "--host",
            head.address,
            "--port",
            str(head.share_port),
        ],
        links={f"{root}/{m.repo}": m.dest for m in served},
        needed=needed,
        why_not=(
            "every node holds the cluster's model files" if rig.is_head else f"the head {rig.cluster.head} serves them"
        ),
    )
    placed = []
    for model in [] if rig.is_head else served:
        locked = rig.lock_for(model)
        placed.append(
            model_ops.shards(
                name=f"Model {model.name or model.repo} ({model.repo}@{locked.sha[:12]}, {len(locked.files)} file(s)) "
                f"in {model.dest}, from the head {rig.cluster.head}",
                ref=dataclasses.replace(model.ref, endpoint=share_url(head)),
                lock_entry=locked,
                use_token=False,
            )
        )
    share_ops.stopped(
        name=f"Stop serving the model files of cluster {rig.cluster.name}",
        unit=unit,
        links_dir=root,
        _if=start.did_change,
    )
    return placed


def image_from_head(rig: Rig, identity: ImageIdentity, title: str, build: list[str]) -> Any:
    """The service's image: built on the head, served to the other nodes, loaded there (the
    head's image ID); returns this node's operation (the build, or the load)."""
    assert rig.cluster is not None
    head, tag = _head(rig), identity.tag
    unit = share_unit(rig.cluster)
    on_head = per_run.read(host.inventory.get_host(rig.cluster.head), ImageBase, image=tag)

    def holds(node: str) -> bool:
        found = per_run.read(host.inventory.get_host(node), ImageBase, image=tag)
        return on_head is not None and found is not None and found["id"] == on_head["id"]

    op = None
    if rig.is_head:
        op = image_ops.image(name=title, identity=identity, build=build)
    start = share_ops.serving(
        name=f"Serve {tag} to the nodes of cluster {rig.cluster.name} ({share_url(head)}, interconnect)",
        unit=unit,
        argv=[
            "python3",
            share_ops.IMAGE_SHARE_TOOL,
            "serve",
            "--address",
            head.address,
            "--port",
            str(head.share_port),
            "--image",
            tag,
        ],
        needed=rig.is_head and not all(holds(w) for w in _workers(rig)),
        why_not=f"every node holds {tag}" if rig.is_head else f"the head {rig.cluster.head} serves it",
    )
    if not rig.is_head:
        op = share_ops.image_loaded(
            name=f"Image {tag} from the head {rig.cluster.head} (the same image ID)",
            image=tag,
            url=share_url(head),
            held=holds(rig.host),
        )
    share_ops.stopped(name=f"Stop serving {tag} to cluster {rig.cluster.name}", unit=unit, _if=start.did_change)
    return op
