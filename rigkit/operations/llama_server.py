"""
Prove llama-server services answer: health, a chat completion, a tool-call replay.
"""

from __future__ import annotations

from pyinfra.api import operation

from rigkit.operations.llama_cpp import tool_command

MANIFEST = "/etc/rigkit/llama/services.json"


@operation(is_idempotent=False)
def verify(manifest: str = MANIFEST, rollback: bool = True):
    """
    Wait for each enabled service's /health (503 while loading; the time-out grows with the
    model size), then send a chat completion and a tool-call replay, all of which must
    answer 200. On failure, with ``rollback``, switch back to the previous llama.cpp build,
    restart, verify that, and fail the run with the journal tail of the failed start.

    .. code:: python

        llama_server.verify(_if=any_changed(switch, unit))
    """
    yield tool_command("verify", "--manifest", manifest, *(["--rollback"] if rollback else []))
