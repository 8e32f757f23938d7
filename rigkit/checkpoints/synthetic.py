"""
Random-weight checkpoints with the tensor layout of Qwen3.5-122B-A10B's two public
checkpoints, at any size. STDLIB ONLY; written streaming (a tensor's bytes are generated in
chunks), so the same code makes the tiny ones the tests use and a real-shape one for a GPU
run (``Dims.real()``, about 70 GB for the INT4 one).

* :func:`write_int4_autoround`: Intel's AutoRound INT4 layout. Routed experts and the
  attention and linear-attention projections INT4, packed as AutoRound's ``auto_gptq``
  format writes them (``qweight`` int32 [in/8, out], ``qzeros`` int32 [in/group, out/8],
  ``scales`` F16 [in/group, out]; symmetric, so every zero point is 8, stored minus one as
  GPTQ v1 does: 0x77777777); shared experts, norms, gates and embeddings BF16; the MTP layer
  BF16 in ``model_extra_tensors.safetensors`` (785 tensors with 256 experts), mapped by the
  index or not (``mtp_in_index``: the hand-built hybrid's case).
* :func:`write_fp8`: Qwen's FP8 layout: every linear projection F8_E4M3 with F32
  ``weight_scale_inv`` blocks of [128, 128]; ``in_proj_a``/``in_proj_b``, norms and gates
  BF16; an FP8 MTP layer.

The linear-attention names follow the checkpoints (not vLLM's fused parameters): the FP8
one has ``in_proj_qkv``, ``in_proj_z``, ``in_proj_a``, ``in_proj_b``; the AutoRound one the
fused ``in_proj_qkvz`` (INT4) and ``in_proj_ba`` (BF16), which vLLM's qwen3_5 loader takes as
well. With 48 layers (every fourth full attention) this gives the seed's counts: 144
shared-expert layers replaced, 408 FP8 tensors without counterpart (8 per linear-attention
layer, 8 per attention layer, 24 of the FP8 MTP layer), 785 MTP tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .safetensors import CHUNK, DTYPE_BYTES, TensorOut, write_safetensors
from .sources import INDEX_NAME

PREFIX = "model.language_model."
BLOCK = 128
GROUP = 128
EXTRA_FILE = "model_extra_tensors.safetensors"
INT4_REPO = "Intel/Qwen3.5-122B-A10B-int4-AutoRound"
FP8_REPO = "Qwen/Qwen3.5-122B-A10B-FP8"


@dataclass(frozen=True)
class Dims:
    """Sizes; every projection dimension a multiple of 128 (FP8 blocks, INT4 groups)."""

    layers: int = 48
    experts: int = 2  # routed experts per layer of the main model
    mtp_experts: int = 256  # of the MTP layer (256 in the real model: 785 MTP tensors)
    hidden: int = 128
    intermediate: int = 128  # a routed expert's
    shared_intermediate: int = 128
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 128
    linear_qkv: int = 384  # linear attention: q, k, v together
    linear_value: int = 128
    linear_heads: int = 2
    vocab: int = 256
    full_every: int = 4

    @classmethod
    def real(cls) -> Dims:
        return cls(
            layers=48,
            experts=256,
            mtp_experts=256,
            hidden=3072,
            intermediate=1024,
            shared_intermediate=1024,
            heads=32,
            kv_heads=2,
            head_dim=256,
            linear_qkv=12288,
            linear_value=8192,
            linear_heads=64,
            vocab=248320,
        )

    def is_full(self, layer: int) -> bool:
        return layer % self.full_every == self.full_every - 1


def _values(dtype: str, n: int, rng: random.Random) -> Iterator[bytes]:
    """``n`` elements of small finite values (no NaN or infinity a GPU run would trip on)."""
    size = DTYPE_BYTES[dtype]
    step = max(size, CHUNK // size * size)
    left = n * size
    while left:
        k = min(step, left)
        raw = bytearray(rng.randbytes(k))
        if dtype == "BF16":
            raw[1::2] = bytes((b & 0x80) | 0x3C for b in raw[1::2])  # |x| < 0.03
        elif dtype == "F16":
            raw[1::2] = bytes(0x20 | (b & 0x03) for b in raw[1::2])  # ~0.008, positive
        elif dtype == "F8_E4M3":
            raw = bytearray(b & 0xB7 for b in raw)  # exponent below 0111: |x| < 1
        elif dtype == "F32":
            raw = bytearray(struct.pack(f"<{k // 4}f", *(0.001 + rng.random() / 1000 for _ in range(k // 4))))
        left -= k
        yield bytes(raw)


def _const(word: bytes, n: int) -> Iterator[bytes]:
    per = max(1, CHUNK // len(word))
    left = n
    while left:
        k = min(per, left)
        left -= k
        yield word * k


class _Shard:
    def __init__(self, seed: int):
        self.tensors: list[TensorOut] = []
        self.seed = seed

    def add(self, name: str, dtype: str, shape: tuple[int, ...], fill: Callable[[int], Iterator[bytes]] | None = None):
        n = 1
        for d in shape:
            n *= d
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{name}".encode()).digest()[:8], "little")
        chunks = (lambda: fill(n)) if fill else (lambda: _values(dtype, n, random.Random(seed)))
        self.tensors.append(TensorOut(name, dtype, shape, chunks))

    def dense(self, name: str, out: int, inp: int, dtype: str = "BF16") -> None:
        self.add(f"{name}.weight", dtype, (out, inp))

    def int4(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.qweight", "I32", (inp // 8, out))
        self.add(f"{name}.qzeros", "I32", (inp // GROUP, out // 8), lambda n: _const(b"\x77\x77\x77\x77", n))
        self.add(f"{name}.scales", "F16", (inp // GROUP, out))

    def fp8(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.weight", "F8_E4M3", (out, inp))
        self.add(f"{name}.weight_scale_inv", "F32", (-(-out // BLOCK), -(-inp // BLOCK)))


def _layer(s: _Shard, d: Dims, p: str, i: int, linear: Callable[[str, int, int], None], fp8_layout: bool) -> None:
    s.add(f"{p}input_layernorm.weight", "BF16", (d.hidden,))
    s.add(f"{p}post_attention_layernorm.weight", "BF16", (d.hidden,))
    if d.is_full(i):
        a = f"{p}self_attn."
        linear(f"{a}q_proj", 2 * d.heads * d.head_dim, d.hidden)  # query and gate
        linear(f"{a}k_proj", d.kv_heads * d.head_dim, d.hidden)
        linear(f"{a}v_proj", d.kv_heads * d.head_dim, d.hidden)
        linear(f"{a}o_proj", d.hidden, d.heads * d.head_dim)
        s.add(f"{a}q_norm.weight", "BF16", (d.head_dim,))
        s.add(f"{a}k_norm.weight", "BF16", (d.head_dim,))
    else:
        a = f"{p}linear_attn."
        if fp8_layout:
            linear(f"{a}in_proj_qkv", d.linear_qkv, d.hidden)
            linear(f"{a}in_proj_z", d.linear_value, d.hidden)
            s.dense(f"{a}in_proj_a", d.linear_heads, d.hidden)
            s.dense(f"{a}in_proj_b", d.linear_heads, d.hidden)
        else:
            linear(f"{a}in_proj_qkvz", d.linear_qkv + d.linear_value, d.hidden)
            s.dense(f"{a}in_proj_ba", 2 * d.linear_heads, d.hidden)
        linear(f"{a}out_proj", d.hidden, d.linear_value)
        s.add(f"{a}conv1d.weight", "BF16", (d.linear_qkv, 1, 4))
        s.add(f"{a}A_log", "F32", (d.linear_heads,))
        s.add(f"{a}dt_bias", "BF16", (d.linear_heads,))
        s.add(f"{a}norm.weight", "F32", (d.linear_value // d.linear_heads,))


def _moe(s: _Shard, d: Dims, p: str, experts: int, routed: Callable[[str, int, int], None], shared_fp8: bool) -> None:
    m = f"{p}mlp."
    s.dense(f"{m}gate", experts, d.hidden)
    s.dense(f"{m}shared_expert_gate", 1, d.hidden)
    for proj, out, inp in (
        ("gate_proj", d.shared_intermediate, d.hidden),
        ("up_proj", d.shared_intermediate, d.hidden),
        ("down_proj", d.hidden, d.shared_intermediate),
    ):
        if shared_fp8:
            s.fp8(f"{m}shared_expert.{proj}", out, inp)
        else:
            s.dense(f"{m}shared_expert.{proj}", out, inp)
    for e in range(experts):
        for proj, out, inp in (
            ("gate_proj", d.intermediate, d.hidden),
            ("up_proj", d.intermediate, d.hidden),
            ("down_proj", d.hidden, d.intermediate),
        ):
            routed(f"{m}experts.{e}.{proj}", out, inp)


def _mtp(s: _Shard, d: Dims, fp8: bool) -> None:
    """The MTP layer: one full-attention decoder layer and its input projection (``fc``)."""
    linear = s.fp8 if fp8 else s.dense
    s.dense("mtp.fc", d.hidden, 2 * d.hidden)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        s.add(f"mtp.{norm}.weight", "BF16", (d.hidden,))
    full = Dims(**{**d.__dict__, "full_every": 1})
    _layer(s, full, "mtp.layers.0.", 0, linear, fp8_layout=fp8)
    _moe(s, d, "mtp.layers.0.", d.mtp_experts, linear, shared_fp8=fp8)


def _config(d: Dims, quantization: dict | None) -> dict:
    text = {
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "num_experts": d.experts,
        "moe_intermediate_size": d.intermediate,
        "shared_expert_intermediate_size": d.shared_intermediate,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "linear_num_value_heads": d.linear_heads,
        "vocab_size": d.vocab,
        "layer_types": ["full_attention" if d.is_full(i) else "linear_attention" for i in range(d.layers)],
        "mtp_num_hidden_layers": 1,
        "model_type": "qwen3_5_moe_text",
    }
    cfg: dict = {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text,
    }
    if quantization:
        cfg["quantization_config"] = quantization
    return cfg


def _write(out: Path, shards: dict[str, _Shard], config: dict, index_files: set[str]) -> dict[str, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    names: dict[str, list[str]] = {}
    for file, shard in shards.items():
        write_safetensors(out / file, shard.tensors, {"format": "pt"})
        names[file] = [t.name for t in shard.tensors]
        if file in index_files:
            weight_map.update({t.name: file for t in shard.tensors})
    total = sum(t.nbytes for f in index_files for t in shards[f].tensors)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text('{"model_max_length": 262144}\n')
    return names


def _main_model(d: Dims, seed: int, shards_of: int, linear, routed, fp8_layout: bool) -> dict[str, _Shard]:
    count = -(-d.layers // shards_of) + 1
    files = [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    shards = {f: _Shard(seed + k) for k, f in enumerate(files)}
    first = shards[files[0]]
    first.dense(f"{PREFIX}embed_tokens", d.vocab, d.hidden)
    for i in range(d.layers):
        s = shards[files[1 + i // shards_of]]
        p = f"{PREFIX}layers.{i}."
        _layer(s, d, p, i, functools.partial(linear, s), fp8_layout)
        _moe(s, d, p, d.experts, functools.partial(routed, s), shared_fp8=fp8_layout)
    last = shards[files[-1]]
    last.add(f"{PREFIX}norm.weight", "BF16", (d.hidden,))
    last.dense("lm_head", d.vocab, d.hidden)
    return shards


def write_int4_autoround(
    out: str | Path, dims: Dims = Dims(), *, mtp_in_index: bool = True, seed: int = 1, layers_per_shard: int = 12
) -> dict[str, list[str]]:
    """The AutoRound INT4 layout in ``out``; returns each file's tensor names."""
    shards = _main_model(dims, seed, layers_per_shard, _Shard.int4, _Shard.int4, fp8_layout=False)
    extra = _Shard(seed + 1000)
    _mtp(extra, dims, fp8=False)
    shards[EXTRA_FILE] = extra
    indexed = set(shards) if mtp_in_index else set(shards) - {EXTRA_FILE}
    quantization = {
        "quant_method": "auto-round",
        "packing_format": "auto_round:auto_gptq",
        "bits": 4,
        "group_size": GROUP,
        "sym": True,
        "data_type": "int",
        "block_name_to_quantize": f"{PREFIX}layers",
        # AutoRound leaves these BF16: INC must not take them for INT4.
        "extra_config": {
            f"{PREFIX}layers.{i}.{m}": {"bits": 16, "data_type": "float"}
            for i in range(dims.layers)
            for m in (
                "mlp.gate",
                "mlp.shared_expert_gate",
                *(f"linear_attn.{x}" for x in ("in_proj_ba",) if not dims.is_full(i)),
            )
        }
        | {r".*shared_expert\.(gate|up|down)_proj": {"bits": 16, "data_type": "float"}},
    }
    return _write(Path(out), shards, _config(dims, quantization), indexed)


def write_fp8(
    out: str | Path, dims: Dims = Dims(), *, seed: int = 2, layers_per_shard: int = 12
) -> dict[str, list[str]]:
    """Qwen's FP8 layout in ``out``; returns each file's tensor names."""
    shards = _main_model(dims, seed, layers_per_shard, _Shard.fp8, _Shard.fp8, fp8_layout=True)
    mtp = _Shard(seed + 1000)
    _mtp(mtp, dims, fp8=True)
    shards["model-mtp.safetensors"] = mtp
    quantization = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [BLOCK, BLOCK],
    }
    return _write(Path(out), shards, _config(dims, quantization), set(shards))
