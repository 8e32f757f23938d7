"""vLLM's CUDA platform presented on a machine without a GPU, the way vLLM's own tests present
it (``patch("vllm.platforms.current_platform", CudaPlatform())`` with ``get_device_capability``
patched): vLLM's own CudaPlatform class, the capability of a DGX Spark (SM 12.1). Importing the
class loads vLLM's compiled CUDA extensions (vllm._C and the rest), which need libcuda: empty
modules stand in for them, and four capability queries of its kernel library, asked at import
time by vLLM's FP8 helpers, are answered by SM (as vLLM's CUTLASS build answers). No kernel runs.
Call ``present()`` before importing any vLLM module that reads ``current_platform``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

#: torch.ops._C's capability queries -> the lowest SM that answers yes.
QUERIES = {
    "cutlass_scaled_mm_supports_fp8": 89,
    "cutlass_scaled_mm_supports_block_fp8": 90,
    "cutlass_scaled_mm_supports_fp4": 100,
    "cutlass_group_gemm_supported": 90,
}
_LIBRARY = None


def present(major: int = 12, minor: int = 1) -> object:
    """vLLM's own CudaPlatform as current_platform, with an empty vllm._C (see the docstring)."""
    from unittest import mock

    import vllm
    import vllm.platforms

    root = Path(vllm.__file__).parent
    for so in root.rglob("*.so"):  # _C, _C_stable_libtorch, _moe_C, vllm_flash_attn/_vllm_fa2_C, ...
        name = ".".join(("vllm", *so.relative_to(root).parent.parts, so.name.split(".")[0]))
        sys.modules.setdefault(name, types.ModuleType(name))
    # The kernel library's capability queries, asked at import time by vLLM's FP8 helpers: a
    # stand-in answer per SM (what vLLM's CUTLASS build reports; no kernel is called).
    import torch

    global _LIBRARY
    _LIBRARY = torch.library.Library("_C", "FRAGMENT")
    for op, lowest in QUERIES.items():
        _LIBRARY.define(f"{op}(int cuda_device_capability) -> bool")
        _LIBRARY.impl(op, lambda cap, lowest=lowest: cap >= lowest, "CompositeExplicitAutograd")
    from vllm.platforms.cuda import CudaPlatform
    from vllm.platforms.interface import DeviceCapability

    mock.patch.object(CudaPlatform, "get_device_capability", return_value=DeviceCapability(major, minor)).start()
    platform = CudaPlatform()
    vllm.platforms.current_platform = platform  # what patch("vllm.platforms.current_platform", ...) does
    return platform
