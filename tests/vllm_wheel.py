"""The real vLLM sources the patches target, from PyPI's wheel (downloaded once with pip into
/var/cache/rigkit/wheels and reused); only the .py files a test asks for are unpacked."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

VLLM_VERSION = "0.19.1"
#: Every vLLM version rigkit supports (rigkit.hostdata.option_tables.VLLM_VERSIONS): the oldest
#: line kept and the current one the inventories pin.
VLLM_VERSIONS = ("0.19.1", "0.20.2")
WHEELS = Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit")) / "wheels"
#: What the patches edit, and what the applier reads (the version).
PATCHED_FILES = (
    "vllm/__init__.py",
    "vllm/_version.py",
    "vllm/version.py",
    "vllm/env_override.py",  # imports torch first: the import chain stops there
    "vllm/model_executor/layers/quantization/inc.py",
    "vllm/transformers_utils/configs/qwen3_5.py",
    "vllm/transformers_utils/configs/qwen3_5_moe.py",
)


def wheel(version: str = VLLM_VERSION) -> Path:
    found = sorted(WHEELS.glob(f"vllm-{version}-*.whl"))
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", f"vllm=={version}", "--no-deps", "-d", str(WHEELS)], check=True
    )
    return sorted(WHEELS.glob(f"vllm-{version}-*.whl"))[0]


def unpack(dest: Path, names: tuple[str, ...] = PATCHED_FILES, version: str = VLLM_VERSION) -> Path:
    """The named files of the wheel under ``dest`` (``dest/vllm/...``); returns ``dest/vllm``."""
    with zipfile.ZipFile(wheel(version)) as zf:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    return dest / "vllm"
