"""Facts about secret files rigkit placed: only their version marker, never anything derived
from the secret (no hash, no size), so no verbosity can print one."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand

VERSION_SUFFIX = ".version"


class SecretVersion(FactBase[str]):
    """
    The random version marker written beside a secret file when rigkit placed it; empty
    when the file or its marker is missing.

    .. code:: python

        host.get_fact(SecretVersion, path="/etc/rigkit/llama/qwen.key")
    """

    def command(self, path: str) -> StringCommand:
        return StringCommand(
            "test",
            "-f",
            QuoteString(path),
            "&&",
            "cat",
            QuoteString(path + VERSION_SUFFIX),
            "2>/dev/null",
            "||",
            "true",
        )

    def process(self, output: list[str]) -> str:
        return "".join(output).strip()
