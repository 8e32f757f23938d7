"""
The vLLM step of a deploy: per ``engine: "vllm"`` service its image (built on the host from
a pinned base and rigkit's patches, once per content hash), its key, its hardened unit
running the container, restarts only for a changed image, model, flags or key, and the
verification that rolls back to the previous image. ``deploys/rig.py`` and
``deploys/spark.py`` call :func:`vllm_services`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from rigkit.cluster import cluster_gpus, nodes_of, ray_node
from rigkit.facts.services import ManagedServices
from rigkit.hostdata import Rig
from rigkit.operations import services as service_ops
from rigkit.operations import vllm as vllm_ops
from rigkit.render import ray as render_ray
from rigkit.render import vllm as render
from rigkit.render.vllm import ImageIdentity
from rigkit.service_identity import user_and_key

logger = logging.getLogger("pyinfra")


def _not_changed(op: Any) -> bool:
    return not op.did_change()


def spanned(rig: Rig, svc: Any) -> tuple[Any, list[str] | None]:
    """The cluster the service spans (and this host heads) and its readiness check's argv,
    or Nones."""
    if not (svc.options.cluster and rig.is_head) or rig.cluster is None:
        return None, None
    return rig.cluster, render_ray.ready_argv(rig.cluster, nodes_of(rig), cluster_gpus(rig))


def _either(first: Callable[[], bool], second: Callable[[], bool] | None) -> bool:
    return first() or (second is not None and second())


@deploy("Serve vLLM")
def vllm_services(rig: Rig, models: Sequence[Any] = ()):
    """Images, users, keys and units of the host's vLLM services, restarts, verification.
    ``models``: the operations that placed model files (a changed model restarts too)."""
    services = rig.engine_services("vllm")
    for svc in services:
        if svc.enabled and svc.public and not svc.api_key_file:
            logger.warning(
                f"host {rig.host}: service {svc.name} listens on {svc.host}:{svc.port} WITHOUT "
                "an API key (allow_unauthenticated: true): /v1/* is open to the network"
            )
    vllm_ops.tool(name="Install rigkit's vLLM host tool")
    on_host = host.get_fact(ManagedServices)
    declared = {svc.name for svc in rig.services if rig.serves(svc)}
    for name, unit in sorted(on_host["units"].items()):
        if name not in declared and unit.startswith("rigkit-vllm-"):
            service_ops.removed(
                name=f"Remove {unit} (no longer in the inventory)", unit=unit, user=f"vllm-{name}", key_file=None
            )
            files.file(name=f"Remove the API key of {name}", path=f"{render.KEY_DIR}/{name}.key", present=False)
    images: dict[str, str] = {}
    restart_on: dict[str, list] = {}
    ray_restarted: Callable[[], bool] = lambda: False  # noqa: E731
    for svc in services:
        identity = ImageIdentity.of(svc.options)  # type: ignore[arg-type]
        images[svc.name] = identity.tag
        restart_on[svc.name] = []
        if svc.enabled:
            image = vllm_ops.image(
                name=f"Image {identity.tag} for {svc.name} (FROM {identity.base}, patches: "
                f"{', '.join(identity.patches) or 'none'})",
                identity=identity,
            )
            if svc.options.cluster:  # type: ignore[attr-defined]
                ray_restarted = ray_node(rig, svc, identity.tag, image)
        if not rig.serves(svc):
            continue  # a cluster's other node: Ray in the image, the head serves
        restart_on[svc.name] += user_and_key(rig, svc, render.key_path(svc))
        restart_on[svc.name].append(
            files.put(
                name=f"Unit {svc.unit}",
                src=StringIO(render.render_unit(svc, identity.tag, rig.gpus.count, *spanned(rig, svc))),
                dest=f"/etc/systemd/system/{svc.unit}",
                mode="644",
            )
        )
    services = tuple(svc for svc in services if rig.serves(svc))
    files.put(
        name="vLLM services manifest for verification",
        src=StringIO(render.services_manifest(rig, images)),
        dest=render.MANIFEST,
        mode="600",
        create_remote_dir=True,
    )
    units = [ops[-1] for ops in restart_on.values() if ops]  # a cluster's other node has none
    if units:
        systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*units))
    started = []
    for svc in services:
        own = any_changed(*models, *restart_on[svc.name])
        changed = partial(_either, own, ray_restarted if svc.options.cluster else None)  # type: ignore[attr-defined]
        if svc.enabled and svc.options.mtp:  # type: ignore[attr-defined]
            # Before the service (re)starts on a new model or flags: MTP needs its weights.
            vllm_ops.mtp_check(name=f"MTP weights of {svc.name} in {svc.model}", model=svc.model, _if=changed)
        systemd.service(
            name=f"{'Enable' if svc.enabled else 'Disable'} {svc.unit}",
            service=svc.unit,
            running=None,
            enabled=svc.enabled,
        )
        start = systemd.service(
            name=f"{'Start' if svc.enabled else 'Stop'} {svc.unit}", service=svc.unit, running=svc.enabled
        )
        if svc.enabled:
            started.append((svc, start))
            systemd.service(
                name=f"Restart {svc.unit}",
                service=svc.unit,
                restarted=True,
                _if=[changed, partial(_not_changed, start)],
            )
    if started:
        # Across a cluster the previous image would meet Ray on the new one on every node:
        # a failed check there fails the run and leaves the new state, no rollback.
        vllm_ops.verify(
            name="Verify vLLM services (ready, /v1/models, chat, tool-call replay)",
            rollback=not any(svc.options.cluster for svc, _ in started),  # type: ignore[attr-defined]
            _if=partial(
                _either,
                any_changed(*models, *(op for svc, start in started for op in (*restart_on[svc.name], start))),
                ray_restarted,
            ),
        )
