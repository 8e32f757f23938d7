"""Debian packages rigkit needs, installed when missing: one light round trip when they are
all there (pyinfra's apt.packages lists every package on the host, and updates the apt
cache when it is older than ``cache_time`` even with nothing to install)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts.packages import MissingPackages

APT_GET = ("DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q")


@operation()
def present(packages: tuple[str, ...] | list[str]):
    """
    ``packages`` installed (without recommends); the apt cache is updated first, only when
    something is missing.

    .. code:: python

        packages.present(packages=["cmake", "git"])
    """
    missing = host.get_fact(MissingPackages, packages=tuple(packages))
    if not missing:
        host.noop(f"{', '.join(packages)} installed")
        return
    yield StringCommand(*APT_GET, "update")
    yield StringCommand(
        *APT_GET,
        "-o",
        'Dpkg::Options::="--force-confdef"',
        "-o",
        'Dpkg::Options::="--force-confold"',
        "install",
        "--no-install-recommends",
        *(QuoteString(p) for p in missing),
    )
