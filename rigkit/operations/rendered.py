"""
Files rigkit renders onto a host (units, manifests, its own host scripts), decided with one
fact for many files instead of pyinfra's two round trips per ``files.put``.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import files

from rigkit.facts import per_run
from rigkit.facts.rendered import RenderedFiles


@operation()
def put(content: str | bytes | Path, dest: str, mode: str = "644", batch: tuple[str, ...] = ()):
    """
    ``dest`` on the host holds ``content`` (text, bytes, or a local file), owned by root, with
    ``mode``. ``batch``: every path the calling step places, so one fact answers for all.

    .. code:: python

        rendered.put(content=unit_text, dest="/etc/systemd/system/x.service", batch=all_units)
    """
    data = (
        content.read_bytes()
        if isinstance(content, Path)
        else (content.encode() if isinstance(content, str) else content)
    )
    # Each operation of a batch writes only its own dest: the batch's answer holds for all.
    current = per_run.read(host, RenderedFiles, paths=tuple(batch) or (dest,)).get(dest)
    if (
        current
        and current["sha256"] == hashlib.sha256(data).hexdigest()
        and current["mode"] == mode.lstrip("0")
        and current["owner"] == "root:root"
    ):
        host.noop(f"{dest} is as rendered")
        return
    yield from files.put._inner(
        src=BytesIO(data), dest=dest, mode=mode, user="root", group="root", create_remote_dir=True
    )
