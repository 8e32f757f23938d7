"""
One GPU's planned memory (:class:`GpuNeed`: weights, KV cache, compute buffers, other) against
what it has (:class:`GpuMemory`), and the table a refusal and ``rigkit plan`` print.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1 << 30
MIB = 1 << 20

#: What a CUDA process holds on each GPU it uses before any buffer: its context (the
#: driver's, cuBLAS's and the kernels' images). nvidia-smi counts it in the process's used
#: memory; llama.cpp's buffer log lines do not. A few hundred MiB by NVIDIA's
#: documentation and the lead's H200 measurement (README "Planning"); per GPU kind where
#: known, else :data:`CUDA_CONTEXT_DEFAULT`.
CUDA_CONTEXT_MIB: dict[str, int] = {}
CUDA_CONTEXT_DEFAULT = 400 * MIB
#: A GB10's memory is the host's (nvidia-smi reports no memory.total): NVIDIA's figure for
#: the DGX Spark, shared with the OS, so less is free at start (rigkit.fit.vllm says so).
UNIFIED_MEMORY = {"NVIDIA GB10": 128 * 10**9}


def cuda_context_bytes(name: str) -> int:
    return CUDA_CONTEXT_MIB[name] * MIB if name in CUDA_CONTEXT_MIB else CUDA_CONTEXT_DEFAULT


@dataclass(frozen=True)
class GpuMemory:
    """One GPU a service may use: its host index, name and memory."""

    index: int
    name: str
    total_bytes: int
    unified: bool = False  # shared with the host (GB10)


@dataclass
class GpuNeed:
    """What a plan puts on one GPU, by what."""

    gpu: GpuMemory
    weights: int = 0
    kv: int = 0  # KV cache, and recurrent state where layers hold it
    compute: int = 0
    other: int = 0  # the CUDA context
    layers: list[int] = field(default_factory=list)
    output: bool = False  # the output layer is here
    budget: int | None = None  # vLLM: gpu_memory_utilization x total; else the total
    taken: int = 0  # planned for the host's services before this one on the same GPU

    @property
    def need(self) -> int:
        return self.weights + self.kv + self.compute + self.other

    @property
    def have(self) -> int:
        free = self.gpu.total_bytes - self.taken
        return free if self.budget is None else min(self.budget, free)

    @property
    def holds(self) -> int:
        """What the service will hold on the GPU: vLLM takes its whole budget."""
        return self.need if self.budget is None else max(self.budget, self.need)

    @property
    def fits(self) -> bool:
        return self.need <= self.have

    def to_data(self) -> dict:
        return {
            "gpu": self.gpu.index,
            "name": self.gpu.name,
            "have": self.have,
            **({"taken": self.taken} if self.taken else {}),
            "need": self.need,
            "weights": self.weights,
            "kv": self.kv,
            "compute": self.compute,
            "other": self.other,
            "layers": _ranges(self.layers),
            **({"output": True} if self.output else {}),
        }


def _ranges(layers: list[int]) -> str:
    if not layers:
        return ""
    out, start, prev = [], layers[0], layers[0]
    for il in [*layers[1:], None]:
        if il is not None and il == prev + 1:
            prev = il
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if il is not None:
            start = prev = il
    return ",".join(out)


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def table(needs: list[GpuNeed]) -> list[str]:
    """One line per GPU: need, have and by what (GiB)."""
    lines = [
        f"  {'GPU':<4} {'name':<24} {'layers':<10} {'weights':>8} {'KV':>8} {'compute':>8} {'other':>7} "
        f"{'need':>8} {'have':>8}  fits"
    ]
    for n in needs:
        short = n.need - n.have
        verdict = "yes" if short <= 0 else f"NO, short {gib(short)} GiB"
        lines.append(
            f"  {n.gpu.index:<4} {n.gpu.name[:24]:<24} {(_ranges(n.layers) + ('+out' if n.output else ''))[:10]:<10} "
            f"{gib(n.weights):>8} {gib(n.kv):>8} {gib(n.compute):>8} {gib(n.other):>7} {gib(n.need):>8} "
            f"{gib(n.have):>8}  {verdict}"
        )
    return lines
