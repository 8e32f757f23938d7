"""
The plan of one llama-server on one GPU from a local GGUF, for a benchmark script to set
against what llama-server logs (``CUDA0 model buffer size``, ``KV buffer size``, ``compute
buffer size``) and what nvidia-smi says the process uses.
"""

from __future__ import annotations

import glob

from rigkit.fit import llama_cpp
from rigkit.fit.budget import GpuMemory
from rigkit.fit.shape import from_gguf_files
from rigkit.hostdata.llama_server import SHARD


def planned_bytes(
    gguf_path: str,
    *,
    ctx: int,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_gpu_layers: int = 999,
    flash_attn: bool = True,
    gpu_name: str = "NVIDIA H200",
    gpu_bytes: int = 143771 << 20,
    file_size: int | None = None,
) -> dict[str, int]:
    """Bytes planned on the one GPU (``--split-mode none``) for llama-server loading
    ``gguf_path`` (its first shard; the others beside it are read too) with these flags:
    ``weights`` (llama.cpp's model buffer on the GPU), ``kv`` (KV buffer and recurrent
    state), ``compute`` (compute buffer), ``other`` (the CUDA context), ``total``, and
    ``cpu`` (what stays on the CPU: the input embeddings, layers not offloaded).

    + gguf_path: the model's .gguf (first shard)
    + ctx, parallel, cache_type_k, cache_type_v, n_gpu_layers, flash_attn: llama-server's -c,
      --parallel, -ctk, -ctv, -ngl, -fa on/off
    + gpu_name, gpu_bytes: the GPU (its name picks the CUDA context constant)
    + file_size: ``gguf_path`` is a copy of a single-file model's header only (the bytes up
      to its tensor data); the model file is this large
    """
    shard = SHARD.search(gguf_path)
    files = glob.glob(glob.escape(gguf_path[: shard.start()]) + "-*-of-*.gguf") if shard else [gguf_path]
    sizes = {gguf_path: file_size} if file_size is not None and not shard else None
    shape = from_gguf_files(files, gguf_path, sizes)
    [need], cpu = llama_cpp.plan(
        shape,
        [GpuMemory(0, gpu_name, gpu_bytes)],
        ctx=ctx,
        parallel=parallel,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        n_gpu_layers=n_gpu_layers,
        split_mode="none",
        flash_attn=flash_attn,
    )
    return {
        "weights": need.weights,
        "kv": need.kv,
        "compute": need.compute,
        "other": need.other,
        "total": need.need,
        "cpu": cpu,
    }
