"""
What NVIDIA's network repository looks like: its path per distribution and architecture, the
keyring, and the package names that pin a driver branch and install a toolkit.

How a branch is pinned follows the repository: from branch 590 on (and on Debian) the
``nvidia-driver-pinning-<branch>`` package, then the unversioned ``nvidia-open`` (or
``cuda-drivers`` for the proprietary modules); on Ubuntu before 590 the branch's versioned
meta-package (``nvidia-open-580``, ``cuda-drivers-580``). The installed driver packages are
then held (``apt-mark hold``), which unattended-upgrades respects, so the userspace cannot
move away from the loaded kernel module ("Driver/library version mismatch") behind your back.
"""

from __future__ import annotations

from rigkit.facts.nvidia import HostOs

REPO_DISTROS = {("ubuntu", "22.04"): "ubuntu2204", ("ubuntu", "24.04"): "ubuntu2404", ("debian", "12"): "debian12"}
REPO_ARCHES = {"x86_64": "x86_64", "aarch64": "sbsa"}
KEYRING_DEB = "cuda-keyring_1.1-1_all.deb"
KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
CONTAINER_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
CONTAINER_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
FIRST_PINNING_BRANCH = 590
# Packages of the driver itself (held together); the toolkit and container packages are not.
DRIVER_PREFIXES = ("nvidia-", "libnvidia-", "cuda-drivers", "libcuda", "libxnvctrl", "xserver-xorg-video-nvidia")
NOT_DRIVER_PREFIXES = ("nvidia-container", "libnvidia-container", "nvidia-cuda-", "nvidia-fabricmanager")


def repo_dir(os: HostOs) -> str:
    """``ubuntu2404/x86_64``, ``debian12/x86_64``, ``ubuntu2404/sbsa`` (arm64 servers)."""
    distro = REPO_DISTROS.get((os.distro, os.release))
    arch = REPO_ARCHES.get(os.arch)
    if distro is None or arch is None:
        raise ValueError(
            f"NVIDIA's network repository has no {os.distro} {os.release} {os.arch} "
            f"(rigkit knows {', '.join(sorted(set(REPO_DISTROS.values())))} on "
            f"{', '.join(REPO_ARCHES)})"
        )
    return f"{distro}/{arch}"


def repo_line(repo_url: str, os: HostOs) -> str:
    """The source line ``cuda-keyring`` installs."""
    return f"deb [signed-by={KEYRING}] {repo_url.rstrip('/')}/{repo_dir(os)}/ /"


def repo_list(os: HostOs) -> str:
    """Where ``cuda-keyring`` puts that line: ``cuda-ubuntu2404-x86_64.list``."""
    return f"/etc/apt/sources.list.d/cuda-{repo_dir(os).replace('/', '-')}.list"


def driver_packages(distro: str, branch: int, open_modules: bool) -> tuple[str | None, str]:
    """(pinning package or None, driver meta-package) for a branch, the repository's way."""
    if distro == "ubuntu" and branch < FIRST_PINNING_BRANCH:
        return None, f"nvidia-open-{branch}" if open_modules else f"cuda-drivers-{branch}"
    return f"nvidia-driver-pinning-{branch}", "nvidia-open" if open_modules else "cuda-drivers"


def toolkit_package(release: str) -> str:
    """``13.0`` -> ``cuda-toolkit-13-0``."""
    return "cuda-toolkit-" + release.replace(".", "-")


def is_driver_package(name: str) -> bool:
    return name.startswith(DRIVER_PREFIXES) and not name.startswith(NOT_DRIVER_PREFIXES)
