"""
The container layer's operations, for every container engine: its host tool, a service's
image (built on the host once per content hash, self-checked), its verification with
rollback, the explicit rollback, and image pruning.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from importlib.resources import files as package_files
from pathlib import Path

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.operations import files

from rigkit.facts.images import DockerImages
from rigkit.host_paths import CHECK_TOOL, LAST_GOOD_TOOL, TOOLS_DIR
from rigkit.operations import rendered
from rigkit.operations.streamed import StreamedCommand
from rigkit.render.containers import ImageIdentity

CONTAINER_TOOL = f"{TOOLS_DIR}/container_host.py"


def tool_command(tool: str, *args: str) -> StringCommand:
    """``python3 TOOL ARGS...``, every argument quoted."""
    return StringCommand("python3", QuoteString(tool), *(QuoteString(a) for a in args))


@operation()
def tool(scripts: Sequence[str] = ()):
    """
    Upload the container layer's host tool (``container_host.py``), the engine-neutral check
    and last-good state it uses, and an engine's own ``scripts`` (``rigkit/scripts/<name>``),
    to ``/opt/rigkit/bin``.

    + scripts: file names of engine tools beside the container tool (e.g. ``vllm_host.py``)

    .. code:: python

        images.tool(name="Install rigkit's vLLM host tool", scripts=["vllm_host.py"])
    """
    source = Path(str(package_files("rigkit") / "scripts"))
    tools = (
        ("check_service.py", CHECK_TOOL),
        ("last_good.py", LAST_GOOD_TOOL),
        ("container_host.py", CONTAINER_TOOL),
        *((s, f"{TOOLS_DIR}/{s}") for s in scripts),
    )
    for name, dest in tools:
        # One fact answers for every tool (rigkit.operations.rendered), not two round trips each.
        yield from rendered.put._inner(
            content=source / name, dest=dest, mode="755", batch=tuple(dest for _, dest in tools)
        )


@operation()
def image(identity: ImageIdentity, build: Sequence[str]):
    """
    A service's image: nothing when its tag (the content hash) is in the host's Docker; else
    the build context is uploaded and the host tool builds it (``build``: its argv before
    ``--context``, e.g. ``python3 /opt/rigkit/bin/vllm_host.py build --patches a``), runs its
    self-check, and fails naming what did not build.

    + identity: the image (rigkit.render.containers.ImageIdentity)
    + build: the host tool's build command, without ``--context``, ``--tag`` and ``--base``

    .. code:: python

        images.image(identity=render.image_identity(opts), build=["python3", VLLM_TOOL, "build"])
    """
    if identity.tag in host.get_fact(DockerImages, repository=identity.repository):
        host.noop(f"{identity.tag} is present")
        return
    yield StringCommand("rm", "-rf", QuoteString(identity.context))
    dirs = sorted({posixpath.dirname(rel) for rel, _ in identity.files} - {""} | set(identity.dirs))
    yield StringCommand(
        "install",
        "-d",
        "-m",
        "755",
        QuoteString(identity.context),
        *(QuoteString(f"{identity.context}/{d}") for d in dirs),
    )
    for rel, path in identity.files:
        yield from files.put._inner(src=str(path), dest=f"{identity.context}/{rel}", mode="644")
    # Shown as it runs: the step the build is at, every few seconds (container_host.run_build).
    yield StreamedCommand(
        *(QuoteString(a) for a in build),
        "--context",
        QuoteString(identity.context),
        "--tag",
        QuoteString(identity.tag),
        "--base",
        QuoteString(identity.base),
    )


@operation(is_idempotent=False)
def verify(tool: str, manifest: str, rollback: bool = True, engine: str | None = None):
    """
    Readiness (each service's ``ready_timeout``), /v1/models, a chat completion and the
    tool-call replay for each enabled service of the engine; on failure, with ``rollback``, its
    last verified units and keys (so the previous image) come back, restart and are verified,
    and the run fails with the container's log tail.

    + tool: the engine's host tool (``container_host.py``, or a wrapper of it)
    + manifest: the engine's services manifest on the host
    + rollback: put back the last verified state when the check fails
    + engine: for ``container_host.py`` itself, the engine (a wrapper knows its own)

    .. code:: python

        images.verify(tool=CONTAINER_TOOL, engine="sglang", manifest="/etc/rigkit/sglang/services.json")
    """
    yield tool_command(
        tool, "verify", *(("--engine", engine) if engine else ()), "--manifest", manifest, *(("--rollback",) * rollback)
    )


@operation(is_idempotent=False)
def restore(tool: str, manifest: str, engine: str | None = None):
    """
    Explicit rollback: the engine's last verified units and keys (so their images) back, and
    those units restarted, when the host's differ; nothing when they are the same.

    .. code:: python

        images.restore(tool=VLLM_TOOL, manifest="/etc/rigkit/vllm/services.json")
    """
    yield tool_command(tool, "restore", *(("--engine", engine) if engine else ()), "--manifest", manifest)


@operation(is_idempotent=False)
def prune(tool: str, repository: str, keep: int, engine: str | None = None):
    """
    Remove the engine's images beyond the newest ``keep`` that no unit on the host names:
    what serves, the last verified state and every other service's (and a cluster's Ray)
    image are never removed.

    + repository: rigkit's repository of the engine's images (``rigkit/vllm``)
    + keep: how many images besides those to keep (host data ``keep_images``)

    .. code:: python

        images.prune(tool=VLLM_TOOL, repository="rigkit/vllm", keep=2, _if=image.did_change)
    """
    yield tool_command(
        tool, "prune", *(("--engine", engine) if engine else ()), "--repository", repository, "--keep", str(keep)
    )
