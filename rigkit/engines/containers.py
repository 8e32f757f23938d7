"""
What every container engine does in the serve step (rigkit.render.containers and
rigkit.operations.images): its host tool, each service's content-addressed image built on
the host, the check with rollback through the host tool, and the pruning of old images.
An engine adds its server's flags, its image's context and what else it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from rigkit.engines.base import Engine, Prepared
from rigkit.hostdata import Rig, Service
from rigkit.operations import images
from rigkit.render.containers import ImageIdentity


class ContainerEngine(Engine):
    #: the host tool that builds, verifies, restores and prunes (container_host.py or a wrapper)
    tool: str = images.CONTAINER_TOOL
    #: engine scripts uploaded beside the container tool
    tool_scripts: tuple[str, ...] = ()
    #: rigkit's repository of the engine's images
    repository: str = ""
    verify_title: str = ""

    # --- what the engine says ---------------------------------------------------------------

    def selfcheck_line(self, report: dict) -> str | None:
        """What ``rigkit status`` says of an image's self-check report (the build keeps it on
        the host); None: this engine's images record nothing to show."""
        return None

    def identity(self, svc: Service) -> ImageIdentity:
        raise NotImplementedError

    def build_command(self, identity: ImageIdentity) -> list[str]:
        """The host tool's build command, before ``--context``, ``--tag`` and ``--base``."""
        return ["python3", self.tool, "build", "--engine", self.name]

    def image_title(self, svc: Service, identity: ImageIdentity) -> str:
        return f"Image {identity.tag} for {svc.name} (FROM {identity.base})"

    def keep_images(self, svc: Service) -> int:
        return 2

    def rollback(self, services: Sequence[Service]) -> bool:
        """Whether a failed check puts the last verified state back."""
        return True

    def image(self, rig: Rig, svc: Service, identity: ImageIdentity):
        """The operation that places the service's image on this host (built here)."""
        return images.image(name=self.image_title(svc, identity), identity=identity, build=self.build_command(identity))

    def more(self, rig: Rig, svc: Service, identity: ImageIdentity, image, prepared: Prepared) -> None:
        """What else a service needs once its image is there (a Ray node)."""

    # --- the serve step's hooks -------------------------------------------------------------

    @property
    def tool_engine(self) -> str | None:
        """What the host tool is told the engine is: container_host.py serves every engine and
        is told which; a wrapper (vllm_host.py) knows its own."""
        return self.name if self.tool == images.CONTAINER_TOOL else None

    def prepare(self, rig: Rig, before: object) -> Prepared:
        images.tool(name=f"Install rigkit's {self.title} host tool", scripts=list(self.tool_scripts))
        prepared = Prepared(context={"images": {}, "built": []})
        for svc in (s for s in rig.services if s.engine == self.name):
            identity = self.identity(svc)
            prepared.context["images"][svc.name] = identity.tag
            prepared.restart[svc.name] = []
            if svc.enabled:
                image = self.image(rig, svc, identity)
                prepared.context["built"].append(image)
                self.more(rig, svc, identity, image, prepared)
        return prepared

    def verify(self, rig: Rig, services: Sequence[Service], when) -> None:
        images.verify(
            name=self.verify_title,
            tool=self.tool,
            manifest=self.manifest,
            rollback=self.rollback(services),
            engine=self.tool_engine,
            _if=when,
        )

    def roll_back(self, rig: Rig) -> None:
        if not self.services(rig):
            return
        engine = self.tool_engine
        images.tool(name=f"Install rigkit's {self.title} host tool", scripts=list(self.tool_scripts))
        images.restore(
            name=f"Put back the last verified {self.title} services",
            tool=self.tool,
            manifest=self.manifest,
            engine=engine,
        )
        images.verify(
            name=f"Verify {self.title} services", tool=self.tool, manifest=self.manifest, rollback=False, engine=engine
        )

    def after(self, rig: Rig, prepared: Prepared) -> None:
        own = [s for s in rig.services if s.engine == self.name and s.enabled]
        built = prepared.context["built"]
        if not own or not built:
            return
        keep = max(self.keep_images(s) for s in own)
        images.prune(
            name=f"Keep {keep} more {self.title} image(s) than serve or were last verified",
            tool=self.tool,
            repository=self.repository,
            keep=keep,
            engine=self.tool_engine,
            _if=lambda: any(op.did_change() for op in built),
        )
