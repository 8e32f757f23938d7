"""The base root filesystem every sandbox host boots from: Debian bookworm, debootstrapped
once into the cache and shared read-only (each host's changes go to its own overlay)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from rigkit.sandbox.state import SandboxError, cache_dir, log, run

SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "python3",
    "procps",
)


def apt_mirror() -> str:
    """The Debian mirror this machine's own apt uses (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(p for p in line.split()[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def base_dir() -> Path:
    key = hashlib.sha256(" ".join((SUITE,) + BASE_PACKAGES).encode()).hexdigest()[:8]
    return cache_dir() / f"base-{SUITE}-{key}"


def ensure_base(progress: Callable[[str], None] = log) -> Path:
    """Debootstrap the base once; later calls reuse it."""
    base = base_dir()
    if (base / ".rigkit-complete").exists():
        return base
    partial = base.with_name(base.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    progress(f"building the {SUITE} base root filesystem in {base} from {mirror} (once)")
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(partial), mirror]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    phase, count = "", 0
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        words = line.split()
        # debootstrap prints a line per package: show phases and a count, not 600 lines.
        if line.startswith("I: ") and len(words) > 1:
            if words[1] != phase:
                phase, count = words[1], 0
                progress(f"  {time.monotonic() - started:5.0f}s {line[3:]}")
            count += 1
            if count % 50 == 0:
                progress(f"  {time.monotonic() - started:5.0f}s {phase} ... {count} done")
        elif line.startswith(("E:", "W:")):
            progress(f"  {time.monotonic() - started:5.0f}s {line}")
    if proc.wait() != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SandboxError("debootstrap failed:\n" + "\n".join(tail))
    # Each host gets its own identity; none may come from the shared base.
    for key_file in (partial / "etc/ssh").glob("ssh_host_*"):
        key_file.unlink()
    (partial / "etc/machine-id").write_text("")
    run(["chroot", str(partial), "apt-get", "clean"])
    (partial / ".rigkit-complete").write_text(f"{time.time()}\n")
    partial.rename(base)
    progress(f"base ready in {time.monotonic() - started:.0f}s")
    return base
