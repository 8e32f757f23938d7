"""A cgroup per host (pitfall: hosts sharing a cgroup kill each other's units), and their
removal, depth-first, once a host stopped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def cgroup_roots() -> list[Path]:
    roots = []
    for hierarchy in ("systemd", "unified"):
        root = Path("/sys/fs/cgroup") / hierarchy
        if (root / "cgroup.procs").exists():
            roots.append(root)
    if not roots and (Path("/sys/fs/cgroup") / "cgroup.procs").exists():
        roots.append(Path("/sys/fs/cgroup"))  # pure cgroup v2
    return roots


def cgroup_dirs(tag: str, host: str | None = None) -> list[Path]:
    rel = f"rigkit-{tag}" + (f"/{host}" if host else "")
    return [root / rel for root in cgroup_roots()]


def remove_cgroup_tree(path: Path) -> None:
    """Kill what still runs in a host's cgroups (an orphaned container init), then rmdir."""
    if not path.is_dir():
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(pid) for procs in path.rglob("cgroup.procs") for pid in procs.read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass
