"""Facts about the services rigkit put on a host: their units and key files (names only)."""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from rigkit.host_paths import UNIT_DIR, key_dir
from rigkit.hostdata.engines import SPECS
from rigkit.hostdata.services import SERVICE_NAME

_TIMER = re.compile(r"rigkit-watchdog-(.+)\.timer", re.ASCII)
_UNIT = re.compile(rf"rigkit-({'|'.join(spec.prefix for spec in SPECS.values())})-(.+)\.service", re.ASCII)
_KEYS = re.compile(r"--keys ([a-z0-9]+)--", re.ASCII)


class ManagedServices(FactBase[dict]):
    """
    Service units rigkit wrote (``rigkit-<engine prefix>-<name>.service``) and the API key
    files it placed in each engine's key directory, by service name; names that are not
    valid service names are ignored.

    .. code:: python

        {"units": {"tiny": "rigkit-llama-tiny.service"}, "keys": ["tiny"],
         "timers": ["rigkit-watchdog-tiny.timer"]}
    """

    @staticmethod
    def default() -> dict:
        return {"units": {}, "keys": [], "timers": []}

    def command(self) -> str:
        listings = "; ".join(
            f"echo --keys {spec.prefix}--; ls -1 {key_dir(spec.prefix)} 2>/dev/null" for spec in SPECS.values()
        )
        return f"ls -1 {UNIT_DIR} 2>/dev/null; {listings}; true"

    def process(self, output: list[str]) -> dict:
        facts = self.default()
        in_keys = False
        for line in output:
            line = line.strip()
            if _KEYS.fullmatch(line):
                in_keys = True
            elif in_keys and line.endswith(".key") and SERVICE_NAME.fullmatch(line[:-4]):
                if line[:-4] not in facts["keys"]:
                    facts["keys"].append(line[:-4])
            elif not in_keys and (match := _UNIT.fullmatch(line)) and SERVICE_NAME.fullmatch(match.group(2)):
                facts["units"][match.group(2)] = line
            elif not in_keys and (match := _TIMER.fullmatch(line)) and SERVICE_NAME.fullmatch(match.group(1)):
                facts["timers"].append(line)
        return facts
