"""Facts about model files on a host (read only)."""

from __future__ import annotations

import inspect
import json
import shlex

from pyinfra.api.facts import FactBase

from rigkit.scripts import fetch_shards

# Runs on the host with its python3: fetch_shards.py's own State decides what is verified
# (size, mtime_ns and sha256 as recorded, same state version), hashing nothing.
_CHECK = "\n".join([
    "import json, os, sys, threading",
    f"STATE_VERSION = {fetch_shards.STATE_VERSION}",
    inspect.getsource(fetch_shards.State),
    """
state, out = State(sys.argv[1]), {}
for dest, size, sha in json.loads(sys.argv[2]):
    out[dest] = ("verified" if state.is_verified(dest, size, sha)
                 else "unverified" if os.path.exists(dest) else "missing")
print(json.dumps(out))
""",
])


class ShardsVerified(FactBase):
    """
    Status of each model file on the host: ``{dest: "verified" | "unverified" | "missing"}``.

    ``verified`` means fetch_shards recorded this exact size, mtime and sha256;
    nothing is hashed. Empty dict when the host has no python3.

    .. code:: python

        host.get_fact(ShardsVerified, state_file="/models/x/.rigkit-verified.json",
                      files=[("/models/x/a.gguf", 123, "9f86...")])
    """

    @staticmethod
    def default():
        return {}

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self, state_file: str, files: list) -> str:
        payload = json.dumps([[d, int(s), h] for d, s, h in files])
        return f"python3 -c {shlex.quote(_CHECK)} {shlex.quote(state_file)} {shlex.quote(payload)}"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else {}
