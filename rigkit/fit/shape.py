"""
What a memory plan needs of a model (:class:`ModelShape`): the bytes of each repeating layer,
of the input embeddings and of the output layer, which layers hold a KV cache and how wide
it is, which hold recurrent state instead (Qwen3.5's linear-attention layers) and its size.

Read from GGUF headers (:func:`from_gguf`; the keys are llama.cpp's, ``src/llama-arch.cpp``
``LLM_KV_NAMES`` and ``gguf-py/gguf/constants.py`` ``Keys``) or from safetensors headers and
the checkpoint's ``config.json`` (:func:`from_safetensors`, Hugging Face's names). Recorded
in the model lock (:meth:`ModelShape.to_data`) and read back checked whole
(:meth:`ModelShape.from_data`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rigkit.fit.gguf import GgufError, GgufHeader

#: llama.cpp's hybrid architectures whose recurrent layers are marked by
#: ``attention.recurrent_layers`` or every layer but each ``full_attention_interval``-th
#: (src/models/qwen35moe.cpp load_arch_hparams; qwen35.cpp and qwen3next.cpp alike).
HYBRID_INTERVAL = ("qwen3next", "qwen35", "qwen35moe")
ARCH = re.compile(r"[a-z0-9_]{1,64}", re.ASCII)
MAX_LAYERS = 4096  # LLAMA_MAX_LAYERS is 512; a bound on what a lock may carry
MAX_INT = 1 << 56


class ShapeError(ValueError):
    """A model's headers or config that a plan cannot read, or a shape record that is not one."""


@dataclass(frozen=True)
class ModelShape:
    format: str  # "gguf" or "safetensors"
    arch: str
    n_layer: int  # repeating layers, MTP/NextN layers included (llama.cpp's n_layer_all)
    n_layer_nextn: int  # the last of those that only a draft context uses (no KV in the main one)
    n_embd: int
    n_vocab: int
    n_ff: int  # the widest feed-forward activation per token (MoE: experts used x expert width + shared)
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer; 0: the layer has no KV cache
    head_k: int
    head_v: int
    recurrent: tuple[int, ...]  # layers holding recurrent state instead of KV
    n_embd_r: int  # per recurrent layer and sequence: conv state elements (F32)
    n_embd_s: int  # per recurrent layer and sequence: SSM/delta-net state elements (F32)
    layer_bytes: tuple[int, ...]  # weights of each repeating layer
    input_bytes: int  # token embeddings
    output_bytes: int  # output layer and its norm (tied embeddings: a copy of token_embd)
    other_bytes: int = 0  # tensors of no layer (rope factors, MTP heads of a checkpoint)
    dtype_bytes: int = 2  # a safetensors checkpoint's dtype: what vLLM keeps its KV cache in

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes + self.other_bytes

    def has_kv(self, il: int) -> bool:
        """Whether layer ``il`` holds a KV cache in the main context: llama-kv-cache.cpp
        skips layers without one (hparams.has_kv) and the hybrid filter keeps
        ``il < n_layer() && !is_recr(il)`` (llama-model.cpp create_memory)."""
        return il < self.n_layer - self.n_layer_nextn and il not in self.recurrent and self.n_head_kv[il] > 0

    def kv_elements(self, il: int) -> tuple[int, int]:
        """(K, V) elements per cell of layer ``il``: n_embd_k_gqa and n_embd_v_gqa
        (llama-hparams.cpp: head size times n_head_kv(il))."""
        return self.head_k * self.n_head_kv[il], self.head_v * self.n_head_kv[il]

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_data(cls, raw: Any, where: str) -> ModelShape:
        """A shape record (a lock's), checked whole: every key, each count bounded."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(raw, Mapping) or set(raw) != set(names):
            raise ShapeError(f"{where}: expected a mapping of exactly {', '.join(names)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw[f.name]
            if f.name in ("format", "arch"):
                ok = isinstance(value, str) and (
                    value in ("gguf", "safetensors") if f.name == "format" else bool(ARCH.fullmatch(value))
                )
                if not ok:
                    raise ShapeError(f"{where}.{f.name}: expected a name, got {value!r}")
                values[f.name] = value
            elif "tuple" in str(f.type):
                if not isinstance(value, list) or len(value) > MAX_LAYERS or not all(_count(v) for v in value):
                    raise ShapeError(f"{where}.{f.name}: expected up to {MAX_LAYERS} counts, got {value!r}")
                values[f.name] = tuple(value)
            else:
                if not _count(value):
                    raise ShapeError(f"{where}.{f.name}: expected a count (0 or more), got {value!r}")
                values[f.name] = value
        shape = cls(**values)
        shape.check(where)
        return shape

    def check(self, where: str) -> None:
        n = self.n_layer
        if not 1 <= n <= MAX_LAYERS or self.n_layer_nextn > n:
            raise ShapeError(f"{where}: {n} layers ({self.n_layer_nextn} NextN): expected 1 to {MAX_LAYERS}")
        for name in ("n_head", "n_head_kv", "layer_bytes"):
            if len(getattr(self, name)) != n:
                raise ShapeError(f"{where}.{name}: expected one value per layer ({n})")
        if any(il >= n for il in self.recurrent) or len(set(self.recurrent)) != len(self.recurrent):
            raise ShapeError(f"{where}.recurrent: expected distinct layer indices below {n}")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_INT


def _per_layer(value: Any, n: int, key: str, where: str, default: int | None = None) -> tuple[int, ...]:
    """A llama.cpp key that is one value or one per layer (get_key_or_arr)."""
    if value is None:
        if default is None:
            raise ShapeError(f"{where}: no {key}")
        return (default,) * n
    if isinstance(value, tuple):
        if len(value) != n or not all(_count(v) for v in value):
            raise ShapeError(f"{where}: {key}: expected {n} counts, one per layer")
        return tuple(int(v) for v in value)
    if not _count(value):
        raise ShapeError(f"{where}: {key}: expected a count, got {value!r}")
    return (int(value),) * n


def _key(meta: Mapping[str, object], key: str, where: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if not _count(value):
        raise ShapeError(f"{where}: {key}: expected a count, got {value!r}")
    assert isinstance(value, int)
    return value


def from_gguf(headers: Iterable[GgufHeader], where: str) -> ModelShape:
    """The shape of a GGUF model (its shards' headers, the first shard first: llama.cpp reads
    the hyperparameters from it, the tensors from every shard)."""
    headers = list(headers)
    if not headers:
        raise ShapeError(f"{where}: no GGUF header")
    meta = headers[0].metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not ARCH.fullmatch(arch):
        raise ShapeError(f"{where}: general.architecture: expected an architecture name, got {arch!r}")
    k = f"{arch}."
    n = _key(meta, k + "block_count", where)
    if not 1 <= n <= MAX_LAYERS:
        raise ShapeError(f"{where}: {k}block_count {n}: expected 1 to {MAX_LAYERS}")
    nextn = _key(meta, k + "nextn_predict_layers", where, 0)
    n_embd = _key(meta, k + "embedding_length", where)
    n_head = _per_layer(meta.get(k + "attention.head_count"), n, k + "attention.head_count", where)
    # llama-model.cpp load_hparams: n_head_kv defaults to n_head; key and value lengths to
    # n_embd / n_head (n_embd_head_k, n_embd_head_v).
    raw_kv = meta.get(k + "attention.head_count_kv")
    n_head_kv = n_head if raw_kv is None else _per_layer(raw_kv, n, k + "attention.head_count_kv", where)
    head0 = max(n_head) or 1
    head_k = _key(meta, k + "attention.key_length", where, n_embd // head0)
    head_v = _key(meta, k + "attention.value_length", where, n_embd // head0)
    recurrent: tuple[int, ...] = ()
    n_embd_r = n_embd_s = 0
    if arch in HYBRID_INTERVAL:
        flags = meta.get(k + "attention.recurrent_layers")
        if isinstance(flags, tuple) and len(flags) == n:
            recurrent = tuple(i for i, f in enumerate(flags) if f)
        else:
            interval = _key(meta, k + "full_attention_interval", where, 4) or 1
            recurrent = tuple(i for i in range(n) if i < n - nextn and (i + 1) % interval != 0)
        d_conv = _key(meta, k + "ssm.conv_kernel", where)
        d_inner = _key(meta, k + "ssm.inner_size", where)
        d_state = _key(meta, k + "ssm.state_size", where)
        n_group = _key(meta, k + "ssm.group_count", where)
        # llama-hparams.cpp n_embd_r (conv state) and n_embd_s (ssm state).
        n_embd_r = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
        n_embd_s = d_state * d_inner
    n_vocab = headers[0].array_lengths.get("tokenizer.ggml.tokens", 0)
    n_ff_dense = max(_per_layer(meta.get(k + "feed_forward_length"), n, k + "feed_forward_length", where, 0))
    n_expert_used = _key(meta, k + "expert_used_count", where, 0)
    n_ff_exp = _key(meta, k + "expert_feed_forward_length", where, 0)
    n_ff_shexp = _key(meta, k + "expert_shared_feed_forward_length", where, 0)
    n_ff = max(n_ff_dense, n_expert_used * n_ff_exp + n_ff_shexp)
    layer_bytes = [0] * n
    input_bytes = output_bytes = other_bytes = 0
    embd = None
    has_output = False
    for header in headers:
        for t in header.tensors:
            il = t.layer
            if il is not None:
                if il >= n:
                    raise ShapeError(f"{where}: tensor {t.name}: layer {il}, the model has {n}")
                layer_bytes[il] += t.nbytes
            elif t.name.startswith("token_embd."):
                input_bytes += t.nbytes
                if t.name == "token_embd.weight":
                    embd = t
            elif t.name.startswith(("output.", "output_norm.")):
                output_bytes += t.nbytes
                has_output = has_output or t.name == "output.weight"
            else:
                other_bytes += t.nbytes
    if embd is not None:
        n_vocab = n_vocab or (embd.shape[1] if len(embd.shape) > 1 else 0)
        if not has_output:
            # src/models/*.cpp: without output.weight the output is token_embd again,
            # TENSOR_DUPLICATED onto the output layer's device.
            output_bytes += embd.nbytes
    shape = ModelShape(
        "gguf",
        arch,
        n,
        nextn,
        n_embd,
        n_vocab,
        n_ff,
        n_head,
        n_head_kv,
        head_k,
        head_v,
        recurrent,
        n_embd_r,
        n_embd_s,
        tuple(layer_bytes),
        input_bytes,
        output_bytes,
        other_bytes,
    )
    shape.check(where)
    return shape


def from_gguf_files(paths: Iterable[str], where: str, sizes: Mapping[str, int] | None = None) -> ModelShape:
    """The shape of GGUF files on this machine (an upload, a benchmark's model); ``sizes``:
    where a path holds a copy of a file's header only, the file's own size."""
    from rigkit.fit import gguf

    try:
        return from_gguf([gguf.read_local(p, (sizes or {}).get(p)) for p in sorted(paths)], where)
    except GgufError as exc:
        raise ShapeError(str(exc)) from None


# --------------------------------------------------------------------------- #
# safetensors and config.json
# --------------------------------------------------------------------------- #

HF_LAYER = re.compile(r"(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d{1,5})\.", re.ASCII)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


def from_safetensors(tensors: Mapping[str, int], config: Mapping[str, Any], where: str) -> ModelShape:
    """The shape of a safetensors checkpoint: ``tensors`` (name -> bytes, from its headers)
    and its ``config.json`` (a multimodal model's language part is its ``text_config``)."""
    cfg = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    assert isinstance(cfg, Mapping)

    def get(key: str, default: int | None = None) -> int:
        value = cfg.get(key, default)
        if not _count(value):
            raise ShapeError(f"{where}: config.json {key}: expected a count, got {value!r}")
        assert isinstance(value, int)
        return value

    n = get("num_hidden_layers")
    if not 1 <= n <= MAX_LAYERS:
        raise ShapeError(f"{where}: num_hidden_layers {n}: expected 1 to {MAX_LAYERS}")
    n_embd = get("hidden_size")
    heads = get("num_attention_heads")
    kv_heads = get("num_key_value_heads", heads)
    head_dim = get("head_dim", n_embd // max(heads, 1))
    types = cfg.get("layer_types")
    recurrent: tuple[int, ...] = ()
    n_embd_r = n_embd_s = 0
    if isinstance(types, list) and len(types) == n and all(isinstance(t, str) for t in types):
        recurrent = tuple(i for i, t in enumerate(types) if t == "linear_attention")
    elif "full_attention_interval" in cfg:
        interval = get("full_attention_interval") or 1
        recurrent = tuple(i for i in range(n) if (i + 1) % interval != 0)
    if recurrent:
        # Where config.json leaves them out, transformers' Qwen3NextConfig defaults
        # (linear_conv_kernel_dim 4, 16 key heads, 32 value heads, head dims 128).
        conv = get("linear_conv_kernel_dim", 4)
        k_heads, v_heads = get("linear_num_key_heads", 16), get("linear_num_value_heads", 32)
        k_dim, v_dim = get("linear_key_head_dim", 128), get("linear_value_head_dim", 128)
        # The same state as llama.cpp's n_embd_r and n_embd_s of the converted model:
        # d_inner = v_heads * v_dim, d_state = k_dim, n_group = k_heads.
        n_embd_r = (conv - 1) * (v_heads * v_dim + 2 * k_heads * k_dim)
        n_embd_s = k_dim * v_heads * v_dim
    experts_used = get("num_experts_per_tok", 0)
    n_ff = max(
        get("intermediate_size", 0),
        experts_used * get("moe_intermediate_size", 0) + get("shared_expert_intermediate_size", 0),
    )
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or config.get("torch_dtype") or "bfloat16"
    layer_bytes = [0] * n
    input_bytes = output_bytes = other_bytes = 0
    for name, nbytes in tensors.items():
        m = HF_LAYER.match(name)
        if m and int(m[1]) < n:
            layer_bytes[int(m[1])] += nbytes
        elif "embed_tokens." in name:
            input_bytes += nbytes
        elif name.startswith("lm_head.") or name.endswith(("model.norm.weight", "language_model.norm.weight")):
            output_bytes += nbytes
        else:
            other_bytes += nbytes  # vision tower, MTP heads
    shape = ModelShape(
        "safetensors",
        str(cfg.get("model_type") or "unknown").lower().replace("-", "_")[:64] or "unknown",
        n,
        0,
        n_embd,
        get("vocab_size", 0),
        n_ff,
        (heads,) * n,
        (kv_heads,) * n,
        head_dim,
        head_dim,
        recurrent,
        n_embd_r,
        n_embd_s,
        tuple(layer_bytes),
        input_bytes,
        output_bytes,
        other_bytes,
        DTYPE_BYTES.get(str(dtype), 2),
    )
    if not ARCH.fullmatch(shape.arch):
        shape = dataclasses.replace(shape, arch="unknown")
    shape.check(where)
    return shape


def from_checkpoint_dir(directory: str, where: str) -> ModelShape:
    """The shape of a safetensors checkpoint directory on this machine."""
    from rigkit.checkpoints.safetensors import CheckpointError
    from rigkit.checkpoints.sources import LocalCheckpoint

    try:
        ckpt = LocalCheckpoint(directory)
        config = ckpt.config()
    except CheckpointError as exc:
        raise ShapeError(str(exc)) from None
    if config is None:
        raise ShapeError(f"{where}: no config.json")
    sizes = {name: h.tensors[name].nbytes for h in ckpt.headers.values() for name in h.tensors}
    return from_safetensors(sizes, config, where)
