"""
The nodes of a Ray cluster agree on their image: the head's build, loaded by the other nodes
(rigkit.cluster_share), has the same image ID on every node, compared across the nodes after
a build or load and before anything starts. Two operations, because pyinfra runs each operation on every host before the next:
:func:`record_image` on every node, then :func:`same_image` on every node, which all fail
alike on a mismatch (so no node goes on to change its units).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pyinfra.api import FunctionCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from rigkit.facts import per_run
from rigkit.facts.cluster import ImageBase, ImageRayVersion

logger = logging.getLogger("pyinfra")


def recorded(state: State, cluster: str) -> dict[str, str | None]:
    """Node -> its image's ID (None: no image), filled in this run as record_image runs on
    each node."""
    return per_run.for_run(state).setdefault("cluster_images", {}).setdefault(cluster, {})


def mismatch(cluster: str, image: str, ids: dict[str, str | None]) -> str | None:
    """Why the nodes' images differ (naming the hosts and IDs), or None."""
    missing = sorted(node for node, found in ids.items() if found is None)
    if missing:
        return f"cluster {cluster}: {image} is missing on {', '.join(missing)}"
    if len(set(ids.values())) > 1:
        each = ", ".join(f"{node}: {found}" for node, found in ids.items())
        return f"cluster {cluster}: the nodes' {image} are different images ({each})"
    return None


def _record(state: State, host: Host, cluster: str, image: str) -> bool:
    found = host.get_fact(ImageBase, image=image)  # read now, after this run's builds
    recorded(state, cluster)[host.name] = found["id"] if found else None
    return True


def _compare(state: State, host: Host, cluster: str, image: str, nodes: Sequence[str]) -> bool:
    bases = recorded(state, cluster)
    problem = mismatch(cluster, image, {node: bases.get(node) for node in nodes})
    if problem:
        host.log_styled(f"Refused: {problem}", fg="red", log_func=logger.error)
        return False
    return True


@operation(is_idempotent=False)
def record_image(cluster: str, image: str):
    """Read this node's ``image``'s ID, for :func:`same_image`.

    .. code:: python

        cluster.record_image(cluster="qwen", image="rigkit/vllm:0123456789abcdef")
    """
    yield FunctionCommand(_record, (cluster, image), {})


@operation(is_idempotent=False)
def same_image(cluster: str, image: str, nodes: Sequence[str]):
    """Fail unless every node recorded the same ID for ``image``; the error names each host
    and its ID."""
    yield FunctionCommand(_compare, (cluster, image, list(nodes)), {})


def _warn_unauthenticated(state: State, host: Host, warning_of: Callable[[str | None], str | None], image: str) -> bool:
    found = host.get_fact(ImageRayVersion, image=image)  # read now, after this run's build
    warning = warning_of(found["ray"] if found else None)
    if warning:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    return True


@operation(is_idempotent=False)
def ray_auth_checked(image: str, warning_of: Callable[[str | None], str | None]):
    """Read the version of the Ray in ``image`` (built in this run) and log ``warning_of`` it:
    the one line that says what an older Ray leaves unauthenticated (nothing for a Ray with
    token authentication).

    .. code:: python

        cluster.ray_auth_checked(image="rigkit/vllm:0123456789abcdef", warning_of=lambda v: None)
    """
    yield FunctionCommand(_warn_unauthenticated, (warning_of, image), {})
