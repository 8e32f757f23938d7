"""
Prove services answer, whatever the engine: readiness, /v1/models, a chat completion and
the tool-call replay (``rigkit/scripts/check_service.py`` on the host).
"""

from __future__ import annotations

from pyinfra.api import operation

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
