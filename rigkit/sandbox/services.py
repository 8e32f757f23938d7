"""What the build machine serves the sandbox hosts on the bridge address: apt-cacher-ng
(packages, cached between runs), a git daemon (the local source mirrors), a Hub mirror
(``rigkit mirror serve <cache>/hub``) and a build cache (``rigkit cache serve``, which
``make demo`` deploys with); and the stand-ins those serve (``ensure_sources``)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rigkit.sandbox.network import wait_port
from rigkit.sandbox.offline import LLAMA_RELEASES, MirrorRef, make_llama_mirror, make_tiny_model, mirror_tags
from rigkit.sandbox.processes import alive, stop_pid, wait_pidfile
from rigkit.sandbox.rootfs import SUITE, apt_mirror
from rigkit.sandbox.state import (
    APT_PROXY_PORT,
    BUILD_CACHE_PORT,
    BUILD_CACHE_TOKEN,
    GIT_PORT,
    HF_MIRROR_PORT,
    Sandbox,
    SandboxError,
    cache_dir,
    log,
    run,
)

# The process name (comm) of each service, checked before it is signalled or reported.
SERVICE_COMM = {"apt-cacher-ng": "apt-cacher-ng", "git-daemon": "git", "hf-mirror": "python", "build-cache": "python"}
SANDBOX_LLAMA_VERSIONS = ["0.3.34", "0.3.36"]  # llama-cpp-python sdists: b9976, b11312


def start_services(sb: Sandbox, state: Path) -> None:
    """apt-cacher-ng (packages), git daemon (source mirrors), a Hub mirror (models,
    ``<cache>/hub/<org>/<name>/...``) and a build cache (``build_cache_dir``) on the gateway only."""
    if not alive(sb.services.get("apt-cacher-ng"), SERVICE_COMM["apt-cacher-ng"]):
        acng_dir = state / "apt-cacher-ng"
        (acng_dir / "log").mkdir(parents=True, exist_ok=True)
        shared_cache = cache_dir() / "apt-cacher-ng"
        shared_cache.mkdir(parents=True, exist_ok=True)
        pidfile = acng_dir / "pid"
        pidfile.unlink(missing_ok=True)
        # Our own config, not /etc/apt-cacher-ng: Debian's remaps send deb.debian.org requests to
        # the backends list (ftp.debian.org by default), a host a closed network may not resolve.
        # Without remaps apt-cacher-ng fetches from the very mirror the hosts ask for, which is
        # the one this machine's own apt uses (the base is debootstrapped from it).
        conf_dir = acng_dir / "conf"
        conf_dir.mkdir(exist_ok=True)
        (conf_dir / "acng.conf").write_text(
            "SupportDir: /usr/lib/apt-cacher-ng\nReportPage: acng-report.html\nExThreshold: 4\n"
        )
        run(
            [
                "apt-cacher-ng",
                "-c",
                str(conf_dir),
                f"CacheDir={shared_cache}",
                f"LogDir={acng_dir / 'log'}",
                f"PidFile={pidfile}",
                f"SocketPath={acng_dir / 'socket'}",
                f"BindAddress={sb.gateway}",
                f"Port={APT_PROXY_PORT}",
                "ForeGround=0",
            ]
        )
        sb.services["apt-cacher-ng"] = wait_pidfile(pidfile, SERVICE_COMM["apt-cacher-ng"])
    if not alive(sb.services.get("git-daemon"), SERVICE_COMM["git-daemon"]):
        git_root = cache_dir() / "mirrors"
        git_root.mkdir(parents=True, exist_ok=True)
        pidfile = state / "git-daemon.pid"
        pidfile.unlink(missing_ok=True)
        run(
            [
                "git",
                "daemon",
                "--detach",
                "--reuseaddr",
                "--export-all",
                f"--base-path={git_root}",
                f"--listen={sb.gateway}",
                f"--port={GIT_PORT}",
                f"--pid-file={pidfile}",
                str(git_root),
            ]
        )
        sb.services["git-daemon"] = wait_pidfile(pidfile, SERVICE_COMM["git-daemon"])
    if not alive(sb.services.get("hf-mirror"), SERVICE_COMM["hf-mirror"]):
        hub_root = cache_dir() / "hub"
        hub_root.mkdir(parents=True, exist_ok=True)
        sb.services["hf-mirror"] = spawn_rigkit(
            ["mirror", "serve", str(hub_root), "--host", sb.gateway, "--port", str(HF_MIRROR_PORT)],
            state / "hf-mirror.log",
        )
    if not alive(sb.services.get("build-cache"), SERVICE_COMM["build-cache"]):
        sb.services["build-cache"] = spawn_rigkit(
            ["cache", "serve", str(build_cache_dir(sb.tag)), "--host", sb.gateway, "--port", str(BUILD_CACHE_PORT)]
            + ["--publish-token-file", str(ensure_build_cache_token(state))],
            state / "build-cache.log",
        )
    for name, port, wait in (
        ("apt-cacher-ng", APT_PROXY_PORT, 10),
        ("git-daemon", GIT_PORT, 10),
        ("hf-mirror", HF_MIRROR_PORT, 120),  # the mirror hashes new files first
        ("build-cache", BUILD_CACHE_PORT, 10),
    ):
        if not wait_port(sb.gateway, port, wait):
            raise SandboxError(
                f"{name} did not listen on {sb.gateway}:{port}"
                + (f" (log: {state / f'{name}.log'})" if name in ("hf-mirror", "build-cache") else "")
            )
    check_apt_proxy(sb)


def spawn_rigkit(args: list[str], logfile: Path) -> int:
    """``rigkit ARGS`` in the background, in a session of its own, its output appended to
    ``logfile``; its pid."""
    with open(logfile, "ab") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "rigkit.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ).pid


def build_cache_dir(tag: str) -> Path:
    """The entries of one sandbox instance's build cache: in the cache directory, so `down`
    keeps them and the next `up` serves them again; one directory per instance, so two
    sandboxes up at once (the tests' and a demo) never share one (each server owns its
    staging area)."""
    return cache_dir() / "build-cache" / tag


def remove_build_cache_if_empty(tag: str) -> None:
    """What `down` does with an instance's build cache: keep it, unless nothing was ever
    published to it (a test's short-lived instance), so such instances leave no directory."""
    root = build_cache_dir(tag)
    if not any((root / sub).exists() and any((root / sub).iterdir()) for sub in ("entries", "refused")):
        shutil.rmtree(root, ignore_errors=True)


def ensure_build_cache_token(state: Path) -> Path:
    """The build cache's publish token (0600, in the 0700 state directory): the gateway is
    an address of this machine, so without it any local user could publish a llama-server
    that the sandbox hosts would run. Hosts fetch without it; the deploy places it on them."""
    path = state / BUILD_CACHE_TOKEN
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def check_apt_proxy(sb: Sandbox) -> None:
    """Fail `up` here, clearly, if the proxy cannot reach the Debian mirror (rather than in
    every deploy's apt-get later)."""
    import requests

    url = f"{apt_mirror().rstrip('/')}/dists/{SUITE}/InRelease"
    try:
        status = requests.head(url, proxies={"http": sb.apt_proxy}, timeout=30).status_code
    except requests.RequestException as exc:
        raise SandboxError(f"apt-cacher-ng at {sb.apt_proxy} did not answer for {url}: {exc}") from exc
    if status != 200:
        raise SandboxError(
            f"apt-cacher-ng at {sb.apt_proxy} cannot fetch {url} (HTTP {status}); "
            f"check that this machine reaches the mirror: curl -I {url}"
        )


def stop_services(sb: Sandbox) -> None:
    for name, pid in sb.services.items():
        stop_pid(pid, SERVICE_COMM.get(name, name))


def ensure_sources(progress: Callable[[str], None] = log) -> None:
    """The stand-ins for GitHub and the Hub that the sandbox inventory uses: a llama.cpp
    git mirror (real source, real build numbers) and a tiny generated 2-shard model."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SandboxError(
            "the sandbox's generated model needs gguf: pip install 'rigkit[sandbox]' "
            "(or run `sandbox up --no-sources` for the sample deploy only)"
        ) from None
    cache = cache_dir()
    mirror = cache / "mirrors" / "llama.cpp.git"
    started = time.monotonic()
    tags = sorted(f"b{LLAMA_RELEASES[v][0]}" for v in SANDBOX_LLAMA_VERSIONS)
    if not mirror_tags(mirror) >= set(tags):
        progress(f"making the local llama.cpp git mirror ({', '.join(tags)}) from PyPI sdists (once)")
        make_llama_mirror(mirror, SANDBOX_LLAMA_VERSIONS, cache / "sdists")
    model_dir = cache / "models" / "tiny-qwen"
    if not (model_dir / "tiny-qwen-00002-of-00002.gguf").exists():
        progress("generating the tiny 2-shard test model (once)")
        make_tiny_model(MirrorRef(mirror, "b11312"), model_dir)
    progress(f"sources ready in {time.monotonic() - started:.1f}s")
