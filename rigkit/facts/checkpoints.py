"""Facts about derived checkpoints on a host (read only)."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

# What a derived model's dest points at and the identity its output's manifest records.
_READ = """import json, os, sys
dest = sys.argv[1]
link = os.readlink(dest) if os.path.islink(dest) else None
try:
    with open(os.path.join(dest, sys.argv[2]), encoding="utf-8") as f:
        manifest = json.load(f)
except (OSError, ValueError):
    manifest = {}
if not isinstance(manifest, dict):
    manifest = {}
print(json.dumps({"link": link, "directory": os.path.isdir(dest) and link is None,
                  "identity": manifest.get("identity"), "complete": manifest.get("complete") is True}))"""


class DerivedOutput(FactBase[dict]):
    """
    A derived model's ``dest`` on the host: ``{"link": the output it points at or None,
    "directory": a real directory there (not rigkit's), "identity": its manifest's,
    "complete": bool}``.

    .. code:: python

        host.get_fact(DerivedOutput, dest="/srv/models/qwen-hybrid", manifest=".rigkit-derived.json")
    """

    @staticmethod
    def default() -> dict:
        return {"link": None, "directory": False, "identity": None, "complete": False}

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self, dest: str, manifest: str) -> StringCommand:
        return StringCommand("python3", "-c", QuoteString(_READ), QuoteString(dest), QuoteString(manifest))

    def process(self, output: list[str]) -> dict:
        text = "\n".join(output).strip()
        return json.loads(text) if text else self.default()
