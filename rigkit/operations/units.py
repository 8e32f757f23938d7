"""
Units of a deploy step started, stopped, enabled or disabled, decided by one fact for all
of the step's units (:class:`rigkit.facts.units.UnitStates`) instead of pyinfra's two round
trips per ``systemd.service``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts import per_run
from rigkit.facts.units import UnitStates


@operation()
def unit(unit: str, running: bool | None = None, enabled: bool | None = None, batch: tuple[str, ...] = ()):
    """
    ``unit`` running (or stopped) and enabled (or disabled) as asked; ``None`` leaves that
    alone. ``batch``: every unit the calling step manages, so one fact answers for all.

    .. code:: python

        units.unit(unit="rigkit-llama-tiny.service", enabled=True, batch=step_units)
    """
    state = per_run.read(host, UnitStates, units=tuple(batch) or (unit,)).get(unit, {})
    commands = []
    if enabled is not None and state.get("enabled", False) != enabled:
        commands.append("enable" if enabled else "disable")
    if running is not None and state.get("running", False) != running:
        commands.append("start" if running else "stop")
    if not commands:
        host.noop(f"{unit} is as declared")
        return
    per_run.forget(host, UnitStates)
    for verb in commands:
        yield StringCommand("systemctl", verb, QuoteString(unit))
