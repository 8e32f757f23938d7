"""
vLLM on the deploy side: a container engine (rigkit.engines.containers) whose image carries
rigkit's patches, whose service may span a Ray cluster (rigkit.cluster: Ray in the image on
every node, vLLM as Ray's driver on the head), and whose MTP weights are checked before a
start on new inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rigkit.cluster import cluster_gpus, nodes_of, ray_node
from rigkit.cluster_share import image_from_head
from rigkit.engines.base import Prepared
from rigkit.engines.containers import ContainerEngine
from rigkit.facts.vllm import VLLM_TOOL
from rigkit.hostdata import Rig, Service
from rigkit.hostdata.cluster import Cluster
from rigkit.hostdata.vllm import options_of
from rigkit.operations import vllm as vllm_ops
from rigkit.render import ray as render_ray
from rigkit.render import vllm as render
from rigkit.render.containers import ImageIdentity


def spanned(rig: Rig, svc: Service) -> tuple[Cluster | None, list[str] | None]:
    """The cluster the service spans (and this host heads) and its readiness check's argv,
    or Nones."""
    if not (options_of(svc).cluster and rig.is_head) or rig.cluster is None:
        return None, None
    return rig.cluster, render_ray.ready_argv(rig.cluster, nodes_of(rig), cluster_gpus(rig))


class VllmEngine(ContainerEngine):
    name = "vllm"
    title = "vLLM"
    prefix = "vllm"
    manifest_title = "vLLM services manifest for verification"
    verify_title = "Verify vLLM services (ready, /v1/models, chat, tool-call replay)"
    tool = VLLM_TOOL
    tool_scripts = ("vllm_host.py", "image_share.py")
    repository = render.IMAGE_REPO

    def identity(self, svc: Service) -> ImageIdentity:
        return render.image_identity(options_of(svc))

    def build_command(self, identity: ImageIdentity) -> list[str]:
        return ["python3", self.tool, "build", "--patches", ",".join(render.patches_of(identity))]

    def selfcheck_line(self, report: dict) -> str | None:
        """The image's vLLM version and each patch's state (files/vllm/rigkit_vllm_patches/selfcheck.py)."""
        if not report.get("vllm"):
            return None
        states = report.get("patch_states") or {}
        patches = ", ".join(
            f"{name} {info.get('state', '?')} ({info.get('import', '?')})"
            for name, info in sorted(states.items())
            if isinstance(info, dict)
        )
        return f"vLLM {report['vllm']}; patches: {patches or 'none'}"

    def image_title(self, svc: Service, identity: ImageIdentity) -> str:
        patches = ", ".join(render.patches_of(identity)) or "none"
        return f"Image {identity.tag} for {svc.name} (FROM {identity.base}, patches: {patches})"

    def keep_images(self, svc: Service) -> int:
        return options_of(svc).keep_images

    def image(self, rig: Rig, svc: Service, identity: ImageIdentity):
        if options_of(svc).cluster and rig.cluster is not None:
            # Built once, on the head; the other nodes load that exact image from it.
            return image_from_head(rig, identity, self.image_title(svc, identity), self.build_command(identity))
        return super().image(rig, svc, identity)

    def more(self, rig: Rig, svc: Service, identity: ImageIdentity, image, prepared: Prepared) -> None:
        if options_of(svc).cluster:
            # The head's vLLM restarts when any node's Ray did: its Ray actors lived there.
            prepared.also[svc.name] = ray_node(rig, svc, identity.tag, image)

    def unit(self, rig: Rig, svc: Service, prepared: Prepared) -> str:
        tag = prepared.context["images"][svc.name]
        return render.render_unit(svc, tag, rig.gpus.count, *spanned(rig, svc))

    def manifest_content(self, rig: Rig, services: Sequence[Service], prepared: Prepared) -> str:
        return render.services_manifest(rig, prepared.context["images"])

    def before_start(self, rig: Rig, svc: Service, changed: Callable[[], bool]) -> None:
        if options_of(svc).mtp:
            # Before the service (re)starts on a new model or flags: MTP needs its weights.
            vllm_ops.mtp_check(name=f"MTP weights of {svc.name} in {svc.model}", model=svc.model, _if=changed)

    def rollback(self, services: Sequence[Service]) -> bool:
        # Across a cluster the previous image would meet Ray on the new one on every node:
        # a failed check there fails the run and leaves the new state, no rollback.
        return not any(options_of(svc).cluster for svc in services)

    def watched(self, rig: Rig, svc: Service) -> bool:
        # Across a cluster a probe that fails may be a node's Ray rejoining: Ray's own restart
        # policy and the readiness check before every start handle that.
        return super().watched(rig, svc) and options_of(svc).cluster is None


ENGINE = VllmEngine()
