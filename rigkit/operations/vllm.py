"""
vLLM services in containers, beyond the container layer (rigkit.operations.images): the
MTP-weights check.
"""

from __future__ import annotations

from pyinfra.api import operation

from rigkit.facts.vllm import VLLM_TOOL
from rigkit.operations.images import tool_command


@operation(is_idempotent=False)
def mtp_check(model: str):
    """
    Fail unless ``model`` (a directory on the host) has MTP weights that its index references.

    + model: the model's directory on the host

    .. code:: python

        vllm.mtp_check(model="/srv/models/qwen122b", _if=changed)
    """
    yield tool_command(VLLM_TOOL, "mtp-check", "--model", model)
