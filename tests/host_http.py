"""A GET on a sandbox host, from the host itself (no curl there): what the e2e tests ask a
service listening on the host's loopback."""

from __future__ import annotations

import shlex


def get(sb, host, port: int, path: str = "/v1/models", key: str | None = None, timeout: float = 5) -> str:
    """The body, the HTTP status of an error, or ``down`` when nothing answers."""
    header = f", headers={{'Authorization': 'Bearer {key}'}}" if key else ""
    script = (
        f"import urllib.request, urllib.error\ntry:\n print(urllib.request.urlopen(urllib.request.Request("
        f"'http://127.0.0.1:{port}{path}'{header}), timeout={timeout}).read().decode())\n"
        f"except urllib.error.HTTPError as e:\n print(e.code)\nexcept OSError as e:\n print('down')"
    )
    return sb.ssh(host, f"python3 -c {shlex.quote(script)}")
