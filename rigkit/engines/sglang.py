"""
SGLang on the deploy side: a container engine (rigkit.engines.containers) running
``python3 -m sglang.launch_server`` in rigkit's image of a pinned ``lmsysorg/sglang`` base,
whose entrypoint reads the API key from its file inside the container.
"""

from __future__ import annotations

from collections.abc import Sequence

from rigkit.engines.base import Prepared
from rigkit.engines.containers import ContainerEngine
from rigkit.hostdata import Rig, Service
from rigkit.hostdata.sglang import options_of
from rigkit.render import sglang as render
from rigkit.render.containers import ImageIdentity

SELFCHECK = "python3 /opt/rigkit/sglang/entrypoint.py --selfcheck"


class SglangEngine(ContainerEngine):
    name = "sglang"
    title = "SGLang"
    prefix = "sglang"
    manifest_title = "SGLang services manifest for verification"
    verify_title = "Verify SGLang services (ready, /v1/models, chat, tool-call replay)"
    repository = render.IMAGE_REPO

    def identity(self, svc: Service) -> ImageIdentity:
        return render.image_identity(options_of(svc).image)

    def build_command(self, identity: ImageIdentity) -> list[str]:
        return [*super().build_command(identity), "--selfcheck", SELFCHECK]

    def keep_images(self, svc: Service) -> int:
        return options_of(svc).keep_images

    def unit(self, rig: Rig, svc: Service, prepared: Prepared) -> str:
        return render.render_unit(svc, prepared.context["images"][svc.name], rig.gpus.count)

    def manifest_content(self, rig: Rig, services: Sequence[Service], prepared: Prepared) -> str:
        return render.services_manifest(rig, prepared.context["images"])


ENGINE = SglangEngine()
