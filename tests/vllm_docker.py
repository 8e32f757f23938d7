"""A Docker engine of the test's own (its data-root, exec-root, pidfile and socket under one
work directory; no iptables, bridge or ip_forward changes to this machine) and the test base
image: a root filesystem with Python (the sandbox's debootstrapped base, without its
/var/cache) carrying vLLM 0.19.1's real sources from PyPI's wheel, imported with
``docker import``. Its ``vllm`` command is a STAND-IN that speaks the OpenAI API
(``standin_vllm.py``): no GPU, no torch, no real vLLM runs here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from vllm_wheel import PATCHED_FILES, unpack

HERE = Path(__file__).resolve().parent
SITE = "usr/local/lib/python3.11/dist-packages"


class Dockerd:
    def __init__(self, work: Path, argv: list[str] | None = None, socket: Path | None = None):
        """``argv``/``socket``: another dockerd command line (a sandbox host's, see
        ``rigkit.sandbox.docker``) and its socket."""
        self.work = work
        self.socket = socket or work / "docker.sock"
        self.argv = argv
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def start(self) -> Dockerd:
        for d in ("data", "exec"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        argv = self.argv or [
            "dockerd",
            "-H",
            f"unix://{self.socket}",
            "--data-root",
            str(self.work / "data"),
            "--exec-root",
            str(self.work / "exec"),
            "--pidfile",
            str(self.work / "dockerd.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
        ]
        log = (self.work / "dockerd.log").open("a")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.docker("info", check=False).returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError("dockerd did not start:\n" + (self.work / "dockerd.log").read_text()[-3000:])

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, check=check, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            for cid in self.docker("ps", "-aq", check=False).stdout.split():
                self.docker("rm", "-f", cid, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # containerd's shims and mounts under the exec-root go with dockerd; what is left:
        for d in ("exec/netns/default", "exec", "data"):
            subprocess.run(["umount", "-R", str(self.work / d)], capture_output=True)


def base_root() -> Path:
    cache = Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit"))
    found = sorted(cache.glob("base-bookworm-*"))
    if not found:
        from rigkit.sandbox import ensure_base

        return ensure_base()
    return found[0]


def import_base(dockerd: Dockerd, tag: str, work: Path, standin_mode: str = "serve") -> str:
    """The test base image ``tag``: Python, vLLM 0.19.1's patched files from the wheel, and
    the stand-in ``vllm`` command (``standin_mode`` ``fail`` makes it exit at start)."""
    if dockerd.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    extra = work / f"extra-{standin_mode}"
    shutil.rmtree(extra, ignore_errors=True)
    unpack(extra / SITE, PATCHED_FILES)
    (extra / "usr/local/bin").mkdir(parents=True)
    standin = (HERE / "standin_vllm.py").read_text().replace('MODE = "serve"', f"MODE = {standin_mode!r}")
    (extra / "usr/local/bin/vllm").write_text(standin)
    (extra / "usr/local/bin/vllm").chmod(0o755)
    tar_path = work / f"base-{standin_mode}.tar"
    root = base_root()
    shutil.copytree(root / "usr/local", extra / "usr/local", symlinks=True, dirs_exist_ok=True)
    with tarfile.open(tar_path, "w") as tar:
        for entry in sorted(root.iterdir()):
            if entry.name in ("var", "proc", "sys", "dev", "run", "tmp"):
                continue
            tar.add(
                entry,
                arcname=entry.name,
                filter=lambda info: None if info.name == "usr/local" or info.name.startswith("usr/local/") else info,
            )
        for d in ("var/tmp", "var/lib", "tmp", "run", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if "tmp" in d else 0o755
            tar.addfile(info)
        tar.add(extra / "usr/local", arcname="usr/local")
    with tar_path.open("rb") as f:
        done = subprocess.run(["docker", "import", "-", tag], env=dockerd.env, stdin=f, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"docker import failed: {done.stderr}")
    tar_path.unlink()
    return tag
