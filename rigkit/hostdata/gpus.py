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


def parse_gpus(host: str, raw: Any) -> Gpus:
    """``gpus: {"count": 6, "cuda_arch": ["86"]}``."""
    gpus = build(Gpus, raw if raw is not None else {}, host, "gpus")
    if gpus.count < 0:
        raise HostDataError(host, "gpus.count", "0 or more", gpus.count)
    for i, arch in enumerate(gpus.cuda_arch):
        check_pattern(arch, CUDA_ARCH, host, f"gpus.cuda_arch[{i}]", 'a CUDA architecture like "86" or "121a"')
    return gpus
