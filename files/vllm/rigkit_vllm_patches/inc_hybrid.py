"""
Hybrid INT4+FP8 checkpoints served through vLLM's INC (AutoRound) config (seed 003): the
INT4 checkpoint's shared-expert dense layers replaced by FP8 ones with block scales. vLLM
0.19's ``INCConfig`` sends every layer that is not INT4 to ``UnquantizedLinearMethod``, so
the FP8 weights were upcast (or refused); the patched ``inc.py`` asks this module which
layers are FP8 and hands those to vLLM's FP8 linear method instead.

Stdlib only: it reads the safetensors metadata vLLM already parsed
(``{name: {"dtype": "F8_E4M3", "shape": [..]}}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FP8_DTYPES = frozenset({"F8_E4M3"})
WEIGHT, SCALE = ".weight", ".weight_scale_inv"


class HybridCheckpointError(ValueError):
    """FP8 layers whose block sizes disagree or do not divide their weights."""


def find_fp8_layers(metadata: Mapping[str, Any]) -> tuple[frozenset[str], list[int] | None]:
    """The layers (names without ``.weight``) stored as FP8 with a ``.weight_scale_inv``
    partner, and the block size ``[rows, cols]`` their shapes imply (weight shape / scale
    shape). No FP8 layer: ``(frozenset(), None)``."""
    layers: set[str] = set()
    block: list[int] | None = None
    for name, info in metadata.items():
        if not isinstance(info, Mapping) or not name.endswith(WEIGHT) or info.get("dtype") not in FP8_DTYPES:
            continue
        layer = name[: -len(WEIGHT)]
        scale = metadata.get(layer + SCALE)
        if not isinstance(scale, Mapping):
            continue  # FP8 without block scales: not this checkpoint format
        w_shape, s_shape = list(info.get("shape", [])), list(scale.get("shape", []))
        if len(w_shape) != 2 or len(s_shape) != 2 or 0 in s_shape:
            raise HybridCheckpointError(f"{name}: expected 2-D weight and scale, got {w_shape} and {s_shape}")
        this = [-(-w_shape[0] // s_shape[0]), -(-w_shape[1] // s_shape[1])]  # ceil: partial last block
        if block is None:
            block = this
        elif this != block:
            raise HybridCheckpointError(f"{name}: block size {this} differs from {block} of the other FP8 layers")
        layers.add(layer)
    return frozenset(layers), (block if layers else None)


def is_fp8_layer(prefix: str, fp8_layers: Iterable[str], packed: Mapping[str, list[str]] | None = None) -> bool:
    """Whether vLLM's layer ``prefix`` is FP8 in the checkpoint: by its own name (with or
    without a leading ``model.``), or, for a fused layer (``packed``: fused name -> its
    shards, e.g. ``gate_up_proj`` -> ``[gate_proj, up_proj]``), when every shard is."""
    layers = set(fp8_layers)
    if not layers or not prefix:
        return False

    def known(name: str) -> bool:
        return name in layers or f"model.{name}" in layers or name.removeprefix("model.") in layers

    if known(prefix):
        return True
    parent, _, leaf = prefix.rpartition(".")
    shards = (packed or {}).get(leaf)
    if shards:
        return all(known(f"{parent}.{shard}" if parent else shard) for shard in shards)
    return False


def map_names(fp8_layers: Iterable[str], mapper: Any) -> frozenset[str]:
    """The layer names after vLLM's ``WeightsMapper`` (checkpoint names -> vLLM's)."""
    return frozenset(mapper.apply_list(sorted(fp8_layers)))
