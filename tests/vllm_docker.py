"""A Docker engine of the test's own (its data-root, exec-root, pidfile and socket under one
work directory; no iptables, bridge or ip_forward changes to this machine) and the test base
image: a root filesystem with Python (the sandbox's debootstrapped base, without its
/var/cache) carrying a vLLM version's real sources from PyPI's wheel (0.19.1 unless told), imported with
``docker import``. Its ``vllm`` command is a STAND-IN that speaks the OpenAI API
(``standin_vllm.py``): no GPU, no torch, no real vLLM runs here. With ``ray_wheels`` the
image also carries Ray 2.54.1 (installed from its wheelhouse, ``ray_wheelhouse()``; a Ray
with token authentication, which rigkit's clusters use from 2.52 on) and a
``ray`` command, as the real vLLM images do; the stand-in then drives a Ray cluster with
``--distributed-executor-backend ray``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from vllm_wheel import PATCHED_FILES, VLLM_VERSION, unpack

HERE = Path(__file__).resolve().parent
SITE = "usr/local/lib/python3.11/dist-packages"
RAY_VERSION = "2.54.1"
#: The image's interpreter (Debian bookworm's python3, glibc 2.36), whatever runs the tests.
IMAGE_PYTHON_TAGS = (
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--platform",
    "manylinux_2_36_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--only-binary=:all:",
)
RAY_LAUNCHER = """#!/usr/bin/python3
import sys

from ray.scripts.scripts import main

if __name__ == "__main__":
    sys.exit(main())
"""


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

    def image_id(self, tag: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()

    def copy_image(self, tag: str, other: Dockerd) -> str:
        """``tag`` into ``other``'s engine with ``docker save | docker load``: the same image ID
        on both (``docker import`` makes a new one each time). Returns that ID."""
        save = subprocess.Popen(["docker", "save", tag], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None
        load = subprocess.run(["docker", "load"], env=other.env, stdin=save.stdout, capture_output=True, text=True)
        save.stdout.close()
        save_err = save.stderr.read().decode() if save.stderr else ""
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"docker save {tag} | docker load failed: {save_err}{load.stderr}")
        image = self.image_id(tag)
        if other.image_id(tag) != image:
            raise RuntimeError(f"{tag} has another image ID after docker load")
        return image

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


def ray_wheelhouse() -> Path:
    """Ray's cp311 manylinux wheel and its dependencies, downloaded once with pip into
    $RIGKIT_CACHE/wheels/ray (default /var/cache/rigkit/wheels/ray)."""
    wheels = Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit")) / "wheels" / "ray"
    if not list(wheels.glob(f"ray-{RAY_VERSION}-cp311-*manylinux*x86_64.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"ray=={RAY_VERSION}", "--only-binary=:all:", "-d", str(wheels)],
            check=True,
        )
    return wheels


def install_ray(site: Path, bin_dir: Path, wheels: Path) -> None:
    """Ray from ``wheels`` into ``site`` (the image's dist-packages) with this machine's pip,
    for the image's interpreter, and ``bin_dir/ray`` started by the image's /usr/bin/python3
    (pip's console scripts would name this machine's interpreter)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            *IMAGE_PYTHON_TAGS,
            f"ray=={RAY_VERSION}",
        ],
        check=True,
    )
    shutil.rmtree(site / "bin")
    (bin_dir / "ray").write_text(RAY_LAUNCHER)
    (bin_dir / "ray").chmod(0o755)


def import_base(
    dockerd: Dockerd,
    tag: str,
    work: Path,
    standin_mode: str = "serve",
    ray_wheels: Path | None = None,
    version: str = VLLM_VERSION,
) -> str:
    """The test base image ``tag``: Python, the files rigkit's patches edit from vLLM
    ``version``'s wheel, and the stand-in ``vllm`` command (``standin_mode`` ``fail`` makes it
    exit at start). ``ray_wheels`` (``ray_wheelhouse()``): Ray RAY_VERSION and its ``ray`` command
    too, under another ``tag`` than the image without."""
    if dockerd.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    name = f"{standin_mode}-{version}" + ("-ray" if ray_wheels else "")
    extra = work / f"extra-{name}"
    shutil.rmtree(extra, ignore_errors=True)
    unpack(extra / SITE, PATCHED_FILES, version=version)
    (extra / "usr/local/bin").mkdir(parents=True)
    if ray_wheels:
        install_ray(extra / SITE, extra / "usr/local/bin", ray_wheels)
    standin = (HERE / "standin_vllm.py").read_text().replace('MODE = "serve"', f"MODE = {standin_mode!r}")
    (extra / "usr/local/bin/vllm").write_text(standin)
    (extra / "usr/local/bin/vllm").chmod(0o755)
    tar_path = work / f"base-{name}.tar"
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
    shutil.rmtree(extra)
    return tag
