"""
Host data ``nvidia``: the NVIDIA driver branch, CUDA toolkit, container toolkit and power
limits a host gets (``rigkit.nvidia``)::

    "nvidia": {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350}

The keyring package and the container toolkit's GPG key become root's trust in apt: their
URLs are ``https`` (:mod:`rigkit.transport`). A mirror on plain ``http`` needs the named opt-in
``insecure_http_mirror: true``, and then what is fetched over it pinned by sha256 in host data
(``keyring_sha256``, and ``container_key_sha256`` with ``container_toolkit``), which the deploy
checks on the host before ``dpkg -i`` or installing the key.

What can be checked without the host is checked here (names, a branch and toolkit that
cannot work together, per-GPU lists against ``gpus.count``); what needs the host's facts (a
power limit inside each GPU's range, Secure Boot, the distribution) is checked by the
deploy before it changes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rigkit.hostdata.schema import HostDataError, build, check_pattern
from rigkit.transport import UrlError, check_url

NVIDIA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos"
CONTAINER_REPO = "https://nvidia.github.io/libnvidia-container/stable/deb"
CONTAINER_KEY = "https://nvidia.github.io/libnvidia-container/gpgkey"

# ASCII digits only: "58\u0660" (an Arabic-Indic zero) is no branch.
BRANCH = re.compile(r"[1-9][0-9]{2}", re.ASCII)
TOOLKIT = re.compile(r"([0-9]{2})\.([0-9]{1,2})", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
INSECURE_OPT_IN = "nvidia.insecure_http_mirror: true"
# The oldest driver branch each CUDA major runs on (minor version compatibility).
MIN_BRANCH_FOR_CUDA = {11: 450, 12: 525, 13: 580}
FIRST_OPEN_BRANCH = 515  # the open kernel modules' first release
POWER_W = (1, 2000)


@dataclass(frozen=True)
class Nvidia:
    # "580": NVIDIA's driver branch, pinned; None: leave the host's driver alone
    driver_branch: str | None = None
    open_modules: bool = True  # the open kernel modules (the default from 560 on)
    cuda_toolkit: str | None = None  # "13.0": cuda-toolkit-13-0
    container_toolkit: bool = False  # NVIDIA's container toolkit, Docker's runtime configured
    power_limit_w: int | tuple[int, ...] | None = None  # one value for all GPUs, or one per GPU
    reboot: bool = False  # reboot when the driver changed; else report "reboot pending"
    repo_url: str = NVIDIA_REPO  # NVIDIA's CUDA network repository (or a mirror of it)
    container_repo_url: str = CONTAINER_REPO
    container_key_url: str = CONTAINER_KEY
    # A mirror on plain http, knowingly: then the keyring and key below are pinned.
    insecure_http_mirror: bool = False
    keyring_sha256: str | None = None  # sha256 of cuda-keyring_1.1-1_all.deb as the mirror serves it
    container_key_sha256: str | None = None  # sha256 of the container toolkit's GPG key (as served)

    @property
    def branch(self) -> int | None:
        return int(self.driver_branch) if self.driver_branch else None

    def power_limits(self, gpu_count: int) -> tuple[int, ...]:
        """One limit per GPU (empty without ``power_limit_w``)."""
        if self.power_limit_w is None:
            return ()
        if isinstance(self.power_limit_w, int):
            return (self.power_limit_w,) * gpu_count
        return self.power_limit_w


def parse_nvidia(host: str, raw: Any, gpu_count: int = 0) -> Nvidia | None:
    """``nvidia: {...}``; ``None`` when the host declares none. ``gpu_count``: host data
    ``gpus.count``, which a per-GPU ``power_limit_w`` list must match when it is set."""
    if raw is None:
        return None
    branch = raw.get("driver_branch") if isinstance(raw, dict) else None
    if isinstance(branch, int) and not isinstance(branch, bool):  # driver_branch: 580
        raw = {**raw, "driver_branch": str(branch)}
    nv = build(Nvidia, raw, host, "nvidia")
    if nv.driver_branch is not None:
        check_pattern(
            nv.driver_branch, BRANCH, host, "nvidia.driver_branch", 'a driver branch such as "580" (three digits)'
        )
        if nv.open_modules and int(nv.driver_branch) < FIRST_OPEN_BRANCH:
            raise HostDataError(
                host,
                "nvidia.open_modules",
                f"false for branch {nv.driver_branch}: the open kernel modules start with branch {FIRST_OPEN_BRANCH}",
                True,
            )
    if nv.cuda_toolkit is not None:
        check_pattern(
            nv.cuda_toolkit, TOOLKIT, host, "nvidia.cuda_toolkit", 'a CUDA toolkit release such as "13.0" (major.minor)'
        )
        major = int(nv.cuda_toolkit.split(".")[0])
        if major not in MIN_BRANCH_FOR_CUDA:
            raise HostDataError(
                host,
                "nvidia.cuda_toolkit",
                f"a CUDA release rigkit knows the driver needs of ({', '.join(f'{m}.x' for m in MIN_BRANCH_FOR_CUDA)})",
                nv.cuda_toolkit,
            )
        need = MIN_BRANCH_FOR_CUDA[major]
        if nv.branch is not None and nv.branch < need:
            raise HostDataError(
                host,
                "nvidia.driver_branch",
                f"{need} or newer: CUDA {major}.x does not run on older drivers (cuda_toolkit is {nv.cuda_toolkit})",
                nv.driver_branch,
            )
    _check_transport(host, nv)
    limits = nv.power_limit_w
    values = (limits,) if isinstance(limits, int) else (limits or ())
    if isinstance(limits, tuple) and not limits:
        raise HostDataError(host, "nvidia.power_limit_w", "a number of watts or one per GPU", [])
    for i, watts in enumerate(values):
        if not POWER_W[0] <= watts <= POWER_W[1]:
            key = "nvidia.power_limit_w" + (f"[{i}]" if isinstance(limits, tuple) else "")
            raise HostDataError(host, key, f"watts between {POWER_W[0]} and {POWER_W[1]}", watts)
    if isinstance(limits, tuple) and gpu_count and len(limits) != gpu_count:
        raise HostDataError(
            host,
            "nvidia.power_limit_w",
            f"{gpu_count} values, one per GPU (gpus.count), or one value for all",
            list(limits),
        )
    return nv


def _check_transport(host: str, nv: Nvidia) -> None:
    """The repositories' URLs (https, or http with the opt-in) and, over http, the pins of
    what root installs from them."""
    for key in ("repo_url", "container_repo_url", "container_key_url"):
        try:
            check_url(getattr(nv, key), allow_http=nv.insecure_http_mirror, opt_in=INSECURE_OPT_IN)
        except UrlError as exc:
            raise HostDataError(host, f"nvidia.{key}", str(exc), getattr(nv, key)) from None
    for key in ("keyring_sha256", "container_key_sha256"):
        if getattr(nv, key) is not None:
            check_pattern(getattr(nv, key), SHA256, host, f"nvidia.{key}", "a sha256 (64 lower-case hex digits)")
    if is_http(nv.repo_url) and nv.keyring_sha256 is None:
        raise HostDataError(
            host,
            "nvidia.keyring_sha256",
            "the sha256 of the mirror's cuda-keyring package: over plain http (repo_url) it is installed "
            "as root only when it matches",
        )
    if nv.container_toolkit and is_http(nv.container_key_url) and nv.container_key_sha256 is None:
        raise HostDataError(
            host,
            "nvidia.container_key_sha256",
            "the sha256 of the container toolkit's GPG key: over plain http (container_key_url) it is "
            "installed only when it matches",
        )


def is_http(url: str) -> bool:
    """Plain http (checked already: the opt-in is set)."""
    return url.lower().startswith("http://")
