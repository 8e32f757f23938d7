"""Facts about the files rigkit renders onto a host (units, manifests, its own scripts): their
sha256, mode and owner, many files in one round trip. Never used for secrets (see
rigkit.facts.secrets)."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand


class RenderedFiles(FactBase[dict]):
    """
    ``{path: {"sha256": ..., "mode": "644", "owner": "root:root"}}`` for each of ``paths``
    that is a regular file; missing paths are left out. Pass the same ``paths`` from every
    operation of a deploy step and read it with :func:`rigkit.facts.per_run.read`: the host
    is asked once.

    .. code:: python

        host.get_fact(RenderedFiles, paths=("/etc/systemd/system/rigkit-llama-tiny.service",))
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, paths: tuple[str, ...]) -> StringCommand:
        return StringCommand(
            "for p in",
            *(QuoteString(p) for p in paths),
            '; do [ -f "$p" ] && printf \'%s %s %s\\n\' "$(sha256sum < "$p" | cut -d\' \' -f1)" '
            '"$(stat -c \'%a %U:%G\' "$p")" "$p"; done; true',
        )

    def process(self, output: list[str]) -> dict:
        placed = {}
        for line in output:
            parts = line.split(" ", 3)
            if len(parts) == 4:
                sha, mode, owner, path = parts
                placed[path] = {"sha256": sha, "mode": mode, "owner": owner}
        return placed
