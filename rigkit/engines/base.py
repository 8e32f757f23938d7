"""
What the one serve step (:func:`rigkit.serve.serve`) asks of an engine. An engine says what
it builds or pulls, its unit, its manifest, how it is checked, and what it does after; the
step does everything the engines share (users, keys, units, watchdogs, removals, restarts on
a changed input, verification with rollback).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rigkit.hostdata import Rig, Service


@dataclass
class Prepared:
    """What an engine made ready for this run's services: ``restart``, per service, the
    operations whose change restarts it (an image); ``every``: those that restart every
    service of the engine (a llama.cpp build switched to); ``also``: a condition evaluated
    when the operations run that restarts a service too (its Ray cluster restarted);
    ``context``: the engine's own (a build identity, image tags); ``activated``: the operation
    :meth:`Engine.activate` returned."""

    restart: dict[str, list] = field(default_factory=dict)
    every: list = field(default_factory=list)
    also: dict[str, Callable[[], bool]] = field(default_factory=dict)
    context: Any = None
    activated: Any = None  # what Engine.activate returned, once the step called it


class Engine:
    """One engine on the deploy side; subclasses fill in what is theirs."""

    #: host data's ``engine`` (rigkit.hostdata.engines.SPECS)
    name: str = ""
    #: the serve step's name: "Serve <title>"
    title: str = ""
    #: the operation that writes the verifier's manifest, by name
    manifest_title: str = "Services manifest for verification"
    #: the engine's key and manifest directory's prefix (rigkit.host_paths.key_dir)
    prefix: str = ""
    #: what a service open without a key exposes, for the deploy's warning
    open_paths: str = "/v1/* is"

    @property
    def manifest(self) -> str:
        from rigkit.host_paths import manifest_path

        return manifest_path(self.prefix)

    def services(self, rig: Rig) -> tuple[Service, ...]:
        """The engine's services whose unit runs on this host."""
        return tuple(s for s in rig.services if s.engine == self.name and rig.serves(s))

    def declared(self, rig: Rig) -> bool:
        """Whether this host runs the engine's step (it has services of it, or the engine's
        own host data)."""
        return any(s.engine == self.name for s in rig.services)

    def before(self, rig: Rig) -> Any:
        """Outside the serve step, before it (its own deploy: a build); passed to :meth:`prepare`."""
        return None

    def prepare(self, rig: Rig, before: Any) -> Prepared:
        """Inside the step, before any unit: the host tool, images and what else restarts the
        services when it changes."""
        return Prepared(context=before)

    def unit(self, rig: Rig, svc: Service, prepared: Prepared) -> str:
        raise NotImplementedError

    def manifest_content(self, rig: Rig, services: Sequence[Service], prepared: Prepared) -> str:
        raise NotImplementedError

    def files(self, rig: Rig, address: str) -> list[tuple[str, str, str]]:
        """Other files the step renders: (operation name, path, content)."""
        return []

    def activate(self, rig: Rig, prepared: Prepared) -> Any:
        """After the units are in place, before any (re)start: the operation that makes what
        was prepared current (a build switched to), or None; it restarts every service."""
        return None

    def before_start(self, rig: Rig, svc: Service, changed: Callable[[], bool]) -> None:
        """Before the service (re)starts on changed inputs (``changed``, evaluated then)."""

    def verify(self, rig: Rig, services: Sequence[Service], when: Callable[[], bool]) -> None:
        """The check that the engine's services answer, with rollback, run ``when`` any changed."""
        raise NotImplementedError

    def after(self, rig: Rig, prepared: Prepared) -> None:
        """After verification: pruning what is no longer needed."""

    def roll_back(self, rig: Rig) -> None:
        """Explicit rollback (deploys/rollback.py): the previous good state back, restarted
        where it differs, and verified."""
        raise NotImplementedError

    def watched(self, rig: Rig, svc: Service) -> bool:
        """Whether the service gets the generation watchdog."""
        return svc.enabled and svc.watchdog

    def ready_timeout(self, svc: Service) -> int | None:
        """Seconds the service may take to load before the watchdog counts a failure (None:
        the watchdog's own rule from the model's size)."""
        return None
