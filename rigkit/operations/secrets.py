"""
Place secret files (API keys) on a host without anything secret or derived from a secret
reaching pyinfra's output at any verbosity: pyinfra's ``files.put`` compares sha1 sums,
which ``-vvv`` prints. Here the host keeps a random version marker beside the file, and this
machine remembers (``~/.cache/rigkit/secrets``, mode 0600) which marker belongs to which
content: same content and marker, nothing to do; anything else, the file is written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
from io import BytesIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation

from rigkit.facts.secrets import VERSION_SUFFIX, SecretVersion

LOCAL_RECORDS = Path(os.environ.get("RIGKIT_SECRETS_CACHE", "~/.cache/rigkit/secrets")).expanduser()
#: Secrets rigkit generates itself on this machine (a cluster's Ray token), kept: not a cache,
#: since a new one changes every host that holds it.
LOCAL_GENERATED = Path(os.environ.get("RIGKIT_GENERATED_SECRETS", "~/.local/share/rigkit/secrets")).expanduser()


def generated_secret(name: str) -> bytes:
    """The secret ``name`` (a file name: letters, digits, '-' and '.'), generated on this
    machine the first time it is asked for (32 random bytes, hex) and the same ever after;
    kept 0600 in a 0700 directory. Two hosts planned at once get the same one (the first
    link wins)."""
    if not name or not all(c.isascii() and (c.isalnum() or c in "-.") for c in name) or name.startswith("."):
        raise ValueError(f"not a secret's name: {name!r}")
    path = LOCAL_GENERATED / name
    if not path.is_file():
        LOCAL_GENERATED.mkdir(parents=True, exist_ok=True, mode=0o700)
        staged = path.with_name(f".{name}.{secrets.token_hex(8)}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(staged, path)
        except FileExistsError:
            pass  # generated meanwhile: that one is the secret
        finally:
            staged.unlink()
    return path.read_bytes().strip()


def _record_path(dest: str) -> Path:
    return LOCAL_RECORDS / (hashlib.sha256(f"{host.name}\0{dest}".encode()).hexdigest()[:32] + ".json")


@operation()
def secret_file(src: str | bytes, dest: str, user: str, group: str, mode: str = "400"):
    """
    Copy the secret file ``src`` (on this machine; or the secret itself, as bytes) to ``dest`` on the host, owned by
    ``user:group`` with ``mode``, replacing it atomically.

    .. code:: python

        secrets.secret_file(src="~/keys/qwen.key", dest="/etc/rigkit/llama/qwen.key",
                            user="llama-qwen", group="llama-qwen")
    """
    content = src if isinstance(src, bytes) else Path(src).expanduser().read_bytes()
    fingerprint = hashlib.sha256(content).hexdigest()  # stays on this machine
    record_path = _record_path(dest)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    on_host = host.get_fact(SecretVersion, path=dest)
    if on_host and record.get("version") == on_host and record.get("fingerprint") == fingerprint:
        host.noop(f"{dest} is current (version {on_host})")
        return
    version = secrets.token_hex(12)
    record_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp_record = record_path.with_suffix(".new")
    tmp_record.write_text(json.dumps({"version": version, "fingerprint": fingerprint}))
    tmp_record.chmod(0o600)
    tmp_record.rename(record_path)

    staged = f"{dest}.rigkit-new"
    yield StringCommand("install", "-d", "-m", "755", QuoteString(posixpath.dirname(dest)))
    yield StringCommand("install", "-m", "600", "/dev/null", QuoteString(staged))
    yield FileUploadCommand(BytesIO(content), staged)
    yield StringCommand(
        "chown",
        QuoteString(f"{user}:{group}"),
        QuoteString(staged),
        "&&",
        "chmod",
        QuoteString(mode),
        QuoteString(staged),
        "&&",
        "mv",
        "-f",
        QuoteString(staged),
        QuoteString(dest),
        "&&",
        "echo",
        QuoteString(version),
        ">",
        QuoteString(dest + VERSION_SUFFIX),
    )
