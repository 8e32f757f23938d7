"""Processes the sandbox started, checked by pid and name before they are signalled."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rigkit.sandbox.state import SandboxError


def alive(pid: int | None, comm: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.split()[2] == "Z":
        return False
    if comm is not None:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm[:15])
    return True


def stop_pid(pid: int | None, comm: str, timeout: float = 20.0) -> None:
    if not alive(pid, comm):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, comm):
            reap(pid)
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    while alive(pid, comm) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    reap(pid)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_pidfile(path: Path, comm: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            pid = int(path.read_text().strip())
            if alive(pid, comm):
                return pid
        time.sleep(0.1)
    raise SandboxError(f"{comm} did not start (no pid in {path})")


def mounted(path: Path) -> bool:
    target = str(path.resolve())
    return any(line.split()[1] == target for line in Path("/proc/mounts").read_text().splitlines())
