"""Host data ``gpus``: how many GPUs the host has and their CUDA architectures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rigkit.hostdata.schema import HostDataError, NumericText, build, check_pattern

CUDA_ARCH = re.compile(r"\d{2,3}[af]?", re.ASCII)


@dataclass(frozen=True)
class Gpus:
    count: int = 0
    # CUDA architectures such as "86" (RTX 3090), "90" (H100), "121" (GB10). Empty: read
    # from the host's GPUs (nvidia-smi) at deploy time.
    cuda_arch: tuple[NumericText, ...] = ()
    # Each GPU's memory in MiB (one value: every GPU's), for the memory plan (rigkit.fit)
    # where nvidia-smi cannot be read. Empty: read from the host's GPUs.
    memory_mib: tuple[int, ...] = ()


def parse_gpus(host: str, raw: Any) -> Gpus:
    """``gpus: {"count": 6, "cuda_arch": ["86"], "memory_mib": [24576]}``."""
    gpus = build(Gpus, raw if raw is not None else {}, host, "gpus")
    if gpus.count < 0:
        raise HostDataError(host, "gpus.count", "0 or more", gpus.count)
    for i, arch in enumerate(gpus.cuda_arch):
        check_pattern(arch, CUDA_ARCH, host, f"gpus.cuda_arch[{i}]", 'a CUDA architecture like "86" or "121a"')
    if gpus.memory_mib and (len(gpus.memory_mib) not in (1, gpus.count) or any(m < 1 for m in gpus.memory_mib)):
        raise HostDataError(
            host, "gpus.memory_mib", f"one size in MiB (every GPU's) or {gpus.count}, one per GPU", gpus.memory_mib
        )
    return gpus
