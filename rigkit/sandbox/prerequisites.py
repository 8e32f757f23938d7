"""What the build machine needs before a sandbox can start: root, the tools, overlayfs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rigkit.sandbox.state import SandboxError

PREREQUISITES = {
    # command -> Debian package that provides it
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "apt-cacher-ng": "apt-cacher-ng",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "nsenter": "util-linux",
}


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "rigkit sandbox needs root (it creates network namespaces, mounts and "
            "containers): run it as `sudo rigkit sandbox ...`"
        )
    missing = sorted({pkg for cmd, pkg in PREREQUISITES.items() if not which(cmd)})
    if missing:
        raise SandboxError(
            f"missing prerequisites: {', '.join(missing)}. Install them with: apt-get install -y {' '.join(missing)}"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise SandboxError("the kernel has no overlay filesystem: `modprobe overlay`")


def which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
