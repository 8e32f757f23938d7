#!/usr/bin/env python3
"""
The last verified state of one engine's services on this host.  STDLIB ONLY.

Each engine keeps its own, side by side, never one inside another::

    /var/lib/rigkit/last-good/llama.cpp -> .llama.cpp-<stamp>/   state.json, units/, keys/
    /var/lib/rigkit/last-good/vllm      -> .vllm-<stamp>/        state.json, units/, keys/

``state.json`` holds the manifest that was verified and what the engine adds (llama.cpp: the
build ``current`` pointed at). A save writes a new directory and swaps the engine's symlink
to it with one rename, so a reader sees the old state or the new one, never a mixture, and
no engine's save touches another's. A host deployed before this layout keeps its state:
llama.cpp's lay directly in ``last-good/`` (moved into ``last-good/llama.cpp`` by the first
save or restore), vLLM's was a plain directory at ``last-good/vllm`` (read as it is, replaced
by the symlink on the next save).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path("/var/lib/rigkit/last-good")
UNIT_DIR = Path("/etc/systemd/system")
#: rigkit.operations.secrets' marker beside a key file: which version of the key it is.
VERSION_SUFFIX = ".version"


class LastGood:
    """One engine's last verified state (``engine``: ``llama.cpp``, ``vllm``, ...)."""

    def __init__(self, engine: str, root: Path = ROOT, unit_dir: Path = UNIT_DIR, run: Callable = subprocess.run):
        self.engine, self.root, self.unit_dir = engine, root, unit_dir
        self.link = root / engine
        self.run = run  # systemctl, id, useradd: what restore asks of the host

    # --- reading -------------------------------------------------------------------------

    def _legacy_llama(self) -> bool:
        return self.engine == "llama.cpp" and (self.root / "state.json").is_file()

    def state(self) -> dict | None:
        """The saved state (``{"manifest": ..., ...}``), or None when there is none."""
        self._migrate()
        try:
            return json.loads((self.link / "state.json").read_text())
        except (OSError, ValueError):
            pass
        # A vLLM state saved before the layout: services.json beside units/ and keys/.
        try:
            manifest = json.loads((self.link / "services.json").read_text())
        except (OSError, ValueError):
            return None
        verified = self.link / "verified_at"
        return {"manifest": manifest, "verified_at": verified.read_text().strip() if verified.exists() else None}

    def verified_at(self) -> str | None:
        state = self.state()
        if state is None:
            return None
        if state.get("verified_at"):
            return state["verified_at"]
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((self.link / "state.json").stat().st_mtime))

    # --- saving --------------------------------------------------------------------------

    def save(self, manifest: dict, **extra: object) -> None:
        """Record the units and key files of ``manifest``'s services (and ``extra``) as the state
        to come back to, replacing this engine's previous one in one rename."""

        def fill(new: Path) -> None:
            (new / "units").mkdir()
            (new / "keys").mkdir(mode=0o700)
            for svc in manifest["services"]:
                shutil.copy2(self.unit_dir / svc["unit"], new / "units" / svc["unit"])
                key = svc.get("key_file")
                if key and Path(key).exists():
                    copy_key(Path(key), new / "keys" / svc["name"])
            state = {
                "manifest": manifest,
                "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra,
            }
            (new / "state.json").write_text(json.dumps(state, indent=2) + "\n")

        self._migrate()
        self._swap(fill)

    def _swap(self, fill: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        new = self.root / f".{self.engine}-{time.time_ns()}"
        new.mkdir(mode=0o700)
        try:
            fill(new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        old = self.link.resolve() if self.link.is_symlink() else None
        if self.link.exists() and not self.link.is_symlink():  # the plain directory of before
            legacy = self.root / f".{self.engine}-legacy-{time.time_ns()}"
            self.link.rename(legacy)
            old = legacy
        tmp = self.root / f".{self.engine}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(new.name)
        os.replace(tmp, self.link)
        if old is not None and old != new:
            shutil.rmtree(old, ignore_errors=True)

    def _migrate(self) -> None:
        """llama.cpp's state of before (``last-good/state.json``, ``units/``, ``keys/``) into its
        own directory; the other engines' directories beside it are left as they are."""
        if not self._legacy_llama():
            return
        legacy = {name: self.root / name for name in ("state.json", "units", "keys")}

        def fill(new: Path) -> None:
            for name, path in legacy.items():
                if path.exists():
                    shutil.copytree(path, new / name) if path.is_dir() else shutil.copy2(path, new / name)

        self._swap(fill)
        for path in legacy.values():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # --- putting back ----------------------------------------------------------------------

    def restore(self, manifest: dict) -> dict | None:
        """Put back the saved units and key files (and the users of their services); units of
        ``manifest`` (what failed) that the saved state lacks are stopped. Returns the saved
        state, or None when there is none. The engine puts back what it adds (a build link, its
        manifest file) from the returned state."""
        state = self.state()
        if state is None:
            return None
        old = state["manifest"]
        old_units = {s["unit"] for s in old["services"]}
        gone = [s["unit"] for s in manifest["services"] if s["unit"] not in old_units]
        if gone:
            self.run(["systemctl", "disable", "--now", *gone], check=False, capture_output=True)
        for svc in old["services"]:
            user = unit_user(svc["unit"])
            if self.run(["id", user], capture_output=True).returncode != 0:  # removed with its service
                self.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=False)
            shutil.copy2(self.link / "units" / svc["unit"], self.unit_dir / svc["unit"])
            key = svc.get("key_file")
            saved = self.link / "keys" / svc["name"]
            if not saved.exists():  # a vLLM state of before kept the key under its file name
                saved = self.link / "keys" / Path(key).name if key else saved
            if key and saved.exists():
                copy_key(saved, Path(key))
        self.run(["systemctl", "daemon-reload"], check=False)
        return state


def unit_user(unit: str) -> str:
    """The user a service's unit runs as (rigkit.host_paths.ServiceNames): ``rigkit-vllm-big.service``
    -> ``vllm-big``."""
    return unit.removeprefix("rigkit-").removesuffix(".service")


def copy_key(src: Path, dest: Path) -> None:
    """A key file and its version marker, with their owner and mode."""
    shutil.copy2(src, dest)
    st = src.stat()
    os.chown(dest, st.st_uid, st.st_gid)
    marker = src.with_name(src.name + VERSION_SUFFIX)
    if marker.exists():
        shutil.copy2(marker, dest.with_name(dest.name + VERSION_SUFFIX))
