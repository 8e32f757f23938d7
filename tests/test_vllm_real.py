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


# --- C: every flag rigkit renders, parsed by each version's own `vllm serve` parser ----------

REPO = Path(__file__).resolve().parents[1]
INVENTORIES = {"spark.py": "spark", "spark-cluster.py": "sparks", "vllm-tp4.py": "tp4"}
REFUSED = "refused:unknown-flag"


def inventory_services() -> dict[str, list[str]]:
    """name -> serve argv, for every vLLM service of the seeds' inventories (a cluster's head
    with its Ray flags), rendered by rigkit.render.vllm.serve_args as deploys/rig.py does."""
    import runpy

    from rigkit.hostdata import parse_rig
    from rigkit.render import vllm as render

    out: dict[str, list[str]] = {}
    for file, group in INVENTORIES.items():
        for host, data in runpy.run_path(str(REPO / "inventories" / file))[group]:
            rig = parse_rig(host, {k: v for k, v in data.items() if k in ("gpus", "cluster", "services", "models")})
            for svc in rig.services:
                if svc.engine != "vllm" or (rig.cluster is not None and not rig.is_head):
                    continue
                out[f"{file}:{host}:{svc.name}"] = render.serve_args(svc, rig.cluster if rig.cluster else None)
    return out


def every_option_services():
    """Services that between them set every option rigkit renders (both prefix-caching forms)."""
    from rigkit.hostdata import parse_rig

    base = {
        "engine": "vllm",
        "model": "/srv/models/every",
        "alias": "every-option",
        "port": 8000,
        "ctx": 65536,
        "base_image": "vllm/vllm-openai:v0.20.2",
        "gpu_memory_utilization": 0.85,
        "tensor_parallel": 2,
        "pipeline_parallel": 2,
        "dtype": "bfloat16",
        "reasoning_parser": "qwen3",
        "enable_auto_tool_choice": True,
        "tool_call_parser": "qwen3_coder",
        "attention_backend": "FLASHINFER",
        "speculative": {"method": "mtp", "num_speculative_tokens": 2},
        "skip_mm_profiling": True,
        "limit_mm_per_prompt": {"image": 2, "video": 0},
        "max_num_batched_tokens": 8192,
        "max_num_seqs": 64,
    }
    services = []
    for name, caching in (("every-on", True), ("every-off", False)):
        rig = parse_rig(
            "every", {"gpus": {"count": 4}, "services": [dict(base, name=name, enable_prefix_caching=caching)]}
        )
        services.append(rig.services[0])
    return services


def meant(svc, argv: list[str]) -> dict:
    """The parsed values rigkit means by ``argv`` (from the service's own fields)."""
    from rigkit.hostdata.vllm import options_of

    opts = options_of(svc)
    want: dict = {
        "model_tag": svc.model,
        "served_model_name": [svc.model_id],
        "host": svc.host,
        "port": svc.port,
        "max_model_len": svc.ctx,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "tensor_parallel_size": opts.tensor_parallel,
        "pipeline_parallel_size": opts.pipeline_parallel,
        "dtype": opts.dtype or "auto",
        "reasoning_parser": opts.reasoning_parser or "",
        "enable_auto_tool_choice": opts.enable_auto_tool_choice,
        "tool_call_parser": opts.tool_call_parser,
        "attention_backend": opts.attention_backend,
        "speculative_config": opts.speculative,
        "skip_mm_profiling": opts.skip_mm_profiling,
        "limit_mm_per_prompt": opts.limit_mm_per_prompt or {},
        "enable_prefix_caching": opts.enable_prefix_caching,
    }
    if opts.max_num_batched_tokens:
        want["max_num_batched_tokens"] = opts.max_num_batched_tokens
    if opts.max_num_seqs:
        want["max_num_seqs"] = opts.max_num_seqs
    if "--distributed-executor-backend" in argv:
        want["distributed_executor_backend"] = argv[argv.index("--distributed-executor-backend") + 1]
    return want


@pytest.fixture(scope="session")
def parsed_by_version(cpu_env, tmp_path_factory):
    """One vLLM process per version parses every argv and reads the registries."""
    services = {f"every-option:{s.name}": s for s in every_option_services()}
    from rigkit.render import vllm as render

    argvs = inventory_services() | {name: render.serve_args(s) for name, s in services.items()}
    refused = {REFUSED: [*next(iter(argvs.values())), "--no-such-rigkit-flag"]}
    cache: dict[str, dict] = {}

    def get(version: str) -> tuple[dict, dict[str, list[str]]]:
        if version not in cache:
            work = tmp_path_factory.mktemp(f"parser-{version}")
            (work / "in.json").write_text(json.dumps({"argvs": argvs | refused}))
            done = vllm_cpu.run(
                cpu_env,
                cpu_env.trees[version].pristine,
                "serve_parser_case.py",
                str(work / "in.json"),
                str(work / "out.json"),
            )
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
            cache[version] = json.loads((work / "out.json").read_text())
        return cache[version], argvs

    get.services = services  # type: ignore[attr-defined]
    return get


def _service_of(name: str):
    import runpy

    from rigkit.hostdata import parse_rig

    file, host, svc_name = name.split(":")
    group = INVENTORIES[file]
    data = dict(runpy.run_path(str(REPO / "inventories" / file))[group])[host]
    rig = parse_rig(host, {k: v for k, v in data.items() if k in ("gpus", "cluster", "services", "models")})
    return next(s for s in rig.services if s.name == svc_name)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_flag_parses_in_vllms_own_parser(parsed_by_version, version):
    from rigkit.hostdata.vllm import RENDERED_FLAGS

    result, argvs = parsed_by_version(version)
    assert result["vllm"] == version
    assert len([n for n in argvs if not n.startswith("every-option:")]) >= 3  # spark, spark-cluster head, tp4
    # The argvs between them carry every flag rigkit can render.
    assert set(RENDERED_FLAGS) <= {a for argv in argvs.values() for a in argv if a.startswith("--")}
    for name, argv in argvs.items():
        got = result["parsed"][name]
        assert got["ok"], f"vLLM {version} refuses {name}: {got['error'].splitlines()[-1:]}"
        svc = parsed_by_version.services.get(name) or _service_of(name)
        for dest, value in meant(svc, argv).items():
            assert got["namespace"][dest] == value, (version, name, dest, got["namespace"][dest], value)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_flag_vllm_lacks_is_refused_by_its_parser(parsed_by_version, version):
    """The parser case tells a refusal from a parse: a rendered argv plus one unknown flag fails."""
    result, _ = parsed_by_version(version)
    bad = result["parsed"][REFUSED]
    assert not bad["ok"] and "unrecognized arguments: --no-such-rigkit-flag" in bad["error"]


@pytest.mark.parametrize("version", VERSIONS)
def test_option_tables_registries_are_vllms_own(parsed_by_version, version):
    """The committed option table's registries (rigkit/hostdata/option_tables/vllm-<version>.json,
    key "registries") equal what this version registers, and its --dtype choices the parser's."""
    result, _ = parsed_by_version(version)
    table = json.loads((REPO / "rigkit" / "hostdata" / "option_tables" / f"vllm-{version}.json").read_text())
    assert "registries" in table, (
        f"option table vllm-{version}.json has no 'registries'; vLLM's are {result['registries']}"
    )
    for key, names in result["registries"].items():
        assert sorted(table["registries"][key]) == names, (version, key)
    assert sorted(table["options"]["--dtype"]["choices"]) == result["dtype_choices"]
