"""
llama.cpp's memory per GPU, from a model's shape and llama-server's flags, as llama.cpp b11312
places it (each rule cites its source; ``src/`` is llama.cpp's):

- Layers (``src/llama-model.cpp`` ``llama_model_base::load_tensors``): the tensor split (or,
  with none, each GPU's free memory) is summed to cumulative fractions ``splits``;
  ``i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)``, ``act = min(n_gpu_layers,
  n_layer + 1)``; layer ``il`` below ``i_gpu_start`` stays on the CPU, else goes to the first
  GPU whose cumulative fraction is above ``(il - i_gpu_start) / act``. The input layer (token
  embeddings) always stays on the CPU; the output layer is placed as layer ``n_layer`` would
  be (the last GPU when every layer is offloaded). ``--split-mode none`` puts everything on
  the main GPU (the first the service sees).
- KV cache (``src/llama-kv-cache.cpp`` constructor, ``src/llama-context.cpp``): ``n_ctx`` is
  ``-c`` padded to 256; with ``--parallel`` given (rigkit always gives it, so the KV is not
  unified) each of ``parallel`` streams holds ``n_ctx_seq = pad(n_ctx / parallel, 256)``
  cells. Each layer that has a KV cache (:meth:`ModelShape.has_kv`) holds, on its layer's
  device, K of ``row_size(type_k, n_embd_k_gqa)`` and V of ``row_size(type_v,
  n_embd_v_gqa)`` per cell.
- Recurrent state (``src/llama-memory-recurrent.cpp``): each recurrent layer holds
  ``max(1, parallel)`` rows (``n_rs_seq`` is 0 without MTP drafting) of ``n_embd_r`` and
  ``n_embd_s`` F32 values, on its layer's device.
- Compute buffers: llama.cpp sizes them by reserving the worst-case graph of one ubatch
  (``llama_context`` constructor, ``graph_reserve`` with ``n_ubatch`` tokens, default 512,
  ``common/common.h``). That size is not a closed formula; rigkit's estimate is the F32
  activations of one ubatch through the widest layer (:data:`ACTIVATION_ROWS` rows of
  ``n_embd`` and two of ``n_ff``), the attention scores of a ubatch against a stream's cells
  when flash attention is off (``n_head`` x cells x ubatch, F32), and on the output layer's
  GPU the larger of that and the logits (``n_vocab`` x ubatch, F32; the graph allocator
  reuses the layers' buffers for them). The lead's H200 measurement against
  llama-server's ``compute buffer size`` lines is in the README.
- Every GPU used holds a CUDA context (:func:`rigkit.fit.budget.cuda_context_bytes`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from rigkit.fit.budget import GpuMemory, GpuNeed, cuda_context_bytes
from rigkit.fit.gguf import row_bytes
from rigkit.fit.shape import ModelShape

N_UBATCH = 512  # common/common.h n_ubatch
KV_PAD = 256  # llama-context.cpp: GGML_PAD(n_ctx, 256), GGML_PAD(n_ctx_seq, 256)
ACTIVATION_ROWS = 4  # rows of n_embd an ubatch's layer keeps live at once (estimate)
F32 = 4


def pad(n: int, to: int) -> int:
    return -(-n // to) * to


def kv_cells(ctx: int, parallel: int) -> tuple[int, int]:
    """(cells per stream, streams) of llama-server's KV cache at ``-c ctx --parallel N``."""
    n_ctx = pad(ctx, KV_PAD)
    streams = max(1, parallel)
    return pad(n_ctx // streams, KV_PAD), streams


def layer_devices(n_layer: int, n_gpu_layers: int, fractions: Sequence[float], split_mode: str) -> list[int | None]:
    """The device of each layer and then of the output layer (index ``n_layer``): a GPU's
    position among the service's GPUs, or None for the CPU (llama-model.cpp load_tensors)."""
    if not fractions:
        return [None] * (n_layer + 1)
    if split_mode == "none":
        fractions = [1.0] + [0.0] * (len(fractions) - 1)
    n_gpu = n_gpu_layers if n_gpu_layers >= 0 else n_layer + 1  # llama_model::n_gpu_layers
    total = sum(fractions) or 1.0
    splits, running = [], 0.0
    for f in fractions:
        running += f
        splits.append(running / total)
    i_gpu_start = max(n_layer + 1 - n_gpu, 0)
    act = min(n_gpu, n_layer + 1)
    out: list[int | None] = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(None)
        else:
            # std::upper_bound over the cumulative splits, as float
            out.append(min(bisect.bisect_right(splits, (il - i_gpu_start) / act), len(splits) - 1))
    return out


def plan(
    shape: ModelShape,
    gpus: Sequence[GpuMemory],
    *,
    ctx: int,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_gpu_layers: int = 999,
    split_mode: str = "layer",
    tensor_split: Sequence[float] = (),
    flash_attn: bool = True,
    n_ubatch: int = N_UBATCH,
) -> tuple[list[GpuNeed], int]:
    """Each GPU's planned bytes, and the bytes left on the CPU (the input layer, layers not
    offloaded)."""
    n = shape.n_layer
    fractions = list(tensor_split) if any(tensor_split) else [float(g.total_bytes) for g in gpus]
    devices = layer_devices(n, n_gpu_layers, fractions, split_mode)
    needs = [GpuNeed(g) for g in gpus]
    cpu = shape.input_bytes + shape.other_bytes
    cells, streams = kv_cells(ctx, parallel)
    for il in range(n):
        dev = devices[il]
        kv = 0
        if shape.has_kv(il):
            k, v = shape.kv_elements(il)
            kv = cells * streams * (row_bytes(cache_type_k, k) + row_bytes(cache_type_v, v))
        elif il in shape.recurrent:
            kv = max(1, parallel) * (shape.n_embd_r + shape.n_embd_s) * F32
        if dev is None:
            cpu += shape.layer_bytes[il] + kv
            continue
        needs[dev].weights += shape.layer_bytes[il]
        needs[dev].kv += kv
        needs[dev].layers.append(il)
    out_dev = devices[n]
    if out_dev is None:
        cpu += shape.output_bytes
    else:
        needs[out_dev].weights += shape.output_bytes
        needs[out_dev].output = True
    activations = n_ubatch * F32 * (ACTIVATION_ROWS * shape.n_embd + 2 * shape.n_ff)
    if not flash_attn:
        activations += n_ubatch * F32 * max(shape.n_head) * cells
    for need in needs:
        if need.layers or need.output:
            # ggml-alloc reuses a layer's buffers for the logits: the output GPU's peak is the
            # larger of the two, not their sum.
            need.compute = max(activations, n_ubatch * F32 * shape.n_vocab) if need.output else activations
            need.other = cuda_context_bytes(need.gpu.name)
    return needs, cpu


def split_that_fits(shape: ModelShape, gpus: Sequence[GpuMemory], **flags) -> tuple[int, ...] | None:
    """A tensor split (layers per GPU, which llama.cpp takes as ratios) under which every GPU
    fits, as even as it gets: the GPUs filled in order (as llama.cpp's layer split places
    layers) up to the smallest share of each GPU's memory that holds every layer; None when
    no split does."""
    best = _fill(shape, gpus, 1.0, flags)
    if best is None:
        return None
    low, high = 0.0, 1.0
    for _ in range(12):
        mid = (low + high) / 2
        counts = _fill(shape, gpus, mid, flags)
        if counts is None:
            low = mid
        else:
            high, best = mid, counts
    return best


def _fill(shape: ModelShape, gpus: Sequence[GpuMemory], share: float, flags: dict) -> tuple[int, ...] | None:
    n = shape.n_layer
    counts = [0] * len(gpus)
    gpu = 0
    for il in range(n + 1):  # n: the output layer
        while gpu < len(gpus):
            counts[gpu] += 1
            needs, _ = plan(shape, gpus, **{**flags, "tensor_split": _fractions(counts, n - il, gpu)})
            if all(x.need <= share * x.have for x in needs[: gpu + 1]):
                break
            counts[gpu] -= 1
            gpu += 1
        else:
            return None
    needs, _ = plan(shape, gpus, **{**flags, "tensor_split": tuple(float(c) for c in counts)})
    return tuple(counts) if all(x.fits for x in needs) else None


def _fractions(counts: list[int], rest: int, gpu: int) -> tuple[float, ...]:
    """Counts so far with the layers not yet placed on the GPUs after ``gpu`` (or on it,
    when it is the last): a split to test the GPUs up to ``gpu`` with."""
    out = [float(c) for c in counts]
    if gpu + 1 < len(out):
        out[gpu + 1] += rest
    else:
        out[gpu] += rest
    return tuple(out)
