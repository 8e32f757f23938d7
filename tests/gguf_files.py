"""
GGUF files for the memory plan's tests, written in llama.cpp's layout (``ggml/src/gguf.cpp``,
``gguf-py`` key names): the header in full, the data section left sparse (the file has its
full size, the plan reads headers only), so a 100 GB model costs a few KB of disk.
"""

from __future__ import annotations

import struct
from pathlib import Path

from rigkit.fit.gguf import GGML_TYPES, STRING

TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _value(v) -> bytes:
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v) if 0 <= v < 1 << 32 else struct.pack("<Iq", 11, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, str):
        return struct.pack("<I", STRING) + _str(v)
    if isinstance(v, list) and v and isinstance(v[0], str):
        return struct.pack("<IIQ", 9, STRING, len(v)) + b"".join(_str(x) for x in v)
    if isinstance(v, list) and v and isinstance(v[0], bool):
        return struct.pack("<IIQ", 9, 7, len(v)) + b"".join(struct.pack("<?", x) for x in v)
    if isinstance(v, list):
        return struct.pack("<IIQ", 9, 4, len(v)) + b"".join(struct.pack("<I", x) for x in v)
    raise TypeError(v)


def header(metadata: dict, tensors: list[tuple[str, str, tuple[int, ...]]], alignment: int = 32) -> tuple[bytes, int]:
    """(header bytes padded to the data section, data section size)."""
    out = [b"GGUF", struct.pack("<Iqq", 3, len(tensors), len(metadata))]
    for k, v in metadata.items():
        out.append(_str(k) + _value(v))
    offset = 0
    for name, type_name, shape in tensors:
        _, block, size = GGML_TYPES[TYPE_IDS[type_name]]
        elements = 1
        for d in shape:
            elements *= d
        out.append(_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<q", d) for d in shape))
        out.append(struct.pack("<IQ", TYPE_IDS[type_name], offset))
        offset += -(-(elements // block * size) // alignment) * alignment
    raw = b"".join(out)
    return raw + b"\0" * (-len(raw) % alignment), offset


def write(path: Path, metadata: dict, tensors: list[tuple[str, str, tuple[int, ...]]]) -> Path:
    raw, data = header(metadata, tensors)
    with open(path, "wb") as f:
        f.write(raw)
        f.truncate(len(raw) + data)  # sparse: no data written
    return path


def vocab(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def llama(
    path: Path, *, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, wtype="Q8_0"
) -> Path:
    """A llama-shaped model (Llama-3-8B's sizes by default)."""
    head = n_embd // n_head
    meta = {
        "general.architecture": "llama",
        "general.alignment": 32,
        "llama.block_count": n_layer,
        "llama.context_length": 131072,
        "llama.embedding_length": n_embd,
        "llama.feed_forward_length": n_ff,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv,
        "llama.rope.freq_base": 500000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": vocab(n_vocab),
    }
    tensors = [("token_embd.weight", wtype, (n_embd, n_vocab))]
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", "F32", (n_embd,)),
            (b + "attn_q.weight", wtype, (n_embd, n_embd)),
            (b + "attn_k.weight", wtype, (n_embd, head * n_head_kv)),
            (b + "attn_v.weight", wtype, (n_embd, head * n_head_kv)),
            (b + "attn_output.weight", wtype, (n_embd, n_embd)),
            (b + "ffn_norm.weight", "F32", (n_embd,)),
            (b + "ffn_gate.weight", wtype, (n_embd, n_ff)),
            (b + "ffn_up.weight", wtype, (n_embd, n_ff)),
            (b + "ffn_down.weight", wtype, (n_ff, n_embd)),
        ]
    tensors += [("output_norm.weight", "F32", (n_embd,)), ("output.weight", wtype, (n_embd, n_vocab))]
    return write(path, meta, tensors)


def qwen35moe(
    path: Path,
    *,
    n_layer=48,
    n_embd=3072,
    n_expert=256,
    n_expert_used=8,
    n_ff_exp=1024,
    n_vocab=248320,
    wtype="Q6_K",
    shards=1,
) -> list[Path]:
    """A hybrid linear/full-attention MoE in Qwen3.5-122B-A10B's sizes (every 4th layer full
    attention, 2 KV heads of 256; gated delta net with 16 key heads and 64 value heads of
    128, conv kernel 4): its header keys as llama.cpp's converter writes them."""
    meta = {
        "general.architecture": "qwen35moe",
        "qwen35moe.block_count": n_layer,
        "qwen35moe.context_length": 262144,
        "qwen35moe.embedding_length": n_embd,
        "qwen35moe.attention.head_count": 32,
        "qwen35moe.attention.head_count_kv": 2,
        "qwen35moe.attention.key_length": 256,
        "qwen35moe.attention.value_length": 256,
        "qwen35moe.expert_count": n_expert,
        "qwen35moe.expert_used_count": n_expert_used,
        "qwen35moe.expert_feed_forward_length": n_ff_exp,
        "qwen35moe.expert_shared_feed_forward_length": n_ff_exp,
        "qwen35moe.full_attention_interval": 4,
        "qwen35moe.ssm.conv_kernel": 4,
        "qwen35moe.ssm.inner_size": 64 * 128,
        "qwen35moe.ssm.state_size": 128,
        "qwen35moe.ssm.group_count": 16,
        "qwen35moe.ssm.time_step_rank": 64,
        "tokenizer.ggml.tokens": vocab(n_vocab),
    }
    layers = []
    for i in range(n_layer):
        b = f"blk.{i}."
        t = [(b + "attn_norm.weight", "F32", (n_embd,))]
        if (i + 1) % 4:
            t += [
                (b + "attn_qkv.weight", "Q8_0", (n_embd, 2 * 16 * 128 + 64 * 128)),
                (b + "attn_gate.weight", "Q8_0", (n_embd, 64 * 128)),
                (b + "ssm_conv1d.weight", "F32", (4, 2 * 16 * 128 + 64 * 128)),
                (b + "ssm_out.weight", "Q8_0", (64 * 128, n_embd)),
            ]
        else:
            t += [
                (b + "attn_q.weight", "Q8_0", (n_embd, 2 * 32 * 256)),
                (b + "attn_k.weight", "Q8_0", (n_embd, 2 * 256)),
                (b + "attn_v.weight", "Q8_0", (n_embd, 2 * 256)),
                (b + "attn_output.weight", "Q8_0", (32 * 256, n_embd)),
            ]
        t += [
            (b + "ffn_gate_inp.weight", "F32", (n_embd, n_expert)),
            (b + "ffn_gate_exps.weight", wtype, (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_up_exps.weight", wtype, (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_down_exps.weight", wtype, (n_ff_exp, n_embd, n_expert)),
            (b + "ffn_gate_shexp.weight", "Q8_0", (n_embd, n_ff_exp)),
            (b + "ffn_up_shexp.weight", "Q8_0", (n_embd, n_ff_exp)),
            (b + "ffn_down_shexp.weight", "Q8_0", (n_ff_exp, n_embd)),
        ]
        layers.append(t)
    head = [("token_embd.weight", "Q8_0", (n_embd, n_vocab))]
    tail = [("output_norm.weight", "F32", (n_embd,)), ("output.weight", "Q8_0", (n_embd, n_vocab))]
    per = -(-n_layer // shards)
    paths = []
    for s in range(shards):
        tensors = [t for layer in layers[s * per : (s + 1) * per] for t in layer]
        tensors = (head if s == 0 else []) + tensors + (tail if s == shards - 1 else [])
        name = f"{path.name}-{s + 1:05d}-of-{shards:05d}.gguf" if shards > 1 else f"{path.name}.gguf"
        paths.append(write(path.with_name(name), meta if s == 0 else {"split.no": s, "split.count": shards}, tensors))
    return paths
