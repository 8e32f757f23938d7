"""A Python environment in which real vLLM code runs without a GPU: PyTorch's CPU build plus what
vLLM's config, quantization, linear-layer and CLI modules import, and each supported vLLM wheel
unpacked twice, as PyPI ships it (pristine) and with rigkit's patches applied the way the image
build applies them (``apply.py --patches ... --record ...``, with this environment's python).

Everything is built once and cached under /var/cache/rigkit/vllm-cpu, keyed by what it holds:
the venv by the Python version, the torch pin and tests/vllm_cpu_requirements.txt; a pristine
tree by its wheel; a patched tree by the pristine one plus files/vllm (patches and applier).
A change to any of them builds a new one beside the old (removed after); a file lock makes
concurrent sessions wait for one build. Installs never resolve: torch first by its exact pin
(this machine's pip takes the CPU build from disk), then every other package by its exact pin
with ``--no-deps``, so pip can never pull a CUDA torch. The pins were resolved with
``pip install --uploaded-prior-to=2026-04-18`` (vLLM 0.19.1's release day; 0.20.2's
requirements accept the same set) against vLLM's own requirement ranges.

``run(tree, script, *args)`` runs a script under the venv with ``PYTHONPATH=<tree>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import vllm_wheel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit")) / "vllm-cpu"
REQUIREMENTS = HERE / "vllm_cpu_requirements.txt"
CASES = HERE / "vllm_cpu_cases"
#: The CPU build this machine's pip takes from disk (see the environment notes); Python 3.11 only.
TORCH = "torch==2.13.0"
PYTHON_VERSION = (3, 11)
VLLM_PATCH_DIR = REPO / "files" / "vllm"
#: The patches the image build applies (rigkit.hostdata.vllm's defaults for a Qwen3.5 service).
PATCHES = ("inc-hybrid-fp8", "rope-keys-set")
#: Part of every cache key: bump it when this module builds differently.
LAYOUT = b"2"


@dataclass(frozen=True)
class Trees:
    version: str
    pristine: Path
    patched: Path
    record: Path  # apply.py's record of the patched tree (what the image keeps as applied.json)


@dataclass(frozen=True)
class Env:
    python: Path
    trees: dict[str, Trees]
    timings: dict[str, float]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in (LAYOUT, *parts):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _tree_digest(root: Path) -> bytes:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        out.append(f"{path.relative_to(root)}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return b"".join(out)


def find_python() -> Path | None:
    """A Python 3.11 interpreter (the one the torch file on disk is for)."""
    candidates = [Path(sys.executable), Path(getattr(sys, "_base_executable", sys.executable))]
    which = shutil.which("python3.11")
    if which:
        candidates.append(Path(which))
    for candidate in candidates:
        try:
            out = subprocess.run(
                [str(candidate), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        if out.strip() == "True":
            return candidate
    return None


@contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh(final: Path) -> Path:
    """``final`` emptied for a build in place (under the lock): paths recorded while building
    (a venv's, apply.py's record of the vLLM directory) stay true. ``.complete``, written last,
    marks a finished build; a killed one is started over."""
    shutil.rmtree(final, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path, stale_glob: str) -> None:
    for old in CACHE.glob(stale_glob):
        if old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def _build_venv(base_python: Path, key: str) -> Path:
    final = CACHE / f"venv-{key}"
    if (final / ".complete").is_file():
        return final
    tmp = _fresh(final)
    subprocess.run([str(base_python), "-m", "venv", str(tmp)], check=True)
    python = tmp / "bin" / "python"
    _pip(python, "--no-deps", TORCH)  # first and alone: nothing else may choose a torch
    _pip(python, "--no-deps", "-r", str(REQUIREMENTS))
    (tmp / ".complete").write_text(TORCH + "\n" + REQUIREMENTS.read_text())
    _publish(tmp, final, "venv-*")
    return final


def _build_pristine(python: Path, version: str) -> Path:
    wheel = vllm_wheel.wheel(version)
    key = _digest(wheel.name.encode(), str(wheel.stat().st_size).encode())
    final = CACHE / f"vllm-{version}-{key}"
    if (final / ".complete").is_file():
        return final
    tmp = _fresh(final)
    _pip(python, "--no-deps", "--target", str(tmp), str(wheel))
    (tmp / ".complete").write_text(wheel.name + "\n")
    _publish(tmp, final, f"vllm-{version}-*")
    return final


def _build_patched(python: Path, version: str, pristine: Path) -> tuple[Path, Path]:
    key = _digest(pristine.name.encode(), _tree_digest(VLLM_PATCH_DIR), ",".join(PATCHES).encode())
    final = CACHE / f"patched-{version}-{key}"
    if not (final / ".complete").is_file():
        tmp = _fresh(final)
        # Hard links: cheap, and safe because apply.py replaces each file it edits (new inode).
        tmp.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(pristine), str(tmp)], check=True)
        (tmp / ".complete").unlink()
        done = subprocess.run(
            [
                str(python),
                str(VLLM_PATCH_DIR / "rigkit_vllm_patches" / "apply.py"),
                "--patches",
                ",".join(PATCHES),
                "--record",
                str(tmp / "applied.json"),
            ],
            env={**os.environ, "PYTHONPATH": str(tmp)},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"apply.py failed on vLLM {version}:\n{done.stdout}\n{done.stderr}")
        (tmp / "apply.log").write_text(done.stdout)
        (tmp / ".complete").write_text(json.dumps({"patches": PATCHES}) + "\n")
        _publish(tmp, final, f"patched-{version}-*")
    return final, final / "applied.json"


def build(versions: tuple[str, ...] = vllm_wheel.VLLM_VERSIONS) -> Env:
    """The venv and every version's pristine and patched trees, built where missing."""
    base = find_python()
    if base is None:
        raise RuntimeError("no Python 3.11 here: the CPU torch on disk is for 3.11")
    venv_key = _digest(
        repr(PYTHON_VERSION).encode(), TORCH.encode(), REQUIREMENTS.read_bytes(), str(base.resolve()).encode()
    )
    timings: dict[str, float] = {}
    with _locked():
        t = time.monotonic()
        venv = _build_venv(base, venv_key)
        timings["venv"] = time.monotonic() - t
        python = venv / "bin" / "python"
        trees = {}
        for version in versions:
            t = time.monotonic()
            pristine = _build_pristine(python, version)
            patched, record = _build_patched(python, version, pristine)
            timings[version] = time.monotonic() - t
            trees[version] = Trees(version, pristine, patched, record)
    return Env(python, trees, timings)


def run(env: Env, tree: Path, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``script`` (a file of tests/vllm_cpu_cases, or a path) under the venv, vLLM from ``tree``."""
    path = CASES / script if not Path(script).is_absolute() else Path(script)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "VLLM_", "CUDA_"))}
    environ.update(
        # This checkout's rigkit_vllm_patches (what the image copies to /opt/rigkit/vllm): the
        # cached tree's .pth names the checkout that built it, which may be gone.
        PYTHONPATH=os.pathsep.join((str(tree), str(VLLM_PATCH_DIR))),
        PYTHONDONTWRITEBYTECODE="1",  # the cached trees stay as built
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_LOGGING_LEVEL="WARNING",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [str(env.python), str(path), *args], env=environ, capture_output=True, text=True, timeout=timeout
    )
