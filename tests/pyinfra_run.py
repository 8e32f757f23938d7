"""Run pyinfra as a user would (its CLI, over SSH) and read its own JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


@dataclass
class PyinfraRun:
    returncode: int
    results: dict | None
    stdout: str
    stderr: str

    @property
    def changed(self) -> dict[str, list[str]]:
        """Operation name -> hosts on which it changed something."""
        assert self.results is not None, self.stderr[-3000:]
        return {op["name"]: op["success"] for op in self.results["operations"] if op["success"]}

    @property
    def errors(self) -> dict[str, list[str]]:
        assert self.results is not None, self.stderr[-3000:]
        return {op["name"]: op["error"] for op in self.results["operations"] if op["error"]}


def run_pyinfra(inventory: str, deploy: str, *extra: str, env: dict | None = None, timeout: float = 1800) -> PyinfraRun:
    proc = subprocess.run(
        [PYINFRA, "-y", "--json", *extra, inventory, deploy],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    try:
        payload = json.loads(proc.stdout)
        results = payload.get("results")
    except json.JSONDecodeError:
        results = None
    return PyinfraRun(proc.returncode, results, proc.stdout, proc.stderr)


def ssh(sb, host, command: str, check: bool = True) -> str:
    """Run a command on a sandbox host over SSH (strict host key checking), return stdout."""
    return sb.ssh(host, command, check=check)


def dry_run_seed_rig(sb, host, tmp_path: Path) -> PyinfraRun:
    """``inventories/rig.py`` (the seeds' rig) planned with ``--dry`` against a sandbox host,
    its Hub models locked against a stand-in Hub (the real one cannot be reached from here)."""
    from standin_hub import standin_lock

    lock = tmp_path / "rig.lock.yaml"
    standin_lock(tmp_path / "hub", lock, str(REPO / "inventories/rig.py"))
    return run_pyinfra(
        "inventories/rig.py",
        "deploys/rig.py",
        "--dry",
        "--data",
        f"ssh_known_hosts_file={sb.known_hosts}",
        "--data",
        f"model_lock={lock}",
        env={"RIG_HOST": host.address, "RIG_SSH_KEY": sb.ssh_key},
    )
