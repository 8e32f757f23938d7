"""The state of the systemd units a deploy step manages, all of them in one round trip."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

# As pyinfra's SystemdStatus/SystemdEnabled read them.
RUNNING = ("running", "waiting", "exited", "listening", "mounted")
ENABLED = ("enabled", "static")


class UnitStates(FactBase[dict]):
    """
    ``{unit: {"running": bool, "enabled": bool}}`` for each of ``units`` systemd knows.

    .. code:: python

        host.get_fact(UnitStates, units=("rigkit-llama-tiny.service", "rigkit-watchdog-tiny.timer"))
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, units: tuple[str, ...]) -> StringCommand:
        return StringCommand(
            "systemctl",
            "show",
            "--property",
            "Id",
            "--property",
            "LoadState",
            "--property",
            "SubState",
            "--property",
            "UnitFileState",
            "--",
            *(QuoteString(u) for u in units),
        )

    def process(self, output: list[str]) -> dict:
        states: dict = {}
        block: dict[str, str] = {}
        for line in [*output, ""]:
            key, sep, value = line.strip().partition("=")
            if sep:
                block[key] = value
                continue
            if block.get("Id") and block.get("LoadState") not in (None, "not-found"):
                states[block["Id"]] = {
                    "running": block.get("SubState") in RUNNING,
                    "enabled": block.get("UnitFileState") in ENABLED,
                }
            block = {}
        return states
