"""
Recipes: named, versioned transformations of a checkpoint's tensor layout. STDLIB ONLY.

A build starts from its ``base`` input (every tensor where the base has it) and applies its
recipes in order; each takes tensors from the inputs it names by role and reports what it
replaced, skipped (and why) and added. A recipe's version is part of a derived model's
identity: a recipe whose output changes gets a new version, and every host builds anew.

* ``hybrid-fp8-shared-experts`` (v1, inputs ``base`` and ``fp8``): seed 003's hybrid. Each
  shared-expert dense layer of the main model (``*.mlp.shared_expert.{gate,up,down}_proj``)
  that the base stores as a BF16 ``.weight`` is replaced by the FP8 input's ``.weight``
  (F8_E4M3) and its block scales ``.weight_scale_inv`` (F32): the layers vLLM's patched INC
  config (``rigkit_vllm_patches.inc_hybrid.find_fp8_layers``) sends to the FP8 linear method,
  with one block size for all. The FP8 input's other tensors are skipped, each with its
  reason: routed experts and the vision tower are "excluded by name pattern" (INT4 in the
  base, AutoRound's MoE kernels); a tensor the base has under the same name is the base's
  to keep; the rest have "no counterpart" in the base's main model (the linear-attention and
  attention projections the base names or quantizes differently, and the FP8 MTP layer:
  MTP weights are mtp-index's, from the base). Seed 003 counts the last as its 408
  "unmatched" tensors. ``config.json``'s AutoRound ``quantization_config.extra_config``
  marks each replaced layer ``bits: 16`` where INC would otherwise take it for INT4.
* ``mtp-index`` (v1, input ``mtp``): the ``mtp.*`` tensors of the input (a checkpoint whose
  index maps them: the INT4 AutoRound one keeps them in ``model_extra_tensors.safetensors``)
  put into the output and its index, which a hybrid built by hand drops.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .safetensors import CheckpointError
from .sources import Checkpoint, TensorRef

WEIGHT, SCALE = ".weight", ".weight_scale_inv"
FP8_DTYPE, SCALE_DTYPE, DENSE_DTYPES = "F8_E4M3", "F32", frozenset({"BF16", "F16", "F32"})
SHARED_EXPERT_LAYER = re.compile(r"(?:.*\.)?mlp\.shared_expert\.(?:gate|up|down)_proj", re.ASCII)
# FP8 input tensors the hybrid never takes: routed experts (INT4 in the base, AutoRound's
# MoE kernels) and the vision tower.
EXCLUDED = re.compile(r"(?:.*\.)?experts\..*|(?:model\.)?visual\..*", re.ASCII)
MTP_PREFIX = "mtp."

NO_COUNTERPART = "no counterpart"
EXCLUDED_BY_PATTERN = "excluded by name pattern"
BASE_KEEPS_OWN = "the base keeps its own"


@dataclass
class Plan:
    """The output being planned: each tensor and where its bytes come from, and config.json."""

    base: Checkpoint
    tensors: dict[str, TensorRef]
    config: dict[str, Any] | None
    config_changes: list[str] = field(default_factory=list)

    @classmethod
    def from_base(cls, base: Checkpoint, config: dict[str, Any] | None) -> Plan:
        return cls(base, {name: base.ref(name) for name in base.weight_map}, config)


@dataclass
class Report:
    """What one recipe did."""

    recipe: str
    version: int
    replaced: list[str] = field(default_factory=list)  # layers (without .weight)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> tensor names
    added: list[str] = field(default_factory=list)  # tensors
    present: list[str] = field(default_factory=list)  # tensors the output already had
    block_size: list[int] | None = None
    config_changes: list[str] = field(default_factory=list)

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)

    def counts(self) -> dict[str, int]:
        out = {"replaced": len(self.replaced), "added": len(self.added), "present": len(self.present)}
        for reason, names in self.skipped.items():
            out[f"skipped: {reason}"] = len(names)
        return out

    def to_data(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "version": self.version,
            "counts": self.counts(),
            "block_size": self.block_size,
            "replaced": self.replaced,
            "skipped": {reason: sorted(names) for reason, names in sorted(self.skipped.items())},
            "added": sorted(self.added),
            "present": sorted(self.present),
            "config_changes": self.config_changes,
        }

    def summary(self) -> str:
        parts = [f"{k} {v}" for k, v in self.counts().items() if v or k == "replaced"]
        block = f", block size {self.block_size}" if self.block_size else ""
        return f"{self.recipe} v{self.version}: " + ", ".join(parts) + block


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    roles: tuple[str, ...]  # the inputs it reads, by role (besides the plan so far)
    ranged: tuple[str, ...]  # roles it can read by HTTP range (only the tensors it takes)
    apply: Callable[[Plan, Mapping[str, Checkpoint]], Report]
    wanted: Callable[[Checkpoint], list[str]]  # tensors of a ranged input it may take
    # A known model (its base's Hub repository) -> the counts this recipe must produce.
    expected: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def check_expected(self, model: str | None, report: Report) -> None:
        """Fail when a known model's counts differ: before anything replaces the old output."""
        want = self.expected.get(model or "")
        if not want:
            return
        got: dict[str, Any] = dict(report.counts())
        got["block_size"] = report.block_size
        got["mtp"] = len(report.added) + len(report.present)
        wrong = {k: (v, got.get(k, 0)) for k, v in want.items() if got.get(k, 0) != v}
        if wrong:
            raise CheckpointError(
                f"{self.name} v{self.version} on {model}: "
                + "; ".join(f"{k}: expected {v}, got {g}" for k, (v, g) in wrong.items())
                + " (the inputs are not the checkpoints this recipe was checked against; nothing replaced)"
            )


# --------------------------------------------------------------------------- #
# hybrid-fp8-shared-experts
# --------------------------------------------------------------------------- #


def _block(weight: tuple[int, ...], scale: tuple[int, ...], name: str) -> list[int]:
    """Block size a weight's scale implies (inc_hybrid.find_fp8_layers: ceil division)."""
    if len(weight) != 2 or len(scale) != 2 or 0 in scale:
        raise CheckpointError(f"{name}: expected a 2-D weight and scale, got {list(weight)} and {list(scale)}")
    return [-(-weight[0] // scale[0]), -(-weight[1] // scale[1])]


def _replaceable(layer: str) -> bool:
    """A main-model shared-expert layer (the MTP layer's are mtp-index's, from the base)."""
    return not layer.startswith(MTP_PREFIX) and SHARED_EXPERT_LAYER.fullmatch(layer) is not None


def shared_expert_wanted(fp8: Checkpoint) -> list[str]:
    """The FP8 input's tensors the hybrid may take: shared-expert FP8 weights and scales."""
    out = []
    for name in fp8.weight_map:
        for suffix in (WEIGHT, SCALE):
            if name.endswith(suffix) and _replaceable(name[: -len(suffix)]):
                out.append(name)
    return sorted(out)


def apply_hybrid(plan: Plan, inputs: Mapping[str, Checkpoint]) -> Report:
    fp8 = inputs["fp8"]
    base = plan.base
    report = Report(HYBRID.name, HYBRID.version)
    taken: set[str] = set()
    for name in sorted(fp8.weight_map):
        if not name.endswith(WEIGHT):
            continue
        layer = name[: -len(WEIGHT)]
        if EXCLUDED.fullmatch(name) or not _replaceable(layer):
            continue
        info = fp8.ref(name).info(name)
        if info.dtype != FP8_DTYPE:
            raise CheckpointError(
                f"{fp8.label}: {name}: expected {FP8_DTYPE} (a shared-expert FP8 weight), got {info.dtype}"
            )
        if layer + SCALE not in fp8.weight_map:
            raise CheckpointError(f"{fp8.label}: {name}: an FP8 weight without its scale {layer + SCALE}")
        scale = fp8.ref(layer + SCALE).info(layer + SCALE)
        if scale.dtype != SCALE_DTYPE:
            raise CheckpointError(
                f"{fp8.label}: {layer + SCALE}: expected {SCALE_DTYPE} block scales, got {scale.dtype}"
            )
        if name not in base.weight_map:
            continue  # counted below with the rest the base lacks
        mine = base.ref(name).info(name)
        others = [n for n in base.weight_map if n.startswith(layer + ".") and n != name]
        if mine.dtype not in DENSE_DTYPES or others:
            raise CheckpointError(
                f"{base.label}: {layer}: expected a dense {'/'.join(sorted(DENSE_DTYPES))} weight to replace, got "
                f"{mine.dtype}{' with ' + ', '.join(sorted(others)) if others else ''}"
            )
        if mine.shape != info.shape:
            raise CheckpointError(f"{layer}: the base's weight is {list(mine.shape)}, the FP8 one {list(info.shape)}")
        block = _block(info.shape, scale.shape, layer + SCALE)
        if report.block_size is None:
            report.block_size = block
        elif block != report.block_size:
            raise CheckpointError(
                f"{fp8.label}: {layer}: block size {block} differs from {report.block_size} of the other FP8 layers"
            )
        plan.tensors[name] = fp8.ref(name)
        plan.tensors[layer + SCALE] = fp8.ref(layer + SCALE)
        report.replaced.append(layer)
        taken.update((name, layer + SCALE))
    for name in sorted(fp8.weight_map):
        if name in taken:
            continue
        if EXCLUDED.fullmatch(name):
            report.skip(EXCLUDED_BY_PATTERN, name)
        elif name in base.weight_map and not name.startswith(MTP_PREFIX):
            report.skip(BASE_KEEPS_OWN, name)
        else:
            report.skip(NO_COUNTERPART, name)
    report.config_changes = mark_unquantized(plan, report.replaced)
    return report


def inc_bits(qconfig: Mapping[str, Any], layer: str) -> int:
    """The weight bits vLLM's ``INCConfig.get_layer_config`` gives a linear layer (0.19.1:
    an exact ``extra_config`` entry first, then ``block_name_to_quantize`` prefixes, then
    ``extra_config`` regular expressions, then ``bits``)."""
    default = qconfig.get("bits", 4)
    extra = qconfig.get("extra_config") or {}
    if layer in extra:
        return extra[layer].get("bits", default)
    blocks = qconfig.get("block_name_to_quantize", qconfig.get("to_quant_block_names"))
    if isinstance(blocks, str):
        blocks = blocks.split(",")
    quantized = any(layer.startswith(b) for b in blocks) if blocks else True
    fallback = default if quantized else 16
    for pattern, cfg in extra.items():
        if isinstance(pattern, str) and any(c in r"*+?^$()[]{}|\\" for c in pattern):
            try:
                if re.search(pattern, layer):
                    return cfg.get("bits", fallback)
            except re.error:
                continue
    return fallback


def mark_unquantized(plan: Plan, layers: list[str]) -> list[str]:
    """config.json's AutoRound quantization_config given an exact ``bits: 16`` entry for each
    FP8 layer INC would otherwise load as INT4 (the patched INC sends bits-16 layers stored
    as FP8 to the FP8 method)."""
    if plan.config is None:
        return []
    qconfig = plan.config.get("quantization_config")
    if qconfig is None:
        return []
    if not isinstance(qconfig, dict) or not isinstance(qconfig.get("extra_config", {}), dict):
        raise CheckpointError("config.json: quantization_config: expected an object (with extra_config an object)")
    changes = []
    for layer in layers:
        if inc_bits(qconfig, layer) < 16:
            qconfig.setdefault("extra_config", {})[layer] = {"bits": 16, "data_type": "fp"}
            changes.append(f"quantization_config.extra_config[{layer}] = bits 16 (FP8, not INT4)")
    plan.config_changes.extend(changes)
    return changes


HYBRID = Recipe(
    name="hybrid-fp8-shared-experts",
    version=1,
    roles=("fp8",),
    ranged=("fp8",),
    apply=apply_hybrid,
    wanted=shared_expert_wanted,
    # Seed 003: vLLM "detected 144 FP8 dense layers (block_size=[128, 128])"; its build script
    # left 408 FP8 (non-expert) tensors unmatched.
    expected={
        "Intel/Qwen3.5-122B-A10B-int4-AutoRound": {
            "replaced": 144,
            f"skipped: {NO_COUNTERPART}": 408,
            "block_size": [128, 128],
        }
    },
)


# --------------------------------------------------------------------------- #
# mtp-index
# --------------------------------------------------------------------------- #


def mtp_wanted(source: Checkpoint) -> list[str]:
    return sorted(n for n in source.weight_map if n.startswith(MTP_PREFIX))


def apply_mtp(plan: Plan, inputs: Mapping[str, Checkpoint]) -> Report:
    source = inputs["mtp"]
    report = Report(MTP_INDEX.name, MTP_INDEX.version)
    names = mtp_wanted(source)
    if not names:
        raise CheckpointError(f"{source.label}: no {MTP_PREFIX}* tensors (the MTP weights) in its index")
    for name in names:
        mine = plan.tensors.get(name)
        if mine is None:
            plan.tensors[name] = source.ref(name)
            report.added.append(name)
        elif mine.info(name).to_json() != source.ref(name).info(name).to_json():
            raise CheckpointError(f"{name}: the output has it as {mine.info(name).to_json()}, the MTP source otherwise")
        else:
            report.present.append(name)
    return report


MTP_INDEX = Recipe(
    name="mtp-index",
    version=1,
    roles=("mtp",),
    ranged=(),
    apply=apply_mtp,
    wanted=mtp_wanted,
    # Seed 003: 785 MTP tensors in model_extra_tensors.safetensors.
    expected={"Intel/Qwen3.5-122B-A10B-int4-AutoRound": {"mtp": 785}},
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (HYBRID, MTP_INDEX)}
