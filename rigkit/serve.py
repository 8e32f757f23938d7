"""
The one serve step, for every engine: per service its user, key, unit and watchdog; the
removal of services the inventory no longer declares; enable and start; a restart only when
an input changed (what the engine built or pulled, the model, the unit, the key); the
verification that puts the engine's last verified state back when it fails; the watchdog
timers. What differs between engines is theirs (rigkit.engines): what they build or pull,
their unit and manifest, their check, what they prune.

    serve_all(config, models=placed, address=address)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from io import StringIO
from typing import TYPE_CHECKING, Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from rigkit.cluster import remove_undeclared_tokens
from rigkit.engines import ENGINES
from rigkit.engines.base import Engine, Prepared
from rigkit.facts import per_run
from rigkit.facts.nvidia import NvidiaGpus
from rigkit.facts.services import ManagedServices
from rigkit.fit import measured
from rigkit.fit.plan import Plan, check_rig, on_gpus
from rigkit.host_paths import MEMORY_DIR, ServiceNames, unit_path
from rigkit.hostdata import Rig, Service
from rigkit.operations import rendered, services, units
from rigkit.render.watchdog import render_watchdog
from rigkit.service_identity import user_and_key

if TYPE_CHECKING:
    from rigkit.models.deploy import PlacedModels

logger = logging.getLogger("pyinfra")


def engines_for(rig: Rig) -> list[Engine]:
    """The engines this host serves, in the registry's order."""
    return [engine for engine in ENGINES.values() if engine.declared(rig)]


def serve_all(rig: Rig, models: PlacedModels | None = None, address: str | None = None) -> None:
    """Every engine the host declares, once every service is planned to fit its GPUs
    (:func:`rigkit.fit.plan.check_rig` refuses before any host change): first what each
    engine builds (its own deploy), while the models step's downloads run on, then the wait
    for those downloads, then each engine's ``Serve <title>`` step. The first of these also
    removes the Ray tokens of clusters no longer declared here."""
    plans = check_rig(rig, host.get_fact(NvidiaGpus) if on_gpus(rig) else None)
    remove_undeclared_tokens(rig)
    built = [(engine, engine.before(rig)) for engine in engines_for(rig)]
    if models is not None:
        models.wait()  # before any unit, key or build switch changes
    for i, (engine, before) in enumerate(built):
        serve_step(
            rig,
            engine,
            before,
            models=models.operations if models is not None else (),
            address=address or rig.host,
            remove_undeclared=i == 0,
            plans=[p for p in plans if p.engine == engine.name],
        )


def serve(rig: Rig, engine: Engine, address: str = "") -> None:
    """One engine on its own (deploys/llama_cpp.py): what it builds, then its serve step,
    with the models already in place."""
    serve_step(rig, engine, engine.before(rig), address=address)


def serve_step(
    rig: Rig,
    engine: Engine,
    before: Any,
    models: Sequence[Any] = (),
    address: str = "",
    remove_undeclared: bool = True,
    plans: Sequence[Plan] = (),
) -> None:
    """``Serve <title>``, with what the engine built (``before``, from ``engine.before``).
    ``models``: the operations that placed model files (a changed model restarts too);
    ``remove_undeclared``: this step removes the host's services that no engine declares
    (the first engine's step of a run does, before any service starts); ``plans``: the
    engine's services' memory plans, recorded with what the GPUs hold after verification."""
    step = deploy(f"Serve {engine.title}")(_serve)
    step(
        rig=rig,
        engine=engine,
        before=before,
        models=models,
        address=address,
        remove_undeclared=remove_undeclared,
        plans=plans,
    )


def _record_memory(engine: Engine, plans: Sequence[Plan], verified: Callable[[], bool]) -> None:
    """The engine's plan in the host's state, and each GPU's used memory after a verified
    (re)start or a changed plan (rigkit.fit.measured; rigkit status compares them)."""
    files.directory(name="Memory plan directory", path=MEMORY_DIR, mode="755")
    written = files.put(
        name=f"Memory plan of {engine.title}",
        src=StringIO(measured.plan_content(plans)),
        dest=measured.plan_path(engine.name),
        mode="644",
    )
    measured.measure(
        name=f"GPU memory after {engine.title} loaded", engine=engine.name, _if=_either(verified, written.did_change)
    )


def _not_changed(op: Any) -> bool:
    return not op.did_change()


def _either(first: Callable[[], bool], second: Callable[[], bool] | None) -> Callable[[], bool]:
    """``first`` or ``second``, asked when the operations run."""
    return lambda: first() or (second is not None and second())


def _warn_open(rig: Rig, svc: Service, engine: Engine) -> None:
    if svc.enabled and svc.public and not svc.api_key_file:
        logger.warning(
            f"host {rig.host}: service {svc.name} listens on {svc.host}:{svc.port} WITHOUT "
            f"an API key (allow_unauthenticated: true): {engine.open_paths} open to the network"
        )


def _remove_undeclared(rig: Rig, on_host: dict) -> None:
    """Units of services no engine declares here go first, so a renamed service finds its
    port free."""
    from rigkit.hostdata.engines import SPECS

    prefixes = tuple(spec.prefix for spec in SPECS.values())
    declared = {(s.prefix, s.name) for s in rig.services if rig.serves(s)}
    for _, unit in sorted(on_host["units"].items()):
        names = ServiceNames.of_unit(unit, prefixes)
        if names is None or (names.prefix, names.name) in declared:
            continue
        services.removed(
            name=f"Remove {unit} (no longer in the inventory)", names=names, key_file=names.name in on_host["keys"]
        )


def _serve(
    rig: Rig,
    engine: Engine,
    before: Any,
    models: Sequence[Any],
    address: str,
    remove_undeclared: bool,
    plans: Sequence[Plan] = (),
):
    served = engine.services(rig)
    for svc in served:
        _warn_open(rig, svc, engine)
    prepared: Prepared = engine.prepare(rig, before)
    # Every engine's step plans against the host as it was before the run: asked once.
    on_host = per_run.read(host, ManagedServices)
    if remove_undeclared:
        _remove_undeclared(rig, on_host)

    restart_on: dict[str, list] = {}  # per service: its key file and unit (unit last)
    watchdog_units: list = []
    extra_files = engine.files(rig, address)
    # Every file this step renders, asked about in one round trip.
    batch = (engine.manifest, *(dest for _, dest, _ in extra_files)) + tuple(
        unit_path(u) for svc in served for u in (svc.unit, svc.watchdog_unit, svc.watchdog_timer)
    )
    for svc in served:
        restart_on[svc.name] = user_and_key(rig, svc, svc.names.key_file, key_on_host=svc.name in on_host["keys"])
        if engine.watched(rig, svc):
            unit, timer = render_watchdog(svc, engine.manifest)
            watchdog_units.append(
                rendered.put(
                    name=f"Watchdog {svc.watchdog_unit}", content=unit, dest=unit_path(svc.watchdog_unit), batch=batch
                )
            )
            watchdog_units.append(
                rendered.put(
                    name=f"Watchdog timer of {svc.name}",
                    content=timer,
                    dest=unit_path(svc.watchdog_timer),
                    batch=batch,
                )
            )
        restart_on[svc.name].append(
            rendered.put(
                name=f"Unit {svc.unit}", content=engine.unit(rig, svc, prepared), dest=unit_path(svc.unit), batch=batch
            )
        )
    rendered.put(
        name=engine.manifest_title,
        content=engine.manifest_content(rig, served, prepared),
        dest=engine.manifest,
        mode="600",
        batch=batch,
    )
    for name, dest, content in extra_files:
        rendered.put(name=name, content=content, dest=dest, batch=batch)

    switch = prepared.activated = engine.activate(rig, prepared)
    every = [*prepared.every, *([switch] if switch is not None else [])]
    unit_ops = [ops[-1] for ops in restart_on.values()]
    if unit_ops or watchdog_units:
        systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*unit_ops, *watchdog_units))
    # Every unit this step starts or stops, asked about in one round trip.
    step_units = tuple(u for svc in served for u in (svc.unit, svc.watchdog_timer))
    started = []
    for svc in served:
        own = any_changed(*every, *models, *prepared.restart.get(svc.name, []), *restart_on[svc.name])
        changed = _either(own, prepared.also.get(svc.name))
        if svc.enabled:
            engine.before_start(rig, svc, changed)
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
            started.append((svc, start, changed))
    for svc, start, changed in started:
        # Only when an input changed; a unit that was just started already runs all of them.
        systemd.service(
            name=f"Restart {svc.unit}", service=svc.unit, restarted=True, _if=[changed, partial(_not_changed, start)]
        )
    if started:
        # After any (re)start: a changed input, or a service found not running.
        conditions = [any_changed(*(start for _, start, _ in started)), *(changed for _, _, changed in started)]
        verified = lambda: any(c() for c in conditions)  # noqa: E731
        engine.verify(rig, [svc for svc, _, _ in started], verified)
        if any(p.planned for p in plans):
            _record_memory(engine, plans, verified)
    for svc in served:
        watched = engine.watched(rig, svc)
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
                files.file(name=f"Remove {unit}", path=unit_path(unit), present=False)
    engine.after(rig, prepared)
