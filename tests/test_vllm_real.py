"""rigkit's vLLM patches inside real vLLM code, for every supported version, without a GPU.

Real: each version's wheel from PyPI (installed ``--no-deps``), vLLM's own Python modules and
the dependencies they import (tests/vllm_cpu_requirements.txt, beside PyTorch's CPU build), the
patched copy made by rigkit's own apply.py as the image build runs it, and the image's own
selfcheck.py. Presented: the CUDA platform, for the INC case only (see
tests/vllm_cpu_cases/inc_hybrid_case.py): vLLM's CudaPlatform class as vLLM's own tests use it
(``patch("vllm.platforms.current_platform", CudaPlatform())`` with ``get_device_capability``
patched, here to the Spark's SM 12.1), empty modules for vLLM's compiled CUDA extensions (they
need libcuda to load; no kernel runs), four capability queries of its kernel library answered
by SM, and the model config's activation dtype. The environment is built once per machine and
cached (tests/vllm_cpu.py); a cold build takes minutes, a warm one none.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import vllm_cpu
import vllm_wheel

VERSIONS = vllm_wheel.VLLM_VERSIONS
HF = "model.language_model.layers"  # the checkpoint's names
VLLM = "language_model.model.layers"  # vLLM's, after Qwen3.5's hf_to_vllm_mapper


@pytest.fixture(scope="session")
def cpu_env() -> vllm_cpu.Env:
    try:
        return vllm_cpu.build()
    except RuntimeError as exc:
        if "no Python 3.11" in str(exc):
            pytest.skip(str(exc))
        raise


def read_safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


@pytest.fixture(scope="session")
def inc_results(cpu_env, tmp_path_factory):
    """One vLLM process per (version, pristine|patched), run on first use and shared."""
    cache: dict[tuple[str, bool], tuple[dict, dict]] = {}

    def get(version: str, patched: bool) -> tuple[dict, dict]:
        if (version, patched) not in cache:
            trees = cpu_env.trees[version]
            work = tmp_path_factory.mktemp(f"inc-{version}-{'patched' if patched else 'pristine'}")
            done = vllm_cpu.run(cpu_env, trees.patched if patched else trees.pristine, "inc_hybrid_case.py", str(work))
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
            result = json.loads((work / "result.json").read_text())
            ckpt = read_safetensors_header(next((work / "ckpt").glob("*.safetensors")))
            cache[(version, patched)] = (result, ckpt)
        return cache[(version, patched)]

    return get


def fp8_shared_expert_layers(ckpt: dict) -> dict[str, list[int]]:
    """vLLM prefix of each fused/plain shared-expert linear -> the [out, in] shape of the FP8
    weight it loads (gate_up_proj: gate_proj's and up_proj's rows together), from the file."""
    out: dict[str, list[int]] = {}
    for name, info in ckpt.items():
        if info["dtype"] != "F8_E4M3" or ".shared_expert." not in name:
            continue
        layer = name.removesuffix(".weight").replace(HF, VLLM, 1)
        parent, _, leaf = layer.rpartition(".")
        fused = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}.get(leaf, leaf)
        key = f"{parent}.{fused}"
        rows, cols = info["shape"]
        if key in out:
            assert out[key][1] == cols
            out[key][0] += rows
        else:
            out[key] = [rows, cols]
    return out


def block_of(ckpt: dict) -> list[int]:
    blocks = set()
    for name, info in ckpt.items():
        if name.endswith(".weight_scale_inv"):
            w = ckpt[name.removesuffix("_scale_inv")]["shape"]
            blocks.add((-(-w[0] // info["shape"][0]), -(-w[1] // info["shape"][1])))
    assert len(blocks) == 1, blocks
    return list(blocks.pop())


@pytest.mark.parametrize("version", VERSIONS)
def test_inc_patched_sends_fp8_shared_experts_to_vllms_fp8_method(inc_results, version):
    result, ckpt = inc_results(version, True)
    assert result["vllm"] == version and result["patched"] is True
    assert result["platform"].endswith("CudaPlatform")
    layers = result["layers"]
    fp8 = fp8_shared_expert_layers(ckpt)
    asked = {p: v for p, v in layers.items() if p in fp8}
    assert any(p.endswith(".gate_up_proj") for p in asked) and any(p.endswith(".down_proj") for p in asked)
    block = block_of(ckpt)
    for prefix, entry in asked.items():
        assert entry["method"] == "Fp8LinearMethod", (prefix, entry)
        assert entry["asked_again"] == "Fp8LinearMethod"
        assert entry["weight_block_size"] == block
        rows, cols = fp8[prefix]
        assert f"weight:float8_e4m3fn:{[rows, cols]}" in entry["params"], entry["params"]
        scale = [-(-rows // block[0]), -(-cols // block[1])]
        assert f"weight_scale_inv:float32:{scale}" in entry["params"], entry["params"]
    # Every FP8 weight of the file became a layer vLLM treats as FP8 (names as vLLM maps them).
    assert sorted(result["fp8_layers"]) == sorted(
        n.removesuffix(".weight").replace(HF, VLLM, 1) for n, i in ckpt.items() if i["dtype"] == "F8_E4M3"
    )
    _int4_and_bf16_layers_unchanged(layers, ckpt)


@pytest.mark.parametrize("version", VERSIONS)
def test_inc_unpatched_drops_fp8_shared_experts_to_unquantized(inc_results, version):
    """Seed 003's bug, in the real vLLM: the FP8 weights would be loaded as BF16."""
    result, ckpt = inc_results(version, False)
    assert result["vllm"] == version and result["patched"] is False
    fp8 = fp8_shared_expert_layers(ckpt)
    asked = [p for p in result["layers"] if p in fp8]
    assert any(p.endswith(".gate_up_proj") for p in asked) and any(p.endswith(".down_proj") for p in asked)
    for prefix in asked:
        entry = result["layers"][prefix]
        assert entry["method"] == "UnquantizedLinearMethod", (prefix, entry)
        assert all(":bfloat16:" in p for p in entry["params"]), entry["params"]
    _int4_and_bf16_layers_unchanged(result["layers"], ckpt)


def _int4_and_bf16_layers_unchanged(layers: dict, ckpt: dict) -> None:
    """The INT4 attention layers get INC's GPTQ method (Marlin, as on CUDA), with the group
    size of the file; the 16-bit gate stays unquantized: patched or not."""
    int4 = [p for p in layers if p.endswith((".qkv_proj", ".o_proj"))]
    assert len(int4) == 2
    for prefix in int4:
        entry = layers[prefix]
        assert entry["method"] == "GPTQMarlinLinearMethod", (prefix, entry)
        assert entry["weight_bits"] == 4
        hf = prefix.replace(VLLM, HF, 1).replace("qkv_proj", "q_proj")
        in_groups = ckpt[f"{hf}.scales"]["shape"][0]
        in_features = ckpt[f"{hf}.qweight"]["shape"][0] * 8
        assert entry["group_size"] == in_features // in_groups
        assert any(p.startswith("qweight:int32:") for p in entry["params"])
    gate = layers[f"{VLLM}.0.mlp.shared_expert_gate"]
    assert gate["method"] == "UnquantizedLinearMethod"


@pytest.mark.parametrize("version", VERSIONS)
def test_selfcheck_imports_the_patched_modules(cpu_env, version):
    """The image's selfcheck.py, against the patched copy, with vLLM's dependencies present:
    each patch's state and "imported", never "compiled only"."""
    trees = cpu_env.trees[version]
    done = vllm_cpu.run(
        cpu_env,
        trees.patched,
        str(vllm_cpu.VLLM_PATCH_DIR / "rigkit_vllm_patches" / "selfcheck.py"),
        "--record",
        str(trees.record),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    record = json.loads(trees.record.read_text())
    assert report["ok"] is True and report["failures"] == []
    assert report["vllm"] == version == record["vllm"]
    assert report["patches"] == sorted(vllm_cpu.PATCHES)
    states = report["patch_states"]
    for patch in record["patches"]:
        changed = any(e["result"] == "patched" for e in patch["edits"])
        assert states[patch["name"]]["state"] == ("applied" if changed else "not needed")
        assert states[patch["name"]]["import"] == "imported"
    # inc.py always needs the edit; the rope keys are a set already in both supported lines.
    assert states["inc-hybrid-fp8"]["state"] == "applied"
    assert not any("compiled only" in n for n in report["notes"])
    assert any("quantization.inc imported, RIGKIT_INC_HYBRID_FP8 set" in n for n in report["notes"])


@pytest.mark.parametrize("version", VERSIONS)
def test_patched_copy_leaves_the_pristine_tree_alone(cpu_env, version):
    """apply.py replaces what it edits, so the hard-linked pristine tree keeps PyPI's file."""
    trees = cpu_env.trees[version]
    inc = Path("model_executor/layers/quantization/inc.py")
    pristine, patched = trees.pristine / "vllm" / inc, trees.patched / "vllm" / inc
    assert "RIGKIT_INC_HYBRID_FP8" in patched.read_text()
    assert "RIGKIT_INC_HYBRID_FP8" not in pristine.read_text()
    assert pristine.stat().st_ino != patched.stat().st_ino
    with vllm_wheel.zipfile.ZipFile(vllm_wheel.wheel(version)) as zf:
        assert pristine.read_bytes() == zf.read(f"vllm/{inc}")
