"""
vLLM services in containers: the host tool, the image (built on the host from a pinned base
and rigkit's patches, once per content hash), the MTP-weights check and the verification
with rollback to the previous image.
"""

from __future__ import annotations

import posixpath
from importlib.resources import files as package_files

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.operations import files

from rigkit.facts.llama_cpp import CHECK_TOOL, LAST_GOOD_TOOL
from rigkit.facts.vllm import VLLM_TOOL, DockerImages
from rigkit.render.vllm import MANIFEST, ImageIdentity


def tool_command(*args: str) -> StringCommand:
    return StringCommand("python3", QuoteString(VLLM_TOOL), *(QuoteString(a) for a in args))


@operation()
def tool():
    """Upload rigkit's host-side vLLM tool and the engine-neutral service check to /opt/rigkit/bin."""
    scripts = package_files("rigkit") / "scripts"
    yield from files.put._inner(
        src=str(scripts / "check_service.py"), dest=CHECK_TOOL, mode="755", create_remote_dir=True
    )
    yield from files.put._inner(
        src=str(scripts / "last_good.py"), dest=LAST_GOOD_TOOL, mode="755", create_remote_dir=True
    )
    yield from files.put._inner(src=str(scripts / "vllm_host.py"), dest=VLLM_TOOL, mode="755", create_remote_dir=True)


@operation()
def image(identity: ImageIdentity):
    """
    The service's image: nothing when its tag (the content hash) is in the host's Docker;
    else the build context is uploaded and ``vllm_host.py build`` builds it, runs its
    self-check, and fails with the patch's file and hunk when a patch does not apply.

    .. code:: python

        vllm.image(identity=ImageIdentity.of(service.options))
    """
    if identity.tag in host.get_fact(DockerImages):
        host.noop(f"{identity.tag} is present")
        return
    yield StringCommand("rm", "-rf", QuoteString(identity.context))
    # The Dockerfile copies patches/ whichever are chosen, none included.
    dirs = sorted({posixpath.dirname(rel) for rel, _ in identity.files} - {""} | {"patches"})
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
    yield tool_command(
        "build",
        "--context",
        identity.context,
        "--tag",
        identity.tag,
        "--base",
        identity.base,
        "--patches",
        ",".join(identity.patches),
    )


@operation(is_idempotent=False)
def mtp_check(model: str):
    """Fail unless ``model`` (a directory on the host) has MTP weights that its index references."""
    yield tool_command("mtp-check", "--model", model)


@operation(is_idempotent=False)
def verify(manifest: str = MANIFEST, rollback: bool = True):
    """
    Readiness (``ready_timeout``), /v1/models, a chat completion and the tool-call replay for
    each enabled vLLM service; on failure, with ``rollback``, the last verified units and keys
    (so the previous image) come back, restart and are verified, and the run fails with the
    container's log tail.
    """
    yield tool_command("verify", "--manifest", manifest, *(["--rollback"] if rollback else []))


@operation(is_idempotent=False)
def restore(manifest: str = MANIFEST):
    """
    Explicit rollback: the last verified vLLM units and keys (so their images) back, and those
    units restarted, when the host's differ; nothing when they are the same.

    .. code:: python

        vllm.restore(name="Put back the last verified vLLM services")
    """
    yield tool_command("restore", "--manifest", manifest)
