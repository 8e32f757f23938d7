"""Run inside the CPU venv (PYTHONPATH = a vLLM tree): build a tiny hybrid INT4+FP8 AutoRound
checkpoint, let vLLM's own INCConfig read it and report, as JSON on stdout, which linear method
vLLM's get_quant_method gives each of a set of real vLLM linear layers.

What is real: vLLM's INCConfig (from_config, maybe_update_config called as the version's
vllm/config/vllm.py calls it, apply_vllm_mapper/packed_modules_mapping set by vLLM's own
configure_quant_config from the real Qwen3.5-MoE model class), vLLM's linear layer classes,
its distributed state (one CPU process, gloo), its FP8 and GPTQ(-Marlin) methods and the
safetensors metadata reader. What is presented: the CUDA platform. vLLM's CudaPlatform class is
used as vLLM's own tests use it (``patch("vllm.platforms.current_platform", CudaPlatform())``
with ``get_device_capability`` patched), but importing it loads vllm._C, the CUDA kernels,
which need libcuda; an empty module stands in for vllm._C, and the capability is the Spark's
(SM 12.1). No kernel runs.

    python inc_hybrid_case.py WORKDIR   -> WORKDIR/result.json:
        {"vllm": ..., "patched": bool, "fp8_layers": [...], "layers": {prefix: {...}}}
"""

from __future__ import annotations

import ast
import json
import os
import site
import struct
import sys
import types
from pathlib import Path

import cuda_platform  # beside this file

HIDDEN = 256
SHARED_INTER = 256
HEAD_DIM = 64
HEADS, KV_HEADS = 4, 2
GROUP = 128
BLOCK = (128, 128)
LAYERS = 4  # Qwen3.5: three linear-attention (DeltaNet) layers, then one full-attention layer
HF = "model.language_model.layers"  # the checkpoint's names (Intel AutoRound Qwen3.5)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file by its format (8-byte LE header length, JSON header, data): each
    tensor is zero bytes of its dtype and shape; only the header matters to the config code."""
    sizes = {"F8_E4M3": 1, "I32": 4, "F16": 2, "BF16": 2, "F32": 4}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in sorted(tensors.items()):
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def int4_gptq(rows_out: int, cols_in: int) -> dict[str, tuple[str, list[int]]]:
    """AutoRound's auto_round:auto_gptq packing of an [out, in] linear: qweight [in/8, out]
    int32, qzeros [in/group, out/8] int32, scales [in/group, out] fp16."""
    return {
        "qweight": ("I32", [cols_in // 8, rows_out]),
        "qzeros": ("I32", [cols_in // GROUP, rows_out // 8]),
        "scales": ("F16", [cols_in // GROUP, rows_out]),
    }


def fp8_block(rows_out: int, cols_in: int) -> dict[str, tuple[str, list[int]]]:
    """Qwen's FP8 checkpoint form: F8_E4M3 weight [out, in], float32 block scales."""
    return {
        "weight": ("F8_E4M3", [rows_out, cols_in]),
        "weight_scale_inv": ("F32", [-(-rows_out // BLOCK[0]), -(-cols_in // BLOCK[1])]),
    }


def write_checkpoint(root: Path) -> dict:
    tensors: dict[str, tuple[str, list[int]]] = {}
    extra_config: dict[str, dict] = {}

    def add(prefix: str, parts: dict[str, tuple[str, list[int]]]) -> None:
        for leaf, spec in parts.items():
            tensors[f"{prefix}.{leaf}"] = spec

    for i in range(LAYERS):
        layer = f"{HF}.{i}"
        if i == LAYERS - 1:
            q_out = HEADS * HEAD_DIM * 2  # Qwen3.5's gated attention: q and its gate
            add(f"{layer}.self_attn.q_proj", int4_gptq(q_out, HIDDEN))
            add(f"{layer}.self_attn.k_proj", int4_gptq(KV_HEADS * HEAD_DIM, HIDDEN))
            add(f"{layer}.self_attn.v_proj", int4_gptq(KV_HEADS * HEAD_DIM, HIDDEN))
            add(f"{layer}.self_attn.o_proj", int4_gptq(HIDDEN, HEADS * HEAD_DIM))
        else:
            for name in ("in_proj_a", "in_proj_b"):  # kept in 16 bits by AutoRound
                tensors[f"{layer}.linear_attn.{name}.weight"] = ("BF16", [8, HIDDEN])
                extra_config[f"{layer}.linear_attn.{name}"] = {"bits": 16, "data_type": "float"}
        for e in range(2):  # routed experts: INT4
            for proj, (o, n) in {
                "gate_proj": (128, HIDDEN),
                "up_proj": (128, HIDDEN),
                "down_proj": (HIDDEN, 128),
            }.items():
                add(f"{layer}.mlp.experts.{e}.{proj}", int4_gptq(o, n))
        # The shared expert: 16 bits in AutoRound's config, FP8 with block scales in the hybrid
        # checkpoint (seed 003: Qwen's FP8 tensors put in place of AutoRound's BF16 ones).
        for proj, (o, n) in {
            "gate_proj": (SHARED_INTER, HIDDEN),
            "up_proj": (SHARED_INTER, HIDDEN),
            "down_proj": (HIDDEN, SHARED_INTER),
        }.items():
            add(f"{layer}.mlp.shared_expert.{proj}", fp8_block(o, n))
            extra_config[f"{layer}.mlp.shared_expert.{proj}"] = {"bits": 16, "data_type": "float"}
        tensors[f"{layer}.mlp.gate.weight"] = ("BF16", [2, HIDDEN])
        tensors[f"{layer}.mlp.shared_expert_gate.weight"] = ("BF16", [1, HIDDEN])
        extra_config[f"{layer}.mlp.gate"] = {"bits": 16, "data_type": "float"}
        extra_config[f"{layer}.mlp.shared_expert_gate"] = {"bits": 16, "data_type": "float"}
    quantization_config = {
        "quant_method": "auto-round",
        "autoround_version": "0.9.0",
        "bits": 4,
        "group_size": GROUP,
        "sym": True,
        "data_type": "int",
        "iters": 200,
        "nsamples": 128,
        "seqlen": 2048,
        "packing_format": "auto_round:auto_gptq",
        "block_name_to_quantize": HF,
        "extra_config": extra_config,
    }
    text_config = {
        "model_type": "qwen3_5_moe_text",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_experts": 2,
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": SHARED_INTER,
        "layer_types": ["linear_attention"] * (LAYERS - 1) + ["full_attention"],
        "full_attention_interval": LAYERS,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25},
    }
    config = {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text_config,
        "vision_config": {"depth": 1, "hidden_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN},
        "torch_dtype": "bfloat16",
        "quantization_config": quantization_config,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    write_safetensors(root / "model-00001-of-00001.safetensors", tensors)
    return config


def _class_assigns(path: Path, cls: str) -> dict[str, ast.expr]:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {
                t.id: n.value
                for n in node.body
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
    raise LookupError(f"{path}: no class {cls}")


def model_class_mappings(root: Path, weights_mapper: type) -> type:
    """Qwen3_5MoeForConditionalGeneration's ``hf_to_vllm_mapper`` and ``packed_modules_mapping``,
    read from this vLLM's model files (the class itself does not import here: its module imports
    transformers' Qwen2-VL image processor, which needs torchvision, and PyPI's torchvision does
    not load beside the CPU torch). The MoE class inherits both from Qwen3_5ForConditionalGeneration,
    which extends Qwen3VLForConditionalGeneration's mapping; a vLLM that moves them fails here."""
    models = root / "model_executor" / "models"
    vl = _class_assigns(models / "qwen3_vl.py", "Qwen3VLForConditionalGeneration")
    q35 = _class_assigns(models / "qwen3_5.py", "Qwen3_5ForConditionalGeneration")
    moe = _class_assigns(models / "qwen3_5.py", "Qwen3_5MoeForConditionalGeneration")
    if "packed_modules_mapping" in moe or "hf_to_vllm_mapper" in moe or "hf_to_vllm_mapper" in q35:
        raise LookupError("the Qwen3.5 MoE class defines its own mappings: read them here")
    packed = q35["packed_modules_mapping"]
    if not (isinstance(packed, ast.BinOp) and isinstance(packed.op, ast.BitOr)):
        raise LookupError("Qwen3_5ForConditionalGeneration.packed_modules_mapping changed form")
    mapping = ast.literal_eval(vl["packed_modules_mapping"]) | ast.literal_eval(packed.right)
    call = vl["hf_to_vllm_mapper"]
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "WeightsMapper"):
        raise LookupError("Qwen3VLForConditionalGeneration.hf_to_vllm_mapper changed form")
    mapper = weights_mapper(**{k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg})
    return type(
        "Qwen3_5MoeForConditionalGeneration",
        (),
        {"hf_to_vllm_mapper": mapper, "packed_modules_mapping": mapping},
    )


def main() -> int:
    work = Path(sys.argv[1])
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            site.addsitedir(entry)  # its .pth files, as in site-packages: apply.py's rigkit_vllm_patches.pth
    platform = cuda_platform.present()
    import inspect

    import torch
    import vllm
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )
    from vllm.model_executor.layers.quantization import get_quantization_config
    from vllm.model_executor.layers.quantization import inc as inc_module
    from vllm.model_executor.model_loader.utils import configure_quant_config
    from vllm.model_executor.models.utils import WeightsMapper

    config = write_checkpoint(work / "ckpt")
    model = str(work / "ckpt")
    qc = config["quantization_config"]
    cls = get_quantization_config("inc")
    quant = cls.from_config(qc)
    params = inspect.signature(quant.maybe_update_config).parameters
    if "hf_config" in params or vllm.__version__.startswith("0.20"):
        from vllm.transformers_utils.config import get_config

        hf_config = get_config(model, trust_remote_code=False)
        quant.maybe_update_config(model, hf_config=hf_config)  # vllm/config/vllm.py of 0.20
    else:
        quant.maybe_update_config(model)  # vllm/config/vllm.py of 0.19
    configure_quant_config(quant, model_class_mappings(Path(vllm.__file__).parent, WeightsMapper))

    p = "language_model.model.layers"
    dims = {"params_dtype": torch.bfloat16, "quant_config": quant}
    results: dict[str, dict] = {}
    vllm_config = VllmConfig()
    # The one field of the model's config the FP8 method reads (its activation dtype). vLLM's
    # ModelConfig is not built here: it inspects the model class in a subprocess, whose module
    # needs torchvision (see model_class_mappings).
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{work / 'dist'}", backend="gloo"
        )
        initialize_model_parallel(1, 1)
        object.__setattr__(vllm_config, "model_config", types.SimpleNamespace(dtype=torch.bfloat16))
        specs = {
            f"{p}.0.mlp.shared_expert.gate_up_proj": lambda pre: MergedColumnParallelLinear(
                HIDDEN, [SHARED_INTER] * 2, bias=False, prefix=pre, **dims
            ),
            f"{p}.0.mlp.shared_expert.down_proj": lambda pre: RowParallelLinear(
                SHARED_INTER, HIDDEN, bias=False, prefix=pre, **dims
            ),
            f"{p}.3.mlp.shared_expert.gate_up_proj": lambda pre: MergedColumnParallelLinear(
                HIDDEN, [SHARED_INTER] * 2, bias=False, prefix=pre, **dims
            ),
            f"{p}.3.self_attn.qkv_proj": lambda pre: QKVParallelLinear(
                HIDDEN, HEAD_DIM, HEADS * 2, KV_HEADS, bias=False, prefix=pre, **dims
            ),
            f"{p}.3.self_attn.o_proj": lambda pre: RowParallelLinear(
                HEADS * HEAD_DIM, HIDDEN, bias=False, prefix=pre, **dims
            ),
            f"{p}.0.mlp.shared_expert_gate": lambda pre: ReplicatedLinear(HIDDEN, 1, bias=False, prefix=pre, **dims),
        }
        for prefix, make in specs.items():
            layer = make(prefix)
            method = layer.quant_method
            entry = {"layer": type(layer).__name__, "method": type(method).__name__}
            cfg = getattr(method, "quant_config", None)
            if cfg is not None and hasattr(cfg, "weight_block_size"):
                entry["weight_block_size"] = cfg.weight_block_size
            if cfg is not None and hasattr(cfg, "weight_bits"):
                entry["weight_bits"] = cfg.weight_bits
                entry["group_size"] = cfg.group_size
            entry["params"] = sorted(
                f"{n}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}" for n, t in layer.named_parameters()
            )
            # get_quant_method asked again, on the built layer: the answer vLLM's loader sees
            entry["asked_again"] = type(quant.get_quant_method(layer, prefix)).__name__
            results[prefix] = entry
    (work / "result.json").write_text(
        json.dumps(
            {
                "vllm": vllm.__version__,
                "platform": type(platform).__name__,
                "patched": getattr(inc_module, "RIGKIT_INC_HYBRID_FP8", False),
                "fp8_layers": sorted(getattr(quant, "fp8_layers", ())),
                "layers": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
