"""Facts about model files on a host (read only)."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

from rigkit.scripts.fetch_shards import STATE_VERSION, entry_verified

# Prints the state file fetch_shards.py keeps and (size, mtime_ns) of each file; the verdict
# is drawn here, by fetch_shards' own rule, hashing nothing.
_READ = """import json, os, sys
def stat(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        state = json.load(f)
except (OSError, ValueError):
    state = None
wanted = json.loads(sys.argv[2])
print(json.dumps({"state": state, "wanted": wanted, "stat": {d: stat(d) for d, _, _ in wanted}}))"""


class ShardsVerified(FactBase[dict]):
    """
    Status of each model file on the host: ``{dest: "verified" | "unverified" | "missing"}``.

    ``verified`` means fetch_shards recorded this exact size, mtime and sha256;
    nothing is hashed. Empty dict when the host has no python3.

    .. code:: python

        host.get_fact(ShardsVerified, state_file="/models/x/.rigkit-verified.json",
                      files=[("/models/x/a.gguf", 123, "9f86...")])
    """

    @staticmethod
    def default() -> dict:
        return {}

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self, state_file: str, files: list) -> StringCommand:
        wanted = json.dumps([[d, int(s), h] for d, s, h in files])
        return StringCommand("python3", "-c", QuoteString(_READ), QuoteString(state_file), QuoteString(wanted))

    def process(self, output: list[str]) -> dict:
        text = "\n".join(output).strip()
        if not text:
            return {}
        seen = json.loads(text)
        state = seen["state"] if isinstance(seen["state"], dict) else {}
        entries = state.get("files") or {} if state.get("version") == STATE_VERSION else {}
        out = {}
        for dest, size, sha in seen["wanted"]:
            st = seen["stat"].get(dest)
            out[dest] = (
                "missing"
                if st is None
                else "verified"
                if entry_verified(entries.get(dest), size, sha, st[0], st[1])
                else "unverified"
            )
        return out
