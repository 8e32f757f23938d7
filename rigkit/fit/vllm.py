"""
vLLM's memory per GPU, from a checkpoint's shape and the service's options.

vLLM takes ``gpu_memory_utilization`` x each GPU's total memory as its budget (vLLM's
``gpu_worker.py`` ``determine_available_memory``: the budget less the weights and the peak of a
profiling forward pass is what it gives the KV cache), and refuses to start when that KV
cache cannot hold one sequence of ``max_model_len`` tokens. So a service fits when, on every
GPU, its weights (split by tensor and pipeline parallelism), the profiling peak and the CUDA
context leave room for ``max_model_len`` tokens of KV cache (and, for linear-attention layers,
one sequence's recurrent state) inside the budget; and the budget itself must be free when
it starts. On a GB10 the memory is the host's, shared with the OS and the page cache
(``drop_page_cache``): the plan says so. Not planned: the memory of vLLM's CUDA graphs
(captured after the KV cache is sized, inside the same budget) and a KV cache dtype other
than the checkpoint's (rigkit's argv sets none: ``rigkit.render.vllm``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rigkit.fit.budget import GpuMemory, GpuNeed, cuda_context_bytes
from rigkit.fit.shape import ModelShape

#: vLLM's default max_num_batched_tokens for the profiling pass (its scheduler default of
#: 8192 tokens under chunked prefill); the service's own when it sets one.
PROFILE_TOKENS = 8192
F32 = 4


def kv_bytes_per_token(shape: ModelShape, tp: int, dtype_bytes: int) -> int:
    """K and V of every attention layer for one token, on one GPU of ``tp``."""
    total = 0
    for il in range(shape.n_layer):
        if shape.has_kv(il):
            k, v = shape.kv_elements(il)
            total += (k + v) * dtype_bytes
    return total // max(tp, 1)


def plan(
    shape: ModelShape,
    gpus: Sequence[GpuMemory],
    *,
    max_model_len: int,
    gpu_memory_utilization: float,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    max_num_batched_tokens: int | None = None,
) -> list[GpuNeed]:
    """Each GPU's need against its budget (``gpu_memory_utilization`` x total)."""
    ranks = max(tensor_parallel, 1) * max(pipeline_parallel, 1)
    used = list(gpus)[:ranks]
    tokens = max_num_batched_tokens or PROFILE_TOKENS
    needs = []
    for g in used:
        need = GpuNeed(g, layers=list(range(shape.n_layer)), output=True)
        need.weights = shape.weight_bytes // ranks
        per_seq_state = sum(
            (shape.n_embd_r + shape.n_embd_s) * F32 for il in range(shape.n_layer) if il in shape.recurrent
        )
        need.kv = (
            kv_bytes_per_token(shape, tensor_parallel, shape.dtype_bytes) * max_model_len
            + per_seq_state // max(tensor_parallel, 1)
        ) // max(pipeline_parallel, 1)
        # The profiling pass: activations of max_num_batched_tokens through one layer and
        # the logits of the sampled tokens (estimate, as for llama.cpp).
        need.compute = tokens * shape.dtype_bytes * (4 * shape.n_embd + 2 * shape.n_ff) // max(tensor_parallel, 1)
        need.other = cuda_context_bytes(g.name)
        need.budget = int(g.total_bytes * gpu_memory_utilization)
        needs.append(need)
    return needs
