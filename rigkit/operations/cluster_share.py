"""
What a cluster's head serves its other nodes for the deploy's duration, over the
interconnect (rigkit.cluster_share): a transient unit, bound to the head's interconnect
address only, started once the head holds what it serves and stopped once the nodes took it;
and, on a node, that exact image loaded from the head.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.host_paths import TOOLS_DIR

IMAGE_SHARE_TOOL = f"{TOOLS_DIR}/image_share.py"
#: The longest a share may outlive a deploy that stopped before its own stop (the unit ends itself).
RUNTIME_MAX_SEC = 3600
# Hardening of the transient unit: it reads (models, Docker's socket) and writes nothing.
_PROPERTIES = (
    # Started once it listens (the server tells systemd): a server that cannot bind fails the start.
    "Type=notify",
    f"RuntimeMaxSec={RUNTIME_MAX_SEC}",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
)


def _stop(unit: str) -> StringCommand:
    return StringCommand(
        "systemctl", "stop", QuoteString(unit), "2>/dev/null", ";", "systemctl", "reset-failed", QuoteString(unit),
        "2>/dev/null", "||", "true",
    )  # fmt: skip


@operation(is_idempotent=False)
def serving(
    unit: str,
    argv: Sequence[str],
    links: dict[str, str] | None = None,
    needed: bool = True,
    why_not: str = "",
):
    """
    Start ``argv`` as the transient unit ``unit`` (any left from a deploy that stopped early
    goes first), done once the server says it listens (``Type=notify``); nothing when not
    ``needed``.

    + unit: the transient unit's name (``rigkit-share-qwen.service``)
    + argv: the server's command line (bound to the head's interconnect address)
    + links: a directory of links to create first (link path -> target), what the server serves
    + needed: whether any node takes something from it in this run
    + why_not: what the no-op says when not needed

    .. code:: python

        cluster_share.serving(unit="rigkit-share-qwen.service", argv=["python3", "/opt/rigkit/bin/image_share.py", ...])
    """
    if not needed:
        host.noop(why_not or f"{unit}: nothing to serve")
        return
    yield _stop(unit)
    for link, target in sorted((links or {}).items()):
        yield StringCommand("install", "-d", "-m", "755", QuoteString(link.rsplit("/", 1)[0]))
        yield StringCommand("ln", "-sfn", QuoteString(target), QuoteString(link))
    yield StringCommand(
        "systemd-run",
        "--quiet",
        "--collect",
        QuoteString(f"--unit={unit}"),
        *(QuoteString(f"--property={p}") for p in _PROPERTIES),
        *(QuoteString(a) for a in argv),
    )


@operation(is_idempotent=False)
def stopped(unit: str, links_dir: str | None = None):
    """
    Stop the transient unit ``unit`` (and remove the links it served from).

    .. code:: python

        cluster_share.stopped(unit="rigkit-share-qwen.service", links_dir="/run/rigkit/share-qwen")
    """
    yield _stop(unit)
    if links_dir:
        yield StringCommand("rm", "-rf", QuoteString(links_dir))


@operation(is_idempotent=False)
def image_loaded(image: str, url: str, held: bool = False):
    """
    ``image`` loaded from the head's image server at ``url`` (an image this node already
    holds by the head's ID is only tagged); fails unless the tag then names the head's ID.
    Nothing when ``held``: the node's tag names the head's image ID already.

    .. code:: python

        cluster_share.image_loaded(image="rigkit/vllm:0123456789abcdef", url="http://192.168.100.11:8470")
    """
    if held:
        host.noop(f"{image} is the head's image here")
        return
    yield StringCommand("python3", QuoteString(IMAGE_SHARE_TOOL), "load", "--url", QuoteString(url), "--image",
                        QuoteString(image))  # fmt: skip
