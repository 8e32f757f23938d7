"""
Facts about llama.cpp on a host: the finished builds and rigkit's status (GPU facts:
``rigkit.facts.nvidia``).
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

from rigkit.host_paths import TOOLS_DIR

#: rigkit's host-side llama.cpp tool (``rigkit/scripts/llama_host.py``), uploaded by
#: ``rigkit.operations.llama_cpp.tool``.
TOOL = f"{TOOLS_DIR}/llama_host.py"
#: the engine-neutral service check beside it (``rigkit/scripts/check_service.py``).


class LlamaCppBuilds(FactBase[dict]):
    """
    Finished llama.cpp builds under ``root`` (each ``builds/*/build.json``) and the builds
    that ``current`` and ``previous`` point at.

    .. code:: python

        {
            "builds": {"b8137-a1b2c3d4e-5f6a7b8c": {"ref": "b8137", "commit": "...", ...}},
            "current": "b8137-a1b2c3d4e-5f6a7b8c",
            "previous": None,
        }
    """

    def command(self, root: str) -> StringCommand:
        # One JSON document per line; a missing root is simply "no builds".
        return StringCommand(
            "cd",
            QuoteString(root),
            "2>/dev/null || exit 0;",
            'for f in builds/b*/build.json; do [ -f "$f" ] || continue; '
            "printf 'B %s ' \"${f%/build.json}\"; tr -d '\\n' < \"$f\"; echo; done; "
            "printf 'C %s\\n' \"$(readlink current)\"; printf 'P %s\\n' \"$(readlink previous)\"",
        )

    def process(self, output: list[str]) -> dict:
        facts = self.default()
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "B":
                path, _, doc = rest.partition(" ")
                facts["builds"][path.split("/", 1)[1]] = json.loads(doc)
            elif kind in ("C", "P") and rest.strip():
                facts["current" if kind == "C" else "previous"] = rest.strip().split("/")[-1]
        return facts

    @staticmethod
    def default() -> dict:
        return {"builds": {}, "current": None, "previous": None}


class RigStatus(FactBase[dict]):
    """
    What rigkit put on the host, read by its host tool: the current and previous llama.cpp
    builds, each service (active, healthy) and its model. Empty without rigkit.

    .. code:: python

        {"current": {"build": 8137, "commit": "...", "verified_at": "..."}, "previous": None,
         "builds": ["b8137-..."], "services": [{"name": "qwen122b", "active": "active", ...}]}
    """

    def command(self) -> StringCommand:
        return StringCommand("python3", QuoteString(TOOL), "status 2>/dev/null || echo '{}'")

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output) or "{}")
