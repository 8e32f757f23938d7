#!/usr/bin/env python3
"""
Random-weight Qwen3.5-MoE checkpoints in the real layouts, small enough to load in seconds,
for serving seed 003's path with real vLLM (benchmarks/vllm-h200/README.md).

    models.py OUT_DIR [--tokenizer DIR]

writes, deterministically (the same bytes on every machine: a seeded numpy generator):

* ``OUT_DIR/int4``: Intel's AutoRound INT4 layout (``quant_method: auto-round``,
  ``packing_format: auto_round:auto_gptq``, 4 bits, group 128, symmetric): routed experts and
  the attention and linear-attention projections INT4 (``qweight`` I32 [in/8, out],
  ``qzeros`` I32 [in/128, out/8] all 0x77777777, ``scales`` F16 [in/128, out]); shared
  experts, routers, ``in_proj_a``/``in_proj_b``, norms and embeddings BF16 and listed in
  ``extra_config`` with ``bits: 16``; the MTP layer BF16 in
  ``model_extra_tensors.safetensors``, mapped by the index (as Intel's checkpoint does).
* ``OUT_DIR/fp8``: Qwen's FP8 layout (``quant_method: fp8``, ``weight_block_size`` [128,
  128]): every linear projection F8_E4M3 with F32 ``weight_scale_inv`` blocks; routers,
  ``in_proj_a``/``in_proj_b``, norms and embeddings BF16 (``modules_to_not_convert``); an
  FP8 MTP layer.

The hybrid INT4+FP8 checkpoint is built from these two by rigkit's derived-checkpoint code
(rigkit.checkpoints, branch ckpt): ``build_hybrid.py``.

Names and shapes are vLLM 0.20.2's ``Qwen3_5MoeForConditionalGeneration`` /
``Qwen3_5MoeMTP`` (vllm/model_executor/models/qwen3_5*.py,
vllm/transformers_utils/configs/qwen3_5_moe.py) under the checkpoints' prefix
``model.language_model.``. The linear-attention projections are stored unfused
(``in_proj_qkv``, ``in_proj_z``, ``in_proj_a``, ``in_proj_b``) as Qwen's checkpoints store
them: vLLM 0.20.2's ``Qwen3_5Model.load_weights`` maps those onto its fused parameters, while
a checkpoint tensor named ``in_proj_qkvz`` or ``in_proj_ba`` would be renamed to
``in_proj_qkvzz`` / ``in_proj_baa`` by its substring replacement and skipped. Every
projection dimension is a multiple of 128 (GPTQ-Marlin's tiles, INT4 groups, FP8 blocks).
No vision tower: the service runs with ``--language-model-only``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PREFIX = "model.language_model."
GROUP = 128
BLOCK = 128
EXTRA_FILE = "model_extra_tensors.safetensors"
INDEX = "model.safetensors.index.json"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Dims:
    layers: int = 8  # every fourth full attention: layers 3 and 7
    full_every: int = 4
    hidden: int = 512
    experts: int = 16
    top_k: int = 4
    intermediate: int = 256  # a routed expert's
    shared_intermediate: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 256
    linear_k_heads: int = 4
    linear_v_heads: int = 8
    linear_k_dim: int = 128
    linear_v_dim: int = 128
    conv_kernel: int = 4
    vocab: int = 8192
    max_positions: int = 262144

    def is_full(self, i: int) -> bool:
        return i % self.full_every == self.full_every - 1

    @property
    def linear_qkv(self) -> int:
        return 2 * self.linear_k_heads * self.linear_k_dim + self.linear_v_heads * self.linear_v_dim

    @property
    def linear_value(self) -> int:
        return self.linear_v_heads * self.linear_v_dim


DTYPE = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "F8_E4M3": 1}


class Shard:
    """One safetensors file being planned: (name, dtype, shape, bytes) per tensor."""

    def __init__(self, seed: int):
        self.tensors: list[tuple[str, str, tuple[int, ...], bytes]] = []
        self.seed = seed

    def _rng(self, name: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | None = None, scale: float = 0.02):
        n = int(np.prod(shape))
        if data is None:
            rng = self._rng(name)
            if dtype == "BF16":
                f = (rng.standard_normal(n, dtype=np.float32) * scale).astype(np.float32)
                data = (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
            elif dtype == "F16":
                data = (0.001 + rng.random(n, dtype=np.float32) * 0.002).astype(np.float16).tobytes()
            elif dtype == "F32":
                data = (0.001 + rng.random(n, dtype=np.float32) * 0.001).astype(np.float32).tobytes()
            elif dtype == "I32":
                data = rng.integers(0, 2**32, n, dtype=np.uint32).tobytes()
            elif dtype == "F8_E4M3":
                # sign kept, exponent below 0111: finite values of magnitude < 1, no NaN
                data = (rng.integers(0, 256, n, dtype=np.uint8) & 0xB7).astype(np.uint8).tobytes()
            else:
                raise ValueError(dtype)
        assert len(data) == n * DTYPE[dtype], name
        self.tensors.append((name, dtype, tuple(shape), data))

    def norm(self, name: str, size: int) -> None:
        self.add(f"{name}.weight", "BF16", (size,), scale=0.01)

    def dense(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.weight", "BF16", (out, inp))

    def int4(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.qweight", "I32", (inp // 8, out))
        self.add(f"{name}.qzeros", "I32", (inp // GROUP, out // 8), b"\x77\x77\x77\x77" * (inp // GROUP * out // 8))
        self.add(f"{name}.scales", "F16", (inp // GROUP, out))

    def fp8(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.weight", "F8_E4M3", (out, inp))
        self.add(f"{name}.weight_scale_inv", "F32", (-(-out // BLOCK), -(-inp // BLOCK)))

    def write(self, path: Path) -> int:
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, data in self.tensors:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for *_, data in self.tensors:
                f.write(data)
        return offset


def layer(s: Shard, d: Dims, p: str, full: bool, linear, fp8_layout: bool, experts_linear, shared_linear) -> None:
    s.norm(f"{p}input_layernorm", d.hidden)
    s.norm(f"{p}post_attention_layernorm", d.hidden)
    if full:
        a = f"{p}self_attn."
        linear(f"{a}q_proj", 2 * d.heads * d.head_dim, d.hidden)  # query and output gate
        linear(f"{a}k_proj", d.kv_heads * d.head_dim, d.hidden)
        linear(f"{a}v_proj", d.kv_heads * d.head_dim, d.hidden)
        linear(f"{a}o_proj", d.hidden, d.heads * d.head_dim)
        s.norm(f"{a}q_norm", d.head_dim)
        s.norm(f"{a}k_norm", d.head_dim)
    else:
        a = f"{p}linear_attn."
        linear(f"{a}in_proj_qkv", d.linear_qkv, d.hidden)
        linear(f"{a}in_proj_z", d.linear_value, d.hidden)
        s.dense(f"{a}in_proj_a", d.linear_v_heads, d.hidden)
        s.dense(f"{a}in_proj_b", d.linear_v_heads, d.hidden)
        linear(f"{a}out_proj", d.hidden, d.linear_value)
        s.add(f"{a}conv1d.weight", "BF16", (d.linear_qkv, 1, d.conv_kernel), scale=0.1)
        s.add(f"{a}A_log", "F32", (d.linear_v_heads,))
        s.add(f"{a}dt_bias", "BF16", (d.linear_v_heads,), scale=0.1)
        s.add(f"{a}norm.weight", "F32", (d.linear_v_dim,))
    m = f"{p}mlp."
    s.dense(f"{m}gate", d.experts, d.hidden)
    s.dense(f"{m}shared_expert_gate", 1, d.hidden)
    for proj, out, inp in (
        ("gate_proj", d.shared_intermediate, d.hidden),
        ("up_proj", d.shared_intermediate, d.hidden),
        ("down_proj", d.hidden, d.shared_intermediate),
    ):
        shared_linear(f"{m}shared_expert.{proj}", out, inp)
    for e in range(d.experts):
        for proj, out, inp in (
            ("gate_proj", d.intermediate, d.hidden),
            ("up_proj", d.intermediate, d.hidden),
            ("down_proj", d.hidden, d.intermediate),
        ):
            experts_linear(f"{m}experts.{e}.{proj}", out, inp)


def mtp(s: Shard, d: Dims, fp8: bool) -> None:
    """The MTP layer (Qwen3_5MoeMTP): fc over [embedding; hidden], one full-attention layer."""
    linear = s.fp8 if fp8 else s.dense
    s.dense("mtp.fc", d.hidden, 2 * d.hidden)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        s.norm(f"mtp.{norm}", d.hidden)
    layer(s, d, "mtp.layers.0.", True, linear, fp8, linear, linear)


def text_config(d: Dims, tok: dict) -> dict:
    return {
        "model_type": "qwen3_5_moe_text",
        "dtype": "bfloat16",
        "vocab_size": d.vocab,
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "layer_types": ["full_attention" if d.is_full(i) else "linear_attention" for i in range(d.layers)],
        "full_attention_interval": d.full_every,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "attn_output_gate": True,
        "linear_conv_kernel_dim": d.conv_kernel,
        "linear_key_head_dim": d.linear_k_dim,
        "linear_value_head_dim": d.linear_v_dim,
        "linear_num_key_heads": d.linear_k_heads,
        "linear_num_value_heads": d.linear_v_heads,
        "num_experts": d.experts,
        "num_experts_per_tok": d.top_k,
        "moe_intermediate_size": d.intermediate,
        "shared_expert_intermediate_size": d.shared_intermediate,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": d.max_positions,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "tie_word_embeddings": False,
        "eos_token_id": tok["eos"],
        "pad_token_id": tok["pad"],
        "bos_token_id": None,
    }


def config(d: Dims, tok: dict, quantization: dict) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text_config(d, tok),
        # Never built (--language-model-only); small so nothing sizes itself on it.
        "vision_config": {
            "model_type": "qwen3_5_moe",
            "depth": 1,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "out_hidden_size": d.hidden,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [],
        },
        "image_token_id": tok["<|image_pad|>"],
        "video_token_id": tok["<|video_pad|>"],
        "vision_start_token_id": tok["<|vision_start|>"],
        "vision_end_token_id": tok["<|vision_end|>"],
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "quantization_config": quantization,
        "rigkit_synthetic": {"dims": asdict(d), "weights": "random (seeded); speed and dispatch only"},
    }


def shards_of(d: Dims, seed: int, linear, experts_linear, shared_linear, fp8_layout: bool) -> dict[str, Shard]:
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    a, b = Shard(seed), Shard(seed + 1)
    a.dense(f"{PREFIX}embed_tokens", d.vocab, d.hidden)
    for i in range(d.layers):
        s = a if i < d.layers // 2 else b
        bind = lambda f, s=s: lambda n, o, k: f(s, n, o, k)  # noqa: E731
        layer(
            s,
            d,
            f"{PREFIX}layers.{i}.",
            d.is_full(i),
            bind(linear),
            fp8_layout,
            bind(experts_linear),
            bind(shared_linear),
        )
    b.norm(f"{PREFIX}norm", d.hidden)
    b.dense("lm_head", d.vocab, d.hidden)
    return dict(zip(files, (a, b)))


def write_dir(out: Path, shards: dict[str, Shard], cfg: dict, tokenizer: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    weight_map, total = {}, 0
    for file, shard in shards.items():
        total += shard.write(out / file)
        weight_map.update({name: file for name, *_ in shard.tensors})
    (out / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tc = cfg["text_config"]
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tc["eos_token_id"], "pad_token_id": tc["pad_token_id"]}) + "\n"
    )
    for f in sorted(tokenizer.iterdir()):
        shutil.copy(f, out / f.name)
    return {"tensors": len(weight_map), "bytes": total}


def int4_quantization(d: Dims) -> dict:
    bf16 = {"bits": 16, "data_type": "float"}
    extra = {}
    for i in range(d.layers):
        p = f"{PREFIX}layers.{i}."
        names = ["mlp.gate", "mlp.shared_expert_gate"]
        names += [f"mlp.shared_expert.{x}" for x in ("gate_proj", "up_proj", "down_proj")]
        if not d.is_full(i):
            names += ["linear_attn.in_proj_a", "linear_attn.in_proj_b"]
        extra.update({p + n: dict(bf16) for n in names})
    return {
        "quant_method": "auto-round",
        "packing_format": "auto_round:auto_gptq",
        "bits": 4,
        "group_size": GROUP,
        "sym": True,
        "data_type": "int",
        "block_name_to_quantize": f"{PREFIX}layers",
        "extra_config": extra,
    }


def fp8_quantization(d: Dims) -> dict:
    keep = ["lm_head", "mtp.fc"]
    for i in range(d.layers):
        p = f"{PREFIX}layers.{i}."
        keep += [p + "mlp.gate", p + "mlp.shared_expert_gate"]
        if not d.is_full(i):
            keep += [p + "linear_attn.in_proj_a", p + "linear_attn.in_proj_b"]
    keep += ["mtp.layers.0.mlp.gate", "mtp.layers.0.mlp.shared_expert_gate"]
    return {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": keep,
    }


def token_ids(tokenizer: Path) -> dict:
    tok = json.loads((tokenizer / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    ids["eos"] = ids["<|im_end|>"]
    ids["pad"] = ids["<|endoftext|>"]
    return ids


def write_all(out: Path, tokenizer: Path, d: Dims = Dims()) -> dict:
    tok = token_ids(tokenizer)
    assert max(v for k, v in tok.items()) < d.vocab
    int4 = shards_of(d, 1, Shard.int4, Shard.int4, Shard.dense, fp8_layout=False)
    extra = Shard(1000)
    mtp(extra, d, fp8=False)
    int4[EXTRA_FILE] = extra
    fp8 = shards_of(d, 2, Shard.fp8, Shard.fp8, Shard.fp8, fp8_layout=True)
    fp8_mtp = Shard(2000)
    mtp(fp8_mtp, d, fp8=True)
    fp8["model-mtp.safetensors"] = fp8_mtp
    result = {
        "int4": write_dir(out / "int4", int4, config(d, tok, int4_quantization(d)), tokenizer),
        "fp8": write_dir(out / "fp8", fp8, config(d, tok, fp8_quantization(d)), tokenizer),
    }
    (out / "int4" / ".rigkit-repo.json").write_text('{"repo": "synthetic/qwen3.5-moe-tiny-int4-autoround"}\n')
    return result


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every file of a model directory (what the GPU run compares with)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    args = ap.parse_args(argv)
    print(json.dumps(write_all(args.out, args.tokenizer), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
