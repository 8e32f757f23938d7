"""
Build llama.cpp at a pinned ref beside the running build, then switch to it.

Each build has its own directory keyed by build number, commit and flags; ``current``
switches only after a build succeeded, and the same pin and flags never build twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts import per_run
from rigkit.facts.llama_cpp import TOOL, LlamaCppBuilds
from rigkit.host_paths import BUILD_CACHE_TOKEN, BUILD_CACHE_TOOL, CHECK_TOOL, LAST_GOOD_TOOL
from rigkit.hostdata import LlamaCpp
from rigkit.operations import rendered
from rigkit.operations.streamed import StreamedCommand
from rigkit.scripts.llama_host import matches


def cmake_flags(pin: LlamaCpp, cuda_arch: tuple[str, ...]) -> list[str]:
    """The cmake flags of a build: static, no build-time downloads, ccache, CUDA as pinned."""
    flags = [
        "-DBUILD_SHARED_LIBS=OFF",
        "-DGGML_CCACHE=ON",
        "-DLLAMA_CURL=OFF",
        # The web UI would be downloaded (prebuilt) or built with npm at build time.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
    ]
    if pin.cuda:
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(cuda_arch)}"]
        if pin.fa_all_quants:
            # Translated to GGML_CUDA_FA_QUANTS=all on the host where the source has it.
            flags.append("-DGGML_CUDA_FA_ALL_QUANTS=ON")
    else:
        flags.append("-DGGML_CUDA=OFF")
    return flags + list(pin.cmake_flags)


def flags_hash(flags: list[str], targets: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(flags + ["targets=" + ",".join(targets)]).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class BuildIdentity:
    """What names one llama.cpp build, computed once per deploy and handed to build, activate
    and prune: the pin, its cmake flags and their hash (the build directory's suffix)."""

    pin: LlamaCpp
    cuda_arch: tuple[str, ...]
    flags: tuple[str, ...]
    flags_hash: str

    @classmethod
    def of(cls, pin: LlamaCpp, cuda_arch: tuple[str, ...] = ()) -> BuildIdentity:
        flags = cmake_flags(pin, cuda_arch)
        return cls(pin=pin, cuda_arch=cuda_arch, flags=tuple(flags), flags_hash=flags_hash(flags, pin.targets))


def tool_command(*args: str, prefix: tuple[str, ...] = (), progress: bool = False) -> StringCommand:
    """``python3 TOOL ARGS...`` with every argument quoted (``prefix``: raw shell words;
    ``progress``: its output shown as it comes, for the tool's throttled progress lines)."""
    command = StreamedCommand if progress else StringCommand
    return command(*prefix, "python3", *(QuoteString(a) for a in (TOOL, *args)))


@operation()
def tool():
    """
    Upload rigkit's host-side llama.cpp tool (build, switch, verify), its build cache client
    and the engine-neutral service check it uses to ``/opt/rigkit/bin``.
    """
    scripts = Path(str(package_files("rigkit") / "scripts"))
    tools = (
        ("check_service.py", CHECK_TOOL),
        ("last_good.py", LAST_GOOD_TOOL),
        ("build_cache.py", BUILD_CACHE_TOOL),
        ("llama_host.py", TOOL),
    )
    for name, dest in tools:
        yield from rendered.put._inner(
            content=scripts / name, dest=dest, mode="755", batch=tuple(dest for _, dest in tools)
        )


@operation()
def build(identity: BuildIdentity, jobs: int = 0):
    """
    Build llama.cpp at ``identity.pin.ref`` into its own directory under ``pin.root``, or,
    with ``pin.build_cache``, fetch and verify it from the fleet's build cache when another host
    built the same identity (else build it and publish it there). Prints the compile's progress.

    + identity: the pin (validated ``llama_cpp`` host data) with its flags, ``BuildIdentity.of``
    + jobs: parallel compile jobs (0: all cores)

    .. code:: python

        llama_cpp.build(identity=BuildIdentity.of(rig.llama_cpp, cuda_arch=("86",)))
    """
    pin = identity.pin
    installed = per_run.read(host, LlamaCppBuilds, root=pin.root)
    for name, info in installed["builds"].items():
        if matches(info, pin.ref, identity.flags_hash):
            host.noop(f"llama.cpp {pin.ref} is already built with these flags ({name})")
            return
    per_run.forget(host, LlamaCppBuilds)  # a new build: activate reads the host again
    yield tool_command(
        "build",
        "--root",
        pin.root,
        "--url",
        pin.git_url,
        "--ref",
        pin.ref,
        "--flags-hash",
        identity.flags_hash,
        "--targets",
        ",".join(pin.targets),
        "--jobs",
        str(jobs),
        *(("--cache", pin.build_cache) if pin.build_cache else ()),
        *(("--cache-token-file", BUILD_CACHE_TOKEN) if pin.build_cache_token_file else ()),
        "--",
        *identity.flags,
        prefix=("PATH=/usr/local/cuda/bin:$PATH",),
        progress=True,
    )


@operation()
def activate(identity: BuildIdentity):
    """
    Point ``current`` at the build of ``identity`` (the old one becomes ``previous``).

    .. code:: python

        llama_cpp.activate(identity=identity)
    """
    pin = identity.pin
    installed = per_run.read(host, LlamaCppBuilds, root=pin.root)
    current = installed["builds"].get(installed["current"] or "")
    if current and matches(current, pin.ref, identity.flags_hash):
        host.noop(f"llama.cpp current is already {installed['current']}")
        return
    per_run.forget(host, LlamaCppBuilds)
    yield tool_command("activate", "--root", pin.root, "--ref", pin.ref, "--flags-hash", identity.flags_hash)


@operation(is_idempotent=False)
def rollback(pin: LlamaCpp):
    """
    Swap ``current`` and ``previous``: an explicit rollback to the build before.

    .. code:: python

        llama_cpp.rollback(pin=rig.llama_cpp)
    """
    yield tool_command("rollback", "--root", pin.root)


@operation(is_idempotent=False)
def prune(pin: LlamaCpp):
    """
    Remove old builds, keeping ``pin.keep_builds`` and never ``current`` or ``previous``.
    """
    yield tool_command("prune", "--root", pin.root, "--keep", str(pin.keep_builds))
