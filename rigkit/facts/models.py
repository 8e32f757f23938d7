"""Facts about model files on a host (read only)."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

from rigkit.host_paths import FETCHER, MANIFEST_DIR
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


class BackgroundDownloads(FactBase[list]):
    """
    The model downloads a deploy left running in the background (``rigkit-fetch-*.service``:
    a deploy whose build failed, or one interrupted): per download its unit, its log's first
    line and its latest progress line. Empty without rigkit's fetcher.

    .. code:: python

        [{"unit": "rigkit-fetch-0123456789abcdef.service",
          "started": "org/model: download started at 2026-12-02T06:28:43Z in rigkit-fetch-...",
          "progress": "org/model: 41.2/105.0 GB (39%) 512 MB/s, 1/3 file(s) done, 2 in flight"}]
    """

    @staticmethod
    def default() -> list:
        return []

    def command(self) -> StringCommand:
        return StringCommand(
            "python3", QuoteString(FETCHER), "running", QuoteString(MANIFEST_DIR), "2>/dev/null || echo '[]'"
        )

    def process(self, output: list[str]) -> list:
        text = "\n".join(output).strip()
        seen = json.loads(text) if text else []
        return [d for d in seen if isinstance(d, dict)] if isinstance(seen, list) else []
