"""
Prove services answer, whatever the engine: readiness, /v1/models, a chat completion and
the tool-call replay (``rigkit/scripts/check_service.py`` on the host).
"""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts.secrets import VERSION_SUFFIX
from rigkit.host_paths import ServiceNames, manifest_path, unit_path
from rigkit.operations.llama_cpp import tool_command

MANIFEST = manifest_path("llama")


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
def removed(names: ServiceNames, key_file: bool = False):
    """
    A service the inventory no longer declares: stop and disable its unit and watchdog,
    remove their unit files, its key file (with ``key_file``) and its user. Called for units
    found on the host (``ManagedServices``).

    + names: what the service is called on the host (``ServiceNames.of_unit`` of the unit found)
    + key_file: whether the host holds a key file of it

    .. code:: python

        services.removed(names=ServiceNames("llama", "old"), key_file=True)
    """
    watchdog = [names.watchdog_timer, names.watchdog_unit]
    yield StringCommand(
        "systemctl",
        "disable",
        "--now",
        QuoteString(names.unit),
        *(QuoteString(w) for w in watchdog),
        "2>/dev/null",
        "||",
        "true",
    )
    paths = [unit_path(u) for u in (names.unit, *watchdog)]
    if key_file:
        paths += [names.key_file, names.key_file + VERSION_SUFFIX]
    yield StringCommand("rm", "-f", *(QuoteString(p) for p in paths))
    yield StringCommand("systemctl", "daemon-reload")
    yield StringCommand("!", "id", QuoteString(names.user), ">/dev/null 2>&1", "||", "userdel", QuoteString(names.user))
