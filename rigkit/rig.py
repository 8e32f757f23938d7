"""
The steps of a rig deploy, as pyinfra deploys over validated host data (rigkit.hostdata).
``deploys/rig.py`` strings them together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from rigkit.facts.nvidia import NvidiaGpus
from rigkit.facts.services import ManagedServices
from rigkit.hostdata import LlamaCpp, Rig, UploadModel
from rigkit.models.hub import resolve_endpoint
from rigkit.operations import llama_cpp, packages, rendered, services, units
from rigkit.operations import models as model_ops
from rigkit.operations.llama_cpp import BuildIdentity
from rigkit.render import llama_server as render
from rigkit.render.watchdog import render_watchdog
from rigkit.service_identity import user_and_key
from rigkit.transport import may_carry_token

logger = logging.getLogger("pyinfra")


def _not_changed(op: Any) -> bool:
    return not op.did_change()


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


@deploy("Models")
def models(rig: Rig):
    """Model files: uploaded from this machine (``upload``) for small or air-gapped models,
    or fetched on the host from the Hub (or ``hf_endpoint``, a mirror) as the lock pins them.
    Returns the operations, so services restart when their model changed."""
    placed = []
    if rig.models:
        model_ops.fetcher(
            name="Install rigkit's model fetcher",
            token_file=host.data.get("hf_token_file"),
            # The token goes to the host only when a Hub model's endpoint may carry it (https).
            use_token=any(
                may_carry_token(resolve_endpoint(m.endpoint or host.data.get("hf_endpoint"))) for m in rig.hub_models
            ),
        )
    for entry in rig.models:
        if isinstance(entry, UploadModel):
            src = Path(entry.upload).expanduser()
            if not src.is_dir():
                raise PyinfraError(
                    f"host {rig.host}: models[].upload: expected a directory on this machine, {src} is not one"
                )
            placed.append(
                model_ops.uploaded(name=f"Model files of {src.name} in {entry.dest}", src=str(src), dest=entry.dest)
            )
        else:
            locked = rig.lock_for(entry)
            placed.append(
                model_ops.shards(
                    name=f"Model {entry.name or entry.repo} ({entry.repo}@{locked.sha[:12]}, "
                    f"{len(locked.files)} file(s)) in {entry.dest}",
                    ref=entry.ref,
                    lock_entry=locked,
                    token_file=host.data.get("hf_token_file"),
                )
            )
    return placed


@deploy("Build llama.cpp")
def llama_cpp_build(rig: Rig):
    """Packages, the host tool, then the pinned build; returns the build op and the build's
    identity (ref, flags, hash), which the switch and prune steps take as they are."""
    packages.present(name="Install build dependencies", packages=BUILD_PACKAGES)
    llama_cpp.tool(name="Install rigkit's llama.cpp host tool")
    identity = BuildIdentity.of(llama_pin(rig), cuda_arch(rig))
    built = llama_cpp.build(name=f"Build llama.cpp {identity.pin.ref}", identity=identity)
    return built, identity


@deploy("Serve llama.cpp")
def llama_services(rig: Rig, identity: BuildIdentity, address: str, models: Sequence[Any] = ()):
    """Users, keys and units per service, the switch to the new build, restarts, verification.
    ``models``: the operations that placed model files (a changed model restarts too)."""
    pin = identity.pin
    served = rig.engine_services("llama.cpp")  # vLLM services have their own step
    for svc in served:
        if svc.enabled and svc.public and not svc.api_key_file:
            logger.warning(
                f"host {rig.host}: service {svc.name} listens on {svc.host}:{svc.port} WITHOUT "
                "an API key (allow_unauthenticated: true): /v1/*, /metrics, /slots and /props "
                "are open to the network"
            )
    # What the inventory no longer declares goes first, so a renamed service finds its port free.
    on_host = host.get_fact(ManagedServices)
    declared = {svc.name for svc in rig.services}
    for name, unit in sorted(on_host["units"].items()):
        if name not in declared:
            services.removed(
                name=f"Remove {unit} (no longer in the inventory)",
                unit=unit,
                user=f"{unit.split('-')[1]}-{name}",
                key_file=f"{render.KEY_DIR}/{name}.key" if name in on_host["keys"] else None,
            )
    restart_on: dict[str, list] = {}  # per service: its key file and unit (unit last)
    watchdog_units: list = []
    unit_dir = "/etc/systemd/system"
    opencode = "/etc/rigkit/opencode.json"
    # Every file this step renders, asked about in one round trip.
    batch = (services.MANIFEST, opencode) + tuple(
        f"{unit_dir}/{unit}" for svc in served for unit in (svc.unit, svc.watchdog_unit, svc.watchdog_timer)
    )
    for svc in served:
        restart_on[svc.name] = user_and_key(rig, svc, render.key_path(svc), key_on_host=svc.name in on_host["keys"])
        if svc.enabled and svc.watchdog:
            unit, timer = render_watchdog(svc, services.MANIFEST)
            watchdog_units.append(
                rendered.put(
                    name=f"Watchdog {svc.watchdog_unit}",
                    content=unit,
                    dest=f"{unit_dir}/{svc.watchdog_unit}",
                    batch=batch,
                )
            )
            watchdog_units.append(
                rendered.put(
                    name=f"Watchdog timer of {svc.name}",
                    content=timer,
                    dest=f"{unit_dir}/{svc.watchdog_timer}",
                    batch=batch,
                )
            )
        restart_on[svc.name].append(
            rendered.put(
                name=f"Unit {svc.unit}",
                content=render.render_unit(svc, pin.root, gpu=pin.cuda),
                dest=f"{unit_dir}/{svc.unit}",
                batch=batch,
            )
        )
    rendered.put(
        name="Services manifest for verification",
        content=render.services_manifest(rig, pin.root),
        dest=services.MANIFEST,
        mode="600",
        batch=batch,
    )
    rendered.put(
        name="opencode.json provider entries",
        content=render.opencode_config(rig, address),
        dest=opencode,
        batch=batch,
    )

    switch = llama_cpp.activate(name=f"Switch llama.cpp to {pin.ref}", identity=identity)
    if restart_on:
        systemd.daemon_reload(
            name="Reload systemd units", _if=any_changed(*(ops[-1] for ops in restart_on.values()), *watchdog_units)
        )
    started = []
    # Every unit this step starts or stops, asked about in one round trip.
    step_units = tuple(u for svc in served for u in (svc.unit, svc.watchdog_timer))
    for svc in served:
        units.unit(
            name=f"{'Enable' if svc.enabled else 'Disable'} {svc.unit}",
            unit=svc.unit,
            enabled=svc.enabled,
            batch=step_units,
        )
        # Separate from enabling: only a real start may stand in for a restart below.
        start = units.unit(
            name=f"{'Start' if svc.enabled else 'Stop'} {svc.unit}",
            unit=svc.unit,
            running=svc.enabled,
            batch=step_units,
        )
        if svc.enabled:
            started.append((svc, start))
    for svc, start in started:
        # Only when its build, model, unit or key changed; a unit that was just started
        # already runs all of those.
        systemd.service(
            name=f"Restart {svc.unit}",
            service=svc.unit,
            restarted=True,
            _if=[any_changed(switch, *models, *restart_on[svc.name]), partial(_not_changed, start)],
        )
    if started:
        # After any (re)start: a changed build, model, unit or key, or a service found not running.
        services.verify(
            name="Verify services (health, chat, tool-call replay)",
            _if=any_changed(switch, *models, *(op for svc, start in started for op in (*restart_on[svc.name], start))),
        )
    for svc in served:
        watched = svc.enabled and svc.watchdog
        if watched or svc.watchdog_timer in on_host["timers"]:
            units.unit(
                name=f"{'Start' if watched else 'Stop'} the watchdog of {svc.name}",
                unit=svc.watchdog_timer,
                running=watched,
                enabled=watched,
                batch=step_units,
            )
        if not watched and svc.watchdog_timer in on_host["timers"]:
            for unit in (svc.watchdog_timer, svc.watchdog_unit):
                files.file(name=f"Remove {unit}", path=f"/etc/systemd/system/{unit}", present=False)
    llama_cpp.prune(name=f"Keep the last {pin.keep_builds} llama.cpp builds", pin=pin, _if=switch.did_change)
