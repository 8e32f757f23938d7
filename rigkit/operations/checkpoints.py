"""
Derived checkpoints built on a host (:mod:`rigkit.checkpoints`) by
``rigkit/scripts/build_checkpoint.py``, which runs with the host's python3 and imports the
``checkpoints`` package uploaded beside it.
"""

from __future__ import annotations

import json
import posixpath
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.checkpoints.build import MANIFEST_NAME
from rigkit.facts.checkpoints import DerivedOutput
from rigkit.host_paths import STATE_DIR
from rigkit.operations import rendered

REMOTE_DIR = STATE_DIR  # beside the model fetcher: the builder, its package and the specs
BUILDER = "build_checkpoint.py"


def package_modules() -> list[Path]:
    """The modules of rigkit.checkpoints, uploaded as they are (stdlib, relative imports, and
    token_origin.py, which :func:`builder` places beside the package)."""
    return sorted(Path(str(package_files("rigkit") / "checkpoints")).glob("*.py"))


@operation()
def builder(remote_dir: str = REMOTE_DIR):
    """
    Upload the checkpoint builder, the ``checkpoints`` package it imports and the token's
    rules the package imports (``token_origin.py``), once per host for all ``derived``
    operations.

    + remote_dir: where the builder, its package and the specs live on the host

    **Example:**

    .. code:: python

        checkpoints.builder()
    """
    scripts = package_files("rigkit") / "scripts"
    # The package, and token_origin.py beside the builder (the package's sources import it).
    modules = [*package_modules(), Path(str(scripts / "token_origin.py"))]
    batch = tuple(
        posixpath.join(remote_dir, *(("checkpoints",) if p.parent.name == "checkpoints" else ()), p.name)
        for p in modules
    )
    script = posixpath.join(remote_dir, BUILDER)
    for path, dest in zip(modules, batch):
        yield from rendered.put._inner(content=path, dest=dest, mode="644", batch=(*batch, script))
    yield from rendered.put._inner(
        content=Path(str(scripts / BUILDER)),
        dest=script,
        mode="755",
        batch=(*batch, script),
    )


@operation()
def derived(spec: dict[str, Any], remote_dir: str = REMOTE_DIR):
    """
    Build a derived model into the output its identity names and switch its ``dest``
    symlink to it, with the builder that ``builder`` uploaded to ``remote_dir``.

    + spec: the build spec (``rigkit.models.derived.spec_for``): dest, output, identity,
      recipes, and each input's placed directory or Hub URL and locked ranges
    + remote_dir: as given to ``builder``

    The operation is a no-op when ``dest`` points at the output of this identity and its
    manifest records it complete (nothing read, nothing hashed).

    **Example:**

    .. code:: python

        checkpoints.builder()
        checkpoints.derived(
            name="Derived model qwen-hybrid",
            spec=derived.spec_for(rig, model),
        )
    """
    output = spec["output"]
    status = host.get_fact(DerivedOutput, dest=spec["dest"], manifest=MANIFEST_NAME)
    if (
        status.get("link") == posixpath.basename(output)
        and status.get("identity") == spec["identity"]
        and status.get("complete")
    ):
        host.noop(f"{spec['dest']} -> {posixpath.basename(output)}: built from these inputs, complete")
        return
    spec_file = posixpath.join(remote_dir, "derived", f"{spec['name']}.json")
    yield from rendered.put._inner(
        content=json.dumps(spec, indent=1, sort_keys=True) + "\n", dest=spec_file, mode="600"
    )
    yield StringCommand("python3", QuoteString(posixpath.join(remote_dir, BUILDER)), QuoteString(spec_file))
