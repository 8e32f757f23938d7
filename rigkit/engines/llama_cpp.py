"""
llama.cpp on the deploy side: the pinned build (its own step, before its services are
served: packages, the host tool, the build beside the current one) and what the serve step
asks of the engine (its unit, manifest, client config, the switch to the new build, the check
with rollback, the pruning of old builds).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import systemd

from rigkit.engines.base import Engine, Prepared
from rigkit.facts.nvidia import NvidiaGpus
from rigkit.host_paths import BUILD_CACHE_TOKEN, OPENCODE_CONFIG
from rigkit.hostdata import LlamaCpp, Rig, Service
from rigkit.operations import llama_cpp, packages, secrets, services
from rigkit.operations.llama_cpp import BuildIdentity
from rigkit.render import llama_server as render

BUILD_PACKAGES = ["build-essential", "cmake", "git", "ccache", "python3", "ca-certificates"]


def llama_pin(rig: Rig) -> LlamaCpp:
    if rig.llama_cpp is None:
        raise PyinfraError(
            f"host {rig.host}: llama_cpp: expected a mapping with at least ref (this step builds llama.cpp)"
        )
    return rig.llama_cpp


def cuda_arch(rig: Rig) -> tuple[str, ...]:
    """Architectures to build for: declared, else read off the host's GPUs."""
    pin = llama_pin(rig)
    if not pin.cuda:
        return ()
    declared = pin.cuda_arch or rig.gpus.cuda_arch
    if declared:
        return declared
    gpus = host.get_fact(NvidiaGpus)
    if not gpus:
        raise PyinfraError(
            f"host {rig.host}: gpus.cuda_arch: expected a CUDA architecture list "
            "(nvidia-smi is not there to read it from)"
        )
    return tuple(sorted({g.cuda_arch for g in gpus if g.cuda_arch}))


@deploy("Build llama.cpp")
def llama_cpp_build(identity: BuildIdentity):
    """Packages, the host tool, then the pinned build of ``identity`` (ref, flags, hash),
    which the switch and prune steps take as they are."""
    packages.present(name="Install build dependencies", packages=BUILD_PACKAGES)
    llama_cpp.tool(name="Install rigkit's llama.cpp host tool")
    if identity.pin.build_cache_token_file:
        secrets.secret_file(
            name="Build cache publish token (0400, root)",
            src=identity.pin.build_cache_token_file,
            dest=BUILD_CACHE_TOKEN,
            user="root",
            group="root",
        )
    llama_cpp.build(name=f"Build llama.cpp {identity.pin.ref}", identity=identity)


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    title = "llama.cpp"
    prefix = "llama"
    open_paths = "/v1/*, /metrics, /slots and /props are"

    def declared(self, rig: Rig) -> bool:
        # The step runs wherever llama.cpp is declared: it removes what is no longer served.
        return rig.llama_cpp is not None

    def before(self, rig: Rig) -> BuildIdentity:
        identity = BuildIdentity.of(llama_pin(rig), cuda_arch(rig))
        llama_cpp_build(identity=identity)
        return identity

    def unit(self, rig: Rig, svc: Service, prepared: Prepared) -> str:
        pin = prepared.context.pin
        return render.render_unit(svc, pin.root, gpu=pin.cuda, build_ref=pin.ref)

    def manifest_content(self, rig: Rig, services: Sequence[Service], prepared: Prepared) -> str:
        return render.services_manifest(rig, prepared.context.pin.root)

    def files(self, rig: Rig, address: str) -> list[tuple[str, str, str]]:
        presets = []
        for svc in self.services(rig):
            if svc.router_models:
                # Placed before the unit that names it restarts the service.
                preset = render.render_preset(svc, llama_pin(rig).ref)
                presets.append((f"Model preset of {svc.name}", render.preset_path(svc, preset), preset))
        return [*presets, ("opencode.json provider entries", OPENCODE_CONFIG, render.opencode_config(rig, address))]

    def activate(self, rig: Rig, prepared: Prepared):
        identity = prepared.context
        return llama_cpp.activate(name=f"Switch llama.cpp to {identity.pin.ref}", identity=identity)

    def verify(self, rig: Rig, services_: Sequence[Service], when) -> None:
        services.verify(name="Verify services (health, chat, tool-call replay)", _if=when)

    def roll_back(self, rig: Rig) -> None:
        llama = [svc for svc in rig.enabled_services if svc.engine == self.name]
        if not llama:
            return
        llama_cpp.rollback(name="Switch llama.cpp back to the previous build", pin=llama_pin(rig))
        for svc in llama:
            systemd.service(name=f"Restart {svc.unit}", service=svc.unit, restarted=True)
        services.verify(name="Verify llama.cpp services", rollback=False)

    def after(self, rig: Rig, prepared: Prepared) -> None:
        pin = prepared.context.pin
        llama_cpp.prune(
            name=f"Keep the last {pin.keep_builds} llama.cpp builds", pin=pin, _if=prepared.activated.did_change
        )


ENGINE = LlamaCppEngine()
