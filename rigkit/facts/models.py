"""Facts about model files on a host (read only)."""

from __future__ import annotations

import json
import shlex

from pyinfra.api.facts import FactBase

# Runs on the host with its python3: compares files with the state file that
# rigkit/scripts/fetch_shards.py writes (size, mtime_ns, sha256), hashing nothing.
_CHECK = r"""
import json, os, sys
state_file, files = sys.argv[1], json.loads(sys.argv[2])
try:
    with open(state_file) as f:
        state = json.load(f).get("files", {})
except (OSError, ValueError):
    state = {}
out = {}
for dest, size, sha in files:
    try:
        st = os.stat(dest)
    except OSError:
        out[dest] = "missing"
        continue
    e = state.get(dest) or {}
    ok = (st.st_size == size == e.get("size") and e.get("sha256") == sha and e.get("mtime_ns") == st.st_mtime_ns)
    out[dest] = "verified" if ok else "unverified"
print(json.dumps(out))
"""


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
