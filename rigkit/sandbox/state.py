"""What one sandbox instance is and where it lives: its state directory, the inventory it
writes (``Sandbox``, ``SandboxHost``), the ports of the build-side services, and the helpers
every other sandbox module uses (``run``, ``log``, ``SandboxError``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rigkit.sandbox.offline import default_cache_dir

DEFAULT_STATE = Path("/var/lib/rigkit/sandbox")
APT_PROXY_PORT = 3142
GIT_PORT = 9418
HF_MIRROR_PORT = 8090  # `rigkit mirror serve <cache>/hub`: the sandbox's stand-in for the Hub
BUILD_CACHE_PORT = 8091  # `rigkit cache serve`: the sandbox's own build cache (make demo uses it)
BUILD_CACHE_TOKEN = "build-cache.token"  # its publish token, in the state directory


class SandboxError(RuntimeError):
    """A sandbox step failed; the message says what and how to fix it."""


def log(message: str) -> None:
    print(f"[sandbox] {message}", file=sys.stderr, flush=True)


def state_dir() -> Path:
    return Path(os.environ.get("RIGKIT_SANDBOX_DIR", DEFAULT_STATE))


def cache_dir() -> Path:
    return default_cache_dir()


def instance_tag() -> str:
    return hashlib.sha256(str(state_dir().resolve()).encode()).hexdigest()[:4]


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(cmd, **kwargs)
    if check and result.returncode != 0:
        err = (result.stderr or result.stdout or "").strip()
        raise SandboxError(f"`{' '.join(cmd)}` failed ({result.returncode}): {err[-2000:]}")
    return result


@dataclass
class SandboxHost:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    pid: int | None = None


@dataclass
class Sandbox:
    """Everything one sandbox instance owns, written to ``inventory.json``."""

    tag: str
    subnet: str
    gateway: str
    ssh_key: str
    known_hosts: str
    hosts: list[SandboxHost] = field(default_factory=list)
    services: dict[str, int] = field(default_factory=dict)  # name -> pid

    @property
    def bridge(self) -> str:
        return f"rkbr-{self.tag}"

    @property
    def apt_proxy(self) -> str:
        return f"http://{self.gateway}:{APT_PROXY_PORT}"

    @property
    def git_url(self) -> str:
        return f"git://{self.gateway}:{GIT_PORT}"

    @property
    def hf_endpoint(self) -> str:
        return f"http://{self.gateway}:{HF_MIRROR_PORT}"

    @property
    def build_cache_url(self) -> str:
        return f"http://{self.gateway}:{BUILD_CACHE_PORT}"

    def host(self, name: str) -> SandboxHost:
        """The host called ``name``; a clear error naming the hosts there are otherwise."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise SandboxError(
            f"no host {name!r} in this sandbox (hosts: {', '.join(h.name for h in self.hosts) or 'none'})"
        )

    def ssh(self, host: SandboxHost, command: str, check: bool = True, timeout: float | None = 120) -> str:
        """Run a command on a host over SSH (strict host key checking); its stdout, stripped.
        ``timeout=None`` for long work such as a build."""
        return subprocess.run(
            [
                "ssh",
                "-i",
                self.ssh_key,
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"root@{host.address}",
                command,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        ).stdout.strip()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> Sandbox | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["hosts"] = [SandboxHost(**h) for h in raw.get("hosts", [])]
        return cls(**raw)
