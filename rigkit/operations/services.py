"""
Prove services answer, whatever the engine: readiness, /v1/models, a chat completion and
the tool-call replay (``rigkit/scripts/check_service.py`` on the host).
"""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts.secrets import VERSION_SUFFIX
from rigkit.facts.services import UNIT_DIR
from rigkit.operations.llama_cpp import tool_command

MANIFEST = "/etc/rigkit/llama/services.json"


@operation(is_idempotent=False)
def verify(manifest: str = MANIFEST, rollback: bool = True):
    """
    Wait for each enabled service to be ready (the time-out grows with the model size), then
    ask /v1/models and send a chat completion and a tool-call replay. On failure, with
    ``rollback``, put back the last verified units, keys and llama.cpp build, restart, verify
    that, and fail the run with the journal tail of the failed start.

    .. code:: python

        services.verify(_if=any_changed(switch, unit))
    """
    yield tool_command("verify", "--manifest", manifest, *(["--rollback"] if rollback else []))


@operation()
def removed(unit: str, user: str, key_file: str | None = None):
    """
    A service the inventory no longer declares: stop and disable its unit, remove the unit
    file, its key file and its user. Called for units found on the host (``ManagedServices``).

    .. code:: python

        services.removed(unit="rigkit-llama-old.service", user="llama-old",
                         key_file="/etc/rigkit/llama/old.key")
    """
    name = unit.split("-", 2)[2].removesuffix(".service")
    watchdog = [f"rigkit-watchdog-{name}.timer", f"rigkit-watchdog-{name}.service"]
    yield StringCommand(
        "systemctl",
        "disable",
        "--now",
        QuoteString(unit),
        *(QuoteString(w) for w in watchdog),
        "2>/dev/null",
        "||",
        "true",
    )
    paths = [f"{UNIT_DIR}/{u}" for u in (unit, *watchdog)] + ([key_file, key_file + VERSION_SUFFIX] if key_file else [])
    yield StringCommand("rm", "-f", *(QuoteString(p) for p in paths))
    yield StringCommand("systemctl", "daemon-reload")
    yield StringCommand("!", "id", QuoteString(user), ">/dev/null 2>&1", "||", "userdel", QuoteString(user))
