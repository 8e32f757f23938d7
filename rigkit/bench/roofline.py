"""
The decode ceiling set by memory bandwidth: every generated token reads the weights it uses
(all of a dense model's; for a mixture of experts, the shared tensors plus
``expert_used_count / expert_count`` of the expert tensors) and the K/V cache of the
context so far. ceiling = bandwidth / bytes read per token. Seed 003 calls 38.4 tok/s the
ceiling of a DGX Spark at 273 GB/s; this says so with the model's own tensor sizes.

With layer split over several GPUs the layers run one after another, each GPU reading its
share at its own bandwidth, so the ceiling is one GPU's bandwidth over the total; with row
(tensor-parallel) split the GPUs read at once and the bandwidths add.
"""

from __future__ import annotations

from typing import Any

# Nominal memory bandwidth in bytes/s, by a substring of the name nvidia-smi prints
# (the first match wins: specific names first).
BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5 80GB HBM3
    ("GH200", 4.0e12),
    ("B200", 8.0e12),
    ("GB10", 273e9),  # DGX Spark, LPDDR5x
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 864e9),
    ("L40", 864e9),
    ("L4", 300e9),
    ("A10G", 600e9),
    ("A10", 600e9),
    ("RTX 6000 Ada", 960e9),
    ("RTX A6000", 768e9),
    ("RTX PRO 6000", 1.792e12),
    ("RTX 5090", 1.792e12),
    ("RTX 4090", 1.008e12),
    ("RTX 3090 Ti", 1.008e12),
    ("RTX 3090", 936e9),
    ("RTX 3080", 760e9),
    ("V100", 900e9),
    ("T4", 320e9),
]

KV_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
}


def bandwidth_for(gpu_name: str) -> float | None:
    for key, bw in BANDWIDTH:
        if key.lower() in gpu_name.lower():
            return bw
    return None


def weights_per_token(model: dict[str, Any]) -> dict[str, Any] | None:
    """Bytes of weights one decoded token reads, from the GGUF's tensor list
    (``hostside.model_info``): every tensor but the input embedding (a row gather), the
    expert tensors (``*_exps``) scaled by the share of experts used."""
    tensors = model.get("tensors") or []
    if not tensors or any(t.get("bytes") is None for t in tensors):
        return None
    meta = model.get("meta") or {}
    arch = meta.get("general.architecture", "")
    n_expert = meta.get(f"{arch}.expert_count") or 0
    n_used = meta.get(f"{arch}.expert_used_count") or 0
    total = dense = experts = 0
    for t in tensors:
        total += t["bytes"]
        if t["name"].startswith("token_embd."):
            continue
        if "_exps." in t["name"] and n_expert:
            experts += t["bytes"]
        else:
            dense += t["bytes"]
    share = (n_used / n_expert) if n_expert and n_used else 1.0
    return {
        "file_bytes": total,
        "dense_bytes": dense,
        "expert_bytes": experts,
        "expert_share": share,
        "bytes_per_token": dense + experts * share,
        "architecture": arch,
        "expert_count": n_expert,
        "expert_used_count": n_used,
    }


def kv_per_token_of_context(model: dict[str, Any], type_k: str = "f16", type_v: str = "f16") -> float | None:
    """Bytes of K and V cache read per token of context, per decoded token (all layers
    counted as attention layers: an upper bound for hybrid models with recurrent layers)."""
    meta = model.get("meta") or {}
    arch = meta.get("general.architecture", "")
    layers = meta.get(f"{arch}.block_count")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv") or heads
    if isinstance(heads, list) or isinstance(kv_heads, list):
        kv_heads = max(kv_heads) if isinstance(kv_heads, list) else kv_heads
        heads = max(heads) if isinstance(heads, list) else heads
    embd = meta.get(f"{arch}.embedding_length")
    if not (layers and heads and kv_heads and embd):
        return None
    k_dim = meta.get(f"{arch}.attention.key_length") or embd // heads
    v_dim = meta.get(f"{arch}.attention.value_length") or embd // heads
    return layers * kv_heads * (k_dim * KV_BYTES.get(type_k, 2.0) + v_dim * KV_BYTES.get(type_v, 2.0))


def roofline(
    model: dict[str, Any] | None,
    gpu_names: list[str],
    split_mode: str = "layer",
    type_k: str = "f16",
    type_v: str = "f16",
    measured_bandwidth: float | None = None,
) -> dict[str, Any] | None:
    """What the ceiling needs: bandwidth (measured, or from the table) and bytes per token.
    None where either is unknown."""
    if not model:
        return None
    weights = weights_per_token(model)
    if weights is None:
        return None
    known = [b for b in (bandwidth_for(n) for n in gpu_names) if b]
    if measured_bandwidth:
        bw, source = measured_bandwidth, "measured"
    elif known and len(known) == len(gpu_names):
        bw = sum(known) if split_mode == "row" else min(known)
        source = (
            f"nominal ({gpu_names[0]}{' x' + str(len(gpu_names)) if len(gpu_names) > 1 else ''}, {split_mode} split)"
        )
    else:
        return {
            **weights,
            "bandwidth": None,
            "why": f"memory bandwidth of {gpu_names} unknown" if gpu_names else "no GPU",
        }
    return {
        **weights,
        "bandwidth": bw,
        "bandwidth_source": source,
        "kv_bytes_per_context_token": kv_per_token_of_context(model, type_k, type_v),
        "type_k": type_k,
        "type_v": type_v,
    }


def ceiling(roof: dict[str, Any] | None, context: float) -> float | None:
    """Decode tokens/s ceiling at a context of ``context`` tokens."""
    if not roof or not roof.get("bandwidth"):
        return None
    per_token = roof["bytes_per_token"] + (roof.get("kv_bytes_per_context_token") or 0) * context
    return roof["bandwidth"] / per_token
