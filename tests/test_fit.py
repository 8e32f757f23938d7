"""The memory plan (rigkit.fit): GGUF headers read strictly (hostile and truncated ones
refused), model shapes from GGUF and safetensors with config.json, llama.cpp's and vLLM's
per-GPU plans on the recorded nvidia-smi facts (6x RTX 3090, H100, GB10), and the refusal
with its table and the split that fits."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf_files
import pytest

from rigkit.checkpoints.safetensors import TensorOut, write_safetensors
from rigkit.engines.llama_cpp import LlamaCppEngine
from rigkit.facts.nvidia import parse_gpus
from rigkit.fit import gguf
from rigkit.fit import llama_cpp as plan_llama
from rigkit.fit.budget import GIB
from rigkit.fit.gguf import GgufError
from rigkit.fit.plan import FitError, check_rig, gpus_of, plan_rig
from rigkit.fit.shape import ModelShape, ShapeError, from_checkpoint_dir, from_gguf_files
from rigkit.hostdata import parse_rig
from rigkit.models.lockfile import LockEntry, LockError

REC = Path(__file__).parent / "recordings" / "nvidia"


def recorded(name: str):
    return parse_gpus((REC / f"{name}-query-gpu.csv").read_text().splitlines())


@pytest.fixture(scope="module")
def qwen122b(tmp_path_factory) -> list[Path]:
    """Qwen3.5-122B-A10B's shape in 4 shards (~102 GB, sparse)."""
    return gguf_files.qwen35moe(tmp_path_factory.mktemp("q122") / "Qwen3.5-122B-A10B-UD-Q6_K_XL", shards=4)


def upload_rig(model: Path, service: dict, gpus: dict | None = None):
    """A host serving ``model`` (a local GGUF uploaded to /srv/models/m) with ``service``'s options."""
    return parse_rig(
        "rig",
        {
            "gpus": gpus or {"count": 6, "cuda_arch": ["86"]},
            "llama_cpp": {"ref": "b8137"},
            "models": [{"upload": str(model.parent), "dest": "/srv/models/m"}],
            "services": [{"name": "qwen", "model": f"/srv/models/m/{model.name}", **service}],
        },
    )


# --------------------------------------------------------------------------- #
# GGUF headers
# --------------------------------------------------------------------------- #


def test_gguf_header_gives_each_tensors_type_shape_bytes_and_layer(tmp_path):
    path = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1000)
    h = gguf.read_local(path)
    assert h.metadata["general.architecture"] == "llama"
    assert h.metadata["llama.block_count"] == 2
    assert h.array_lengths["tokenizer.ggml.tokens"] == 1000
    assert "tokenizer.ggml.tokens" not in h.metadata  # a vocabulary is counted, not kept
    t = {x.name: x for x in h.tensors}
    q = t["blk.1.attn_q.weight"]
    assert (q.ggml_type, q.shape, q.layer, q.nbytes) == ("Q8_0", (256, 256), 1, 256 * 256 // 32 * 34)
    assert t["token_embd.weight"].layer is None
    assert t["blk.0.attn_norm.weight"].nbytes == 256 * 4
    assert h.data_start % 32 == 0


def test_gguf_header_larger_than_the_first_read_is_read_in_growing_ranges(tmp_path, monkeypatch):
    path = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=5000)
    monkeypatch.setattr(gguf, "FIRST_READ", 1024)
    asked = []
    data = path.read_bytes()

    def fetch(n):
        asked.append(n)
        return data[:n]

    h = gguf.read(fetch, len(data), "m")
    assert h.array_lengths["tokenizer.ggml.tokens"] == 5000
    assert asked[0] == 1024 and len(asked) > 1 and asked == sorted(asked)
    assert asked[-1] < len(data) or h.data_start == len(data)  # only the header, never the data


def _hostile(tmp_path: Path, raw: bytes, size: int | None = None) -> Path:
    p = tmp_path / "bad.gguf"
    with open(p, "wb") as f:
        f.write(raw)
        f.truncate(size if size is not None else len(raw))
    return p


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


PREFIX = b"GGUF" + struct.pack("<I", 3)


@pytest.mark.parametrize(
    "raw, size, message",
    [
        (b"GGML" + bytes(20), None, "no GGUF magic"),
        (b"GGUF" + struct.pack("<I", 99) + bytes(16), None, "version 99"),
        (PREFIX + struct.pack("<qq", 1 << 40, 0), 1 << 20, "tensors"),
        (PREFIX + struct.pack("<qq", -1, 0), None, "tensors"),
        (PREFIX + struct.pack("<qq", 0, 1 << 40), 1 << 20, "key-values"),
        # a key whose length is larger than the file
        (PREFIX + struct.pack("<qq", 0, 1) + struct.pack("<Q", 1 << 62), 4096, "key 0 length"),
        # a string value of 2^60 bytes in a 1 MB file: refused before any allocation
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a.b", 8, struct.pack("<Q", 1 << 60)), 1 << 20, "length"),
        # an array claiming 2^40 uint32 elements
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a.b", 9, struct.pack("<IQ", 4, 1 << 40)), 1 << 20, "array"),
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a.b", 9, struct.pack("<IQ", 9, 1)), 1 << 10, "array of type 9"),
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a.b", 77, b""), 1 << 10, "value type 77"),
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a b\n", 4, struct.pack("<I", 1)), 1 << 10, "key 0"),
        (PREFIX + struct.pack("<qq", 0, 1) + _kv("a.b", 8, struct.pack("<Q", 2) + b"\xff\xfe"), 1 << 10, "UTF-8"),
        (
            PREFIX + struct.pack("<qq", 0, 2) + _kv("a.b", 4, bytes(4)) + _kv("a.b", 4, bytes(4)),
            1 << 10,
            "appears twice",
        ),
        # a tensor with 5 dimensions, one of ggml type 200, one whose offset lies
        (PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 5), 1 << 10, "dimensions"),
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IqIQ", 1, 32, 200, 0),
            1 << 10,
            "ggml type 200",
        ),
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IqIQ", 1, 32, 0, 64),
            1 << 10,
            "offset 64, expected 0",
        ),
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IqIQ", 1, 33, 8, 0),
            1 << 10,
            "not a multiple of 32",
        ),
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IqIQ", 1, -4, 0, 0),
            1 << 10,
            "< 0",
        ),
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 3) + b"../" + struct.pack("<IqIQ", 1, 32, 0, 0),
            1 << 10,
            "expected a name",
        ),
        # a tensor whose data runs past the end of the file
        (
            PREFIX + struct.pack("<qq", 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IqIQ", 1, 1 << 20, 0, 0),
            None,
            "truncated",
        ),
    ],
)
def test_hostile_gguf_headers_are_refused_cleanly(tmp_path, raw, size, message):
    with pytest.raises(GgufError, match=message):
        gguf.read_local(_hostile(tmp_path, raw, size))


def test_a_truncated_gguf_file_is_refused_naming_the_byte_it_lacks(tmp_path):
    path = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1000)
    raw = path.read_bytes()
    for cut in (3, 20, 200, len(raw) // 2):
        cut_path = _hostile(tmp_path, raw[:cut])
        with pytest.raises(GgufError, match="truncated|no GGUF magic"):
            gguf.read_local(cut_path)


def test_a_header_beyond_the_bound_is_refused_not_read(tmp_path, monkeypatch):
    path = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=5000)
    monkeypatch.setattr(gguf, "MAX_HEADER_BYTES", 4096)
    monkeypatch.setattr(gguf, "FIRST_READ", 1024)
    with pytest.raises(GgufError, match="larger than 4096|expected at most 447"):
        gguf.read_local(path)


# --------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------- #


def test_hybrid_moe_shape_has_kv_only_on_its_full_attention_layers(qwen122b):
    shape = from_gguf_files([str(p) for p in qwen122b], "q122")
    assert shape.arch == "qwen35moe" and shape.n_layer == 48
    attention = [il for il in range(48) if shape.has_kv(il)]
    assert attention == list(range(3, 48, 4))  # full_attention_interval 4
    assert len(shape.recurrent) == 36 and not set(attention) & set(shape.recurrent)
    # llama-hparams.cpp: conv state (d_conv-1)*(d_inner+2*n_group*d_state), ssm state d_state*d_inner
    assert (shape.n_embd_r, shape.n_embd_s) == (3 * (8192 + 2 * 16 * 128), 128 * 8192)
    assert shape.n_vocab == 248320
    assert 95e9 < shape.weight_bytes < 110e9  # the seed's "~105GB (4 GGUF shards)"


def test_tied_embeddings_put_a_copy_of_token_embd_on_the_output_layer(tmp_path):
    path = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1000)
    h = gguf.read_local(path)
    tied = tmp_path / "tied.gguf"
    gguf_files.write(
        tied,
        {k: v for k, v in h.metadata.items()} | {"tokenizer.ggml.tokens": gguf_files.vocab(1000)},
        [(t.name, t.ggml_type, t.shape) for t in h.tensors if t.name != "output.weight"],
    )
    shape = from_gguf_files([str(tied)], "tied")
    assert shape.output_bytes == 256 * 4 + 256 * 1000 // 32 * 34


def test_safetensors_shape_from_headers_and_config(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tensors = [TensorOut("model.embed_tokens.weight", "BF16", (1000, 64), lambda: iter([b"\0" * 128000]))]
    for i in range(4):
        tensors.append(
            TensorOut(f"model.layers.{i}.mlp.up_proj.weight", "BF16", (128, 64), lambda: iter([b"\0" * 16384]))
        )
    tensors.append(TensorOut("lm_head.weight", "BF16", (1000, 64), lambda: iter([b"\0" * 128000])))
    write_safetensors(ckpt / "model.safetensors", tensors)
    config = {
        "model_type": "qwen3_5_moe",
        "text_config": {
            "num_hidden_layers": 4,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 1000,
            "layer_types": ["linear_attention"] * 3 + ["full_attention"],
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "torch_dtype": "bfloat16",
        },
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    shape = from_checkpoint_dir(str(ckpt), "ckpt")
    assert shape.recurrent == (0, 1, 2) and [shape.has_kv(i) for i in range(4)] == [False] * 3 + [True]
    assert shape.layer_bytes == (16384,) * 4 and shape.input_bytes == shape.output_bytes == 128000
    assert (shape.n_embd_r, shape.n_embd_s) == (3 * (64 + 64), 16 * 64)


def test_shape_record_round_trips_through_the_lock_and_a_hostile_one_is_refused(qwen122b):
    shape = from_gguf_files([str(p) for p in qwen122b], "q122")
    entry = {
        "repo": "unsloth/Qwen3.5-122B-A10B-GGUF",
        "revision": "main",
        "include": ["UD-Q6_K_XL/*.gguf"],
        "sha": "0" * 40,
        "files": [{"path": "UD-Q6_K_XL/a.gguf", "size": 1, "sha256": "0" * 64}],
        "shape": shape.to_data(),
    }
    key = "unsloth/Qwen3.5-122B-A10B-GGUF@main:UD-Q6_K_XL/*.gguf"
    assert LockEntry.from_data(key, entry).shape == shape
    for field, bad in (
        ("n_layer", -1),
        ("n_layer", True),
        ("layer_bytes", [1, 2]),
        ("recurrent", [99]),
        ("arch", "qwen$(id)"),
        ("n_head_kv", ["8"] * 48),
    ):
        with pytest.raises(LockError, match="shape"):
            LockEntry.from_data(key, {**entry, "shape": {**shape.to_data(), field: bad}})
    with pytest.raises(LockError, match="shape"):
        LockEntry.from_data(key, {**entry, "shape": {**shape.to_data(), "extra": 1}})
    with pytest.raises(ShapeError):
        ModelShape.from_data([], "x")


# --------------------------------------------------------------------------- #
# llama.cpp plans
# --------------------------------------------------------------------------- #

SEED_SERVICE = {
    "ctx": 262144,
    "cache_type_k": "q8_0",
    "cache_type_v": "q8_0",
    "parallel": 1,
    "split_mode": "layer",
    "tensor_split": [0.9, 1, 1, 1, 1, 1],
}


def test_seed_rig_split_and_context_plan_fits_six_3090s_as_measured(qwen122b):
    """Seed 000: Qwen3.5-122B Q6_K_XL, -c 262144, q8_0 K/V, -ts 0.9,1,1,1,1,1 on 6x RTX 3090;
    the write-up measured 17.5, 17.5, 19.7, 17.5, 17.5, 16.5 GB."""
    rig = upload_rig(qwen122b[0], SEED_SERVICE)
    [plan] = check_rig(rig, recorded("rtx3090x6"))
    assert plan.fits
    layers = [len(n.layers) for n in plan.needs]
    assert layers == [8, 8, 9, 8, 8, 7]  # the 0.9 share and llama.cpp's upper_bound placement
    assert [n.output for n in plan.needs] == [False] * 5 + [True]
    # The third GPU holds the most, as measured (19.7 GB); the rest within 10 % of 17.5/16.5 GB.
    need_gb = [n.need / 1e9 for n in plan.needs]
    assert max(need_gb) == need_gb[2]
    for planned, measured in zip(need_gb, (17.5, 17.5, 19.7, 17.5, 17.5, 16.5)):
        assert abs(planned - measured) / measured < 0.10
    # KV only on the 12 full-attention layers: 262144 cells x 2 x 512 q8_0 values each.
    assert sum(n.kv for n in plan.needs) == 12 * 262144 * 2 * (512 // 32 * 34) + 36 * (36864 + 1048576) * 4
    assert plan.cpu_bytes > 0  # token embeddings stay on the CPU
    # q8_0 declared; f16 would fit too, and the plan says so without changing the flags.
    assert any("room for f16 K/V" in n and "q8_0/q8_0 is kept" in n for n in plan.notes)


def test_a_context_that_cannot_fit_is_refused_naming_the_gpu(tmp_path):
    model = gguf_files.llama(tmp_path / "llama8b.gguf")
    rig = upload_rig(model, {"ctx": 1 << 20}, gpus={"count": 1})
    with pytest.raises(FitError) as err:
        check_rig(rig, recorded("h100"))
    text = str(err.value)
    assert "qwen: GPU 0 short" in text and "NVIDIA H100 80GB HBM3" in text and "NO, short" in text
    # 128 GiB of f16 K/V at 1M cells; q8_0's 68 GiB and 8 GB of weights would fit: said, not done.
    assert "q8_0 K/V (cache_type_k/cache_type_v: q8_0) would fit" in text
    with pytest.raises(FitError) as err:
        check_rig(upload_rig(model, {"ctx": 1 << 21}, gpus={"count": 1}), recorded("h100"))
    assert "GPU 0 short" in str(err.value) and "would fit" not in str(err.value)
    # The same model at 128K fits the H100.
    [plan] = check_rig(upload_rig(model, {"ctx": 131072}, gpus={"count": 1}), recorded("h100"))
    assert plan.fits and plan.needs[0].kv == 32 * 131072 * 2 * 1024 * 2


def test_an_unbalanced_split_is_refused_with_the_split_that_fits(qwen122b):
    rig = upload_rig(qwen122b[0], {**SEED_SERVICE, "tensor_split": [2, 1, 1, 1, 1, 1]})
    with pytest.raises(FitError) as err:
        check_rig(rig, recorded("rtx3090x6"))
    [plan] = plan_rig(rig, recorded("rtx3090x6"))
    assert not plan.needs[0].fits and all(n.fits for n in plan.needs[1:])
    assert plan.split is not None and sum(plan.split) == 49  # 48 layers and the output layer
    assert f"tensor_split: {list(plan.split)}" in str(err.value)
    # The split suggested does fit.
    [again] = check_rig(
        upload_rig(qwen122b[0], {**SEED_SERVICE, "tensor_split": list(plan.split)}), recorded("rtx3090x6")
    )
    assert again.fits


def test_layer_placement_follows_llama_cpp_for_partial_offload():
    # -ngl 10 of 32 layers: i_gpu_start = 33 - 10 = 23; layers 23..31 and the output on the GPUs.
    devices = plan_llama.layer_devices(32, 10, [1.0, 1.0], "layer")
    assert devices[:23] == [None] * 23
    assert devices[23:] == [0] * 5 + [1] * 5
    assert plan_llama.layer_devices(4, 999, [1.0, 1.0], "none") == [0] * 5
    assert plan_llama.kv_cells(262144, 1) == (262144, 1)
    assert plan_llama.kv_cells(10000, 3) == (3584, 3)  # pad(10240 / 3, 256) per stream


def test_lead_function_plans_one_gpu_from_a_local_gguf(tmp_path):
    from rigkit.fit.bench import planned_bytes

    model = gguf_files.llama(tmp_path / "llama8b.gguf", wtype="F16")
    out = planned_bytes(str(model), ctx=8192, parallel=1, cache_type_k="f16", cache_type_v="f16")
    assert out["kv"] == 32 * 8192 * 2 * 1024 * 2
    assert out["weights"] > 14e9 and out["other"] > 0 and out["compute"] > 0
    assert out["total"] == out["weights"] + out["kv"] + out["compute"] + out["other"]
    # The header alone (what a range read saves, the benchmark carries), with the file's size.
    h = gguf.read_local(model)
    copy = tmp_path / "header.gguf"
    copy.write_bytes(model.read_bytes()[: h.data_start])
    same = planned_bytes(str(copy), ctx=8192, cache_type_k="f16", cache_type_v="f16", file_size=h.file_size)
    assert same == out
    with pytest.raises(ShapeError, match="truncated"):
        planned_bytes(str(copy), ctx=8192)  # the copy without its size is a truncated file
    copy.write_bytes(model.read_bytes()[: h.data_start // 2])
    with pytest.raises(ShapeError, match="before its header does"):
        planned_bytes(str(copy), ctx=8192, file_size=h.file_size)


# --------------------------------------------------------------------------- #
# GPUs and vLLM
# --------------------------------------------------------------------------- #


def test_gpus_from_facts_else_host_data_and_a_gb10s_unified_memory():
    rig = parse_rig("h", {"gpus": {"count": 2, "memory_mib": [24576]}})
    assert [g.total_bytes for g in gpus_of(rig, None)] == [24576 << 20] * 2
    assert [g.total_bytes for g in gpus_of(rig, recorded("h100"))] == [81559 << 20]
    [gb10] = gpus_of(rig, recorded("gb10"))
    assert gb10.unified and gb10.total_bytes == 128 * 10**9


def test_vllm_on_a_gb10_plans_its_budget_of_the_unified_memory(tmp_path):
    from rigkit.fit import vllm as plan_vllm
    from rigkit.fit.shape import from_safetensors

    config = {
        "num_hidden_layers": 48,
        "hidden_size": 3072,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "vocab_size": 248320,
        "full_attention_interval": 4,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 64,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
    }
    tensors = {f"model.layers.{i}.mlp.experts.weight": 1_400_000_000 for i in range(48)}
    shape = from_safetensors(tensors, config, "q122-int4")
    [gb10] = gpus_of(parse_rig("spark", {}), recorded("gb10"))
    [need] = plan_vllm.plan(shape, [gb10], max_model_len=262144, gpu_memory_utilization=0.90)
    assert need.budget == int(0.9 * 128e9) and need.fits
    assert need.kv >= 12 * 2 * 2 * 256 * 2 * 262144  # K and V of 12 layers at bf16
    [tight] = plan_vllm.plan(shape, [gb10], max_model_len=262144, gpu_memory_utilization=0.50)
    assert not tight.fits and tight.need - tight.have > 0


def test_hardware_figures_the_table_prints_are_in_gib(qwen122b):
    [plan] = plan_rig(upload_rig(qwen122b[0], SEED_SERVICE), recorded("rtx3090x6"))
    text = "\n".join(plan.lines())
    assert "qwen (llama.cpp): fits (GiB)" in text and f"{24576 / 1024:.2f}" in text
    assert GIB == 1 << 30


# --------------------------------------------------------------------------- #
# rigkit lock records the shape, read by range
# --------------------------------------------------------------------------- #


def test_lock_records_the_shape_read_by_range_and_refuses_a_lying_header(tmp_path):
    from rigkit.models import lock_command, mirror
    from rigkit.models.hub import ModelRef

    root = tmp_path / "mirror"
    (root / "org/tiny-GGUF").mkdir(parents=True)
    (root / "org/liar-GGUF").mkdir(parents=True)
    model = gguf_files.llama(
        root / "org/tiny-GGUF/tiny.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1000
    )
    raw = bytearray(model.read_bytes())
    raw[16:24] = struct.pack("<q", 1 << 40)  # the key-value count lies
    (root / "org/liar-GGUF/liar.gguf").write_bytes(bytes(raw))
    # A hybrid MoE in two shards beside another GGUF the include matches (a projector).
    (root / "org/split-GGUF").mkdir(parents=True)
    split = gguf_files.qwen35moe(
        root / "org/split-GGUF/hybrid", n_layer=4, n_embd=256, n_expert=4, n_ff_exp=256, n_vocab=1000, shards=2
    )
    gguf_files.llama(
        root / "org/split-GGUF/mmproj.gguf", n_layer=1, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=10
    )
    served = mirror.serve(str(root))
    try:
        logs: list[str] = []
        refs = [
            ModelRef("org/tiny-GGUF", include=("*.gguf",), dest="/m/t"),
            ModelRef("org/liar-GGUF", include=("*.gguf",), dest="/m/l"),
            ModelRef("org/split-GGUF", include=("*.gguf",), dest="/m/s"),
        ]
        entries = lock_command.lock_refs(refs, endpoint=served.url, log=logs.append)
    finally:
        served.stop()
    shape = entries["org/tiny-GGUF@main:*.gguf"].shape
    assert shape is not None and shape.n_layer == 2 and shape.n_vocab == 1000
    assert shape == from_gguf_files([str(model)], "tiny")
    assert any("shape of org/tiny-GGUF" in line and "request(s)" in line for line in logs)
    assert entries["org/split-GGUF@main:*.gguf"].shape == from_gguf_files([str(p) for p in split], "split")
    assert entries["org/split-GGUF@main:*.gguf"].shape.recurrent == (0, 1, 2)
    assert entries["org/liar-GGUF@main:*.gguf"].shape is None
    assert any("shape of org/liar-GGUF: not recorded" in line and "key-values" in line for line in logs)


# --------------------------------------------------------------------------- #
# After the load: plan against measured; rigkit plan
# --------------------------------------------------------------------------- #


def test_plan_and_measured_compared_per_gpu_with_a_warning_past_ten_percent(qwen122b):
    from rigkit.fit import measured
    from rigkit.status import memory_lines

    [plan] = plan_rig(upload_rig(qwen122b[0], SEED_SERVICE), recorded("rtx3090x6"))
    content = measured.plan_content([plan])
    planned = {gpu: n for gpu, n in json.loads(content)["services"]["qwen"].items()}
    # nvidia-smi --query-gpu=index,memory.used: GPU 2 as planned, GPU 0 30 % above.
    csv = [f"{gpu}, {int(n * (1.3 if gpu == '0' else 1.0)) >> 20}" for gpu, n in planned.items()]
    output = ["== /var/lib/rigkit/memory/llama.cpp.plan.json", *content.splitlines()]
    output += ["== /var/lib/rigkit/memory/llama.cpp.measured.csv", *csv]
    record = measured.parse_record(output)
    assert record["llama.cpp"]["measured"]["2"] == planned["2"] >> 20
    lines, warnings = measured.compare(record)
    assert len(lines) == 6 and "measured 18.50 GiB (-0%)" in lines[2]
    assert len(warnings) == 1 and warnings[0].startswith("GPU 0:") and "+30%" in warnings[0]
    text = "\n".join(memory_lines({"lines": lines, "warnings": warnings}))
    assert "WARNING: memory GPU 0" in text
    # A state file someone broke is left out, not a failure of status.
    assert measured.parse_record(["== /var/lib/rigkit/memory/vllm.plan.json", "{not json"]) == {}


def test_measure_reads_used_memory_only_where_nvidia_smi_is(tmp_path):
    from pyinfra.api import StringCommand

    from rigkit.fit import measured

    [cmd] = list(measured.measure._inner(engine="llama.cpp"))
    assert isinstance(cmd, StringCommand)
    text = cmd.get_raw_value()
    assert "command -v nvidia-smi" in text and "--query-gpu=index,memory.used" in text
    assert "/var/lib/rigkit/memory/llama.cpp.measured.csv" in text


def rigkit_plan(*args: str) -> subprocess.CompletedProcess:
    """``rigkit plan`` in its own process, as a user runs it: it loads the inventory through
    pyinfra's CLI, whose import monkey-patches the process with gevent (fatal to the threads
    of the tests that run after it in this one)."""
    return subprocess.run(
        [sys.executable, "-m", "rigkit.cli", "plan", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_rigkit_plan_prints_the_table_without_deploying(tmp_path, qwen122b):
    model = qwen122b[0]
    service = {"name": "qwen", "model": f"/srv/models/m/{model.name}", **SEED_SERVICE}
    host = {
        "gpus": {"count": 6, "cuda_arch": ["86"], "memory_mib": [24576]},
        "llama_cpp": {"ref": "b8137"},
        "models": [{"upload": str(model.parent), "dest": "/srv/models/m"}],
        "services": [service],
    }
    inv = tmp_path / "fits.py"
    inv.write_text(f"hosts = [('rig', {host!r})]\n")
    run = rigkit_plan(str(inv), "--offline")
    assert run.returncode == 0, run.stderr
    assert "rig:" in run.stdout and "qwen (llama.cpp): fits (GiB)" in run.stdout and "room for f16 K/V" in run.stdout
    host["services"] = [{**service, "tensor_split": [2, 1, 1, 1, 1, 1]}]
    inv = tmp_path / "unbalanced.py"
    inv.write_text(f"hosts = [('rig', {host!r})]\n")
    run = rigkit_plan(str(inv), "--offline", "--service", "qwen")
    assert run.returncode == 1, run.stderr
    assert "DOES NOT FIT" in run.stdout and "a tensor split that fits" in run.stdout
    run = rigkit_plan(str(inv), "--offline", "--json")
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert data["rig"][0]["fits"] is False and len(data["rig"][0]["gpus"]) == 6
    host["gpus"] = {"count": 6, "memory_mib": [1, 2]}
    inv = tmp_path / "invalid.py"
    inv.write_text(f"hosts = [('rig', {host!r})]\n")
    run = rigkit_plan(str(inv), "--offline")
    assert run.returncode == 2 and "gpus.memory_mib" in run.stderr


def test_a_deploy_refuses_before_any_engine_step_and_passes_each_engine_its_plans(qwen122b, monkeypatch):
    """serve_all (deploys/rig.py's serve step) plans first: a service that does not fit stops
    the deploy before any engine's step adds an operation; one that fits goes on, its plans
    handed to its engine's step (recorded after verification)."""
    from rigkit import serve as serve_module

    class Host:
        def get_fact(self, fact, **kwargs):
            assert fact.__name__ == "NvidiaGpus"
            return recorded("rtx3090x6")

    steps = []
    monkeypatch.setattr(serve_module, "host", Host())
    monkeypatch.setattr(
        serve_module, "serve_step", lambda rig, engine, before, **kw: steps.append((engine.name, kw["plans"]))
    )
    monkeypatch.setattr(LlamaCppEngine, "before", lambda self, rig: steps.append(("build", ())))
    # the other step serve_all adds, a cluster's stale tokens, asks its own facts
    monkeypatch.setattr(serve_module, "remove_undeclared_tokens", lambda rig: steps.append(("tokens", ())))
    with pytest.raises(FitError, match="GPU 0 short"):
        serve_module.serve_all(upload_rig(qwen122b[0], {**SEED_SERVICE, "tensor_split": [2, 1, 1, 1, 1, 1]}))
    assert steps == []
    serve_module.serve_all(upload_rig(qwen122b[0], SEED_SERVICE))
    [(tokens, _), (build, _), (engine, plans)] = steps  # planned before any step, the tokens' included
    assert (tokens, build) == ("tokens", "build")
    assert engine == "llama.cpp" and [p.service for p in plans] == ["qwen"] and plans[0].fits


def test_services_sharing_a_gpu_each_get_what_the_others_leave(tmp_path):
    gguf_files.llama(tmp_path / "llama8b.gguf")
    rig = parse_rig(
        "rig",
        {
            "gpus": {"count": 1},
            "llama_cpp": {"ref": "b8137"},
            "models": [{"upload": str(tmp_path), "dest": "/srv/models/m"}],
            "services": [
                {"name": "a", "model": "/srv/models/m/llama8b.gguf", "ctx": 262144, "port": 8000},
                {"name": "b", "model": "/srv/models/m/llama8b.gguf", "ctx": 262144, "port": 8001},
            ],
        },
    )
    a, b = plan_rig(rig, recorded("h100"))
    assert a.fits and a.needs[0].have == 81559 << 20
    assert not b.fits and b.needs[0].have == (81559 << 20) - a.needs[0].need
    assert any("services planned before this one" in n for n in b.notes)
    with pytest.raises(FitError, match="b: GPU 0 short"):
        check_rig(rig, recorded("h100"))


TINY_QWEN = Path("/var/cache/rigkit/models/tiny-qwen")  # the sandbox's model, written by llama.cpp's gguf-py


@pytest.mark.skipif(not (TINY_QWEN / "tiny-qwen-00002-of-00002.gguf").is_file(), reason="no sandbox model cached")
def test_the_sandbox_model_written_by_llama_cpps_gguf_py_reads_whole():
    """A real gguf-py file split in two by gguf-split: the first shard holds the metadata
    (a 151936-token vocabulary, merges, a chat template longer than rigkit keeps), the
    second only split keys; tensors from both."""
    files = sorted(str(p) for p in TINY_QWEN.glob("tiny-qwen-*.gguf"))
    first, second = (gguf.read_local(f) for f in files)
    assert first.metadata["split.count"] == 2 and first.metadata["split.tensors.count"] == 20
    assert len(first.tensors) + len(second.tensors) == 20
    assert first.array_lengths["tokenizer.ggml.tokens"] == 151936 and "tokenizer.chat_template" in first.skipped
    shape = from_gguf_files(files, "tiny-qwen")
    assert (shape.arch, shape.n_layer, shape.n_embd, shape.n_head_kv, shape.head_k) == ("llama", 2, 64, (1, 1), 32)
    data = sum(h.file_size - h.data_start for h in (first, second))
    embd = next(t for t in first.tensors + second.tensors if t.name == "token_embd.weight")
    # No output.weight: llama.cpp loads token_embd again for the output layer.
    assert shape.weight_bytes == data + embd.nbytes


def test_a_cpu_rig_reads_no_gpus_and_is_not_planned(tmp_path, monkeypatch):
    """The sandbox's rig (llama.cpp built without CUDA): the serve step asks no GPU fact and
    plans nothing, so its deploys run as before."""
    from rigkit import serve as serve_module
    from rigkit.fit.plan import on_gpus

    model = gguf_files.llama(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1000)
    rig = parse_rig(
        "sandbox-1",
        {
            "gpus": {"count": 0},
            "llama_cpp": {"ref": "b11312", "cuda": False},
            "models": [{"upload": str(tmp_path), "dest": "/srv/models/m"}],
            "services": [{"name": "tiny", "model": f"/srv/models/m/{model.name}", "n_gpu_layers": 0}],
        },
    )
    assert not on_gpus(rig)

    class Host:
        def get_fact(self, fact, **kwargs):
            raise AssertionError(f"{fact.__name__} asked on a CPU rig")

    steps = []
    monkeypatch.setattr(serve_module, "host", Host())
    monkeypatch.setattr(serve_module, "serve_step", lambda rig, engine, before, **kw: steps.append(kw["plans"]))
    monkeypatch.setattr(LlamaCppEngine, "before", lambda self, rig: None)  # the build's own facts
    monkeypatch.setattr(serve_module, "remove_undeclared_tokens", lambda rig: None)
    serve_module.serve_all(rig)
    [[plan]] = steps
    assert not plan.planned and "without CUDA" in plan.notes[0]


def test_memory_record_fact_reads_state_files_without_their_last_newline(tmp_path):
    """The fact's own shell command, run on files as a deploy writes them (a plan put from a
    string may end without a newline), read back whole."""
    import subprocess

    from rigkit.fit import measured

    (tmp_path / "llama.cpp.plan.json").write_text('{"services": {"tiny": {"0": 1048576}}}')
    (tmp_path / "llama.cpp.measured.csv").write_text("0, 17000\n1, 10000\n")
    (tmp_path / "vllm.plan.json").write_text('{"services": {}}\n')
    cmd = measured.MemoryRecord().command().get_raw_value().replace(measured.MEMORY_DIR, str(tmp_path))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout.splitlines()
    record = measured.MemoryRecord().process(out)
    assert record == {
        "llama.cpp": {"plan": {"services": {"tiny": {"0": 1048576}}}, "measured": {"0": 17000, "1": 10000}},
        "vllm": {"plan": {"services": {}}},
    }
    empty = subprocess.run(
        ["sh", "-c", cmd.replace(str(tmp_path), str(tmp_path / "none"))], capture_output=True, text=True
    )
    assert empty.returncode == 0 and measured.MemoryRecord().process(empty.stdout.splitlines()) == {}
