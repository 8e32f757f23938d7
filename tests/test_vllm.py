"""The vLLM engine without Docker or a GPU: host data (valid, hostile, tensor parallel, pinned
bases), the rendered docker argv and unit, the image tag, the patches against vLLM 0.19.1's
real files from PyPI's wheel, the patch modules' logic and the MTP-weights check on small
safetensors files written here."""

from __future__ import annotations

import copy
import json
import shlex
import struct
import sys
from pathlib import Path

import pytest
from vllm_wheel import VLLM_VERSIONS, unpack

from rigkit.hostdata import HostDataError, parse_rig
from rigkit.hostdata.vllm import IMAGE_SOURCE
from rigkit.render import vllm as render
from rigkit.render.systemd import escape
from rigkit.scripts.vllm_host import mtp_weights_problem

sys.path.insert(0, str(IMAGE_SOURCE))
from rigkit_vllm_patches import apply, inc_hybrid, rope_keys, selfcheck  # noqa: E402

BASE = "vllm/vllm-openai:v0.19.1"


def spark() -> dict:
    """Seed 003's service on one GB10."""
    return {
        "gpus": {"count": 1, "cuda_arch": ["121"]},
        "services": [
            {
                "name": "qwen122b",
                "engine": "vllm",
                "model": "/srv/models/qwen122b-int4",
                "alias": "qwen3.5-122b",
                "port": 8000,
                "ctx": 262144,
                "base_image": BASE,
                "patches": ["inc-hybrid-fp8"],
                "gpu_memory_utilization": 0.90,
                "reasoning_parser": "qwen3",
                "attention_backend": "FLASHINFER",
                "enable_auto_tool_choice": True,
                "tool_call_parser": "qwen3_coder",
                "speculative": {"method": "mtp", "num_speculative_tokens": 1},
                "drop_page_cache": True,
            }
        ],
    }


def tp4() -> dict:
    """Seed 002's service on 4 GPUs."""
    return {
        "gpus": {"count": 4},
        "services": [
            {
                "name": "qwen122b",
                "engine": "vllm",
                "model": "/srv/models/qwen122b-gptq",
                "alias": "btbtyler09/Qwen3.5-122B-A10B-GPTQ-4bit",
                "ctx": 32768,
                "base_image": BASE,
                "patches": ["rope-keys-set"],
                "gpu_memory_utilization": 0.95,
                "tensor_parallel": 4,
                "reasoning_parser": "qwen3",
                "enable_auto_tool_choice": True,
                "tool_call_parser": "qwen3_coder",
                "dtype": "float16",
                "skip_mm_profiling": True,
                "limit_mm_per_prompt": {"image": 2},
            }
        ],
    }


def test_seed_002_flags_exactly():
    svc = parse_rig("tp4", tp4()).services[0]
    assert render.serve_args(svc) == [
        "/srv/models/qwen122b-gptq",
        "--served-model-name",
        "btbtyler09/Qwen3.5-122B-A10B-GPTQ-4bit",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.95",
        "--tensor-parallel-size",
        "4",
        "--dtype",
        "float16",
        "--reasoning-parser",
        "qwen3",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "qwen3_coder",
        "--skip-mm-profiling",
        "--limit-mm-per-prompt",
        '{"image":2}',
    ]
    argv = render.command_line(svc, "rigkit/vllm:0123456789abcdef", gpus=4)
    assert argv[:2] == ["/usr/bin/docker", "run"] and "--gpus" in argv and argv[argv.index("--gpus") + 1] == "all"
    assert argv[argv.index("--ipc") + 1] == "host" and argv[argv.index("--network") + 1] == "host"
    assert "/srv/models/qwen122b-gptq:/srv/models/qwen122b-gptq:ro" in argv and "HF_HUB_OFFLINE=1" in argv


def test_seed_003_flags_and_unit():
    svc = parse_rig("spark", spark()).services[0]
    args = render.serve_args(svc)
    assert args[args.index("--speculative-config") + 1] == '{"method":"mtp","num_speculative_tokens":1}'
    assert args[args.index("--attention-backend") + 1] == "FLASHINFER"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert args[args.index("--max-model-len") + 1] == "262144"
    unit = render.render_unit(svc, "rigkit/vllm:0123456789abcdef", gpus=1)
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    # systemd word splitting of the escaped line gives the argv back (JSON braces, quotes).
    words = shlex.split(start.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))
    assert words == render.command_line(svc, "rigkit/vllm:0123456789abcdef", gpus=1)
    assert "drop_caches" in unit and "User=vllm-qwen122b" in unit and "PrivateNetwork=yes" in unit
    assert "--api-key" not in unit and "VLLM_API_KEY" not in unit


def test_service_gpus_and_key_mount():
    data = tp4()
    data["services"][0].update(gpus=[0, 1], tensor_parallel=2, api_key_file="/tmp/k")
    svc = parse_rig("h", data).services[0]
    argv = render.command_line(svc, "rigkit/vllm:x", gpus=4)
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'
    assert f"{render.key_path(svc)}:/run/rigkit/api.key:ro" in argv
    assert escape('"device=0,1"') == '"\\"device=0,1\\""'


def mutate(base, **kw):
    data = copy.deepcopy(base())
    data["services"][0].update(kw)
    return data


HOSTILE = [
    (dict(base_image="vllm/vllm-openai:latest"), "services[0].base_image"),
    (dict(base_image="vllm/vllm-openai"), "services[0].base_image"),
    (dict(base_image="vllm/vllm-openai:v0.19.1\nUser=root"), "services[0].base_image"),
    (dict(base_image="$(touch /root/pwned):v1"), "services[0].base_image"),
    (dict(base_image="../../etc:v1"), "services[0].base_image"),
    (dict(model="/srv/models/../../etc"), "services[0].model"),
    (dict(model="/srv/models/q\nExecStartPre=/bin/sh"), "services[0].model"),
    (dict(alias="qwen\nUser=root"), "services[0].alias"),
    (dict(alias="$(id)"), "services[0].alias"),
    (dict(reasoning_parser="qwen3\n"), "services[0].reasoning_parser"),
    (dict(reasoning_parser="$(id)"), "services[0].reasoning_parser"),
    (dict(tool_call_parser="qwen3;rm"), "services[0].tool_call_parser"),
    (dict(attention_backend="FLASHINFER --api-key=x"), "services[0].attention_backend"),
    (dict(speculative={"method": "mtp\nUser=root", "num_speculative_tokens": 1}), "services[0].speculative.method"),
    (dict(speculative={"method": "$(id)", "num_speculative_tokens": 1}), "services[0].speculative.method"),
    (
        dict(speculative={"method": "mtp", "model": "../x y", "num_speculative_tokens": 1}),
        "services[0].speculative.model",
    ),
    (dict(env={"VLLM_API_KEY": "sekrit"}), "services[0].env.VLLM_API_KEY"),
    (dict(env={"HF_TOKEN": "hf_x"}), "services[0].env.HF_TOKEN"),
    (dict(env={"FOO": "$(id)"}), "services[0].env.FOO"),
    (dict(env={"FOO": "a\nExecStartPre=/bin/sh"}), "services[0].env.FOO"),
    (dict(env={"lower": "x"}), "services[0].env"),
    (dict(extra_args=["--api-key", "sekrit"]), "services[0].extra_args[0]"),
    (dict(extra_args=["--api-key=sekrit"]), "services[0].extra_args[0]"),
    (dict(extra_args=["--trust-remote-code", "\nExecStartPre=+/usr/bin/touch"]), "services[0].extra_args[1]"),
    (dict(extra_args=["$(touch /root/pwned)"]), "services[0].extra_args[0]"),
    (dict(patches=["../inc-hybrid-fp8"]), "services[0].patches[0]"),
    (dict(patches=["no-such-patch"]), "services[0].patches[0]"),
    (dict(tensor_parallel=2), "services[0].tensor_parallel"),
    (dict(gpu_memory_utilization=1.5), "services[0].gpu_memory_utilization"),
    (dict(dtype="int3"), "services[0].dtype"),
    (dict(tool_call_parser=None), "services[0].tool_call_parser"),
    (dict(limit_mm_per_prompt={"sound": 1}), "services[0].limit_mm_per_prompt"),
    (
        dict(speculative={"method": "mtp", "num_speculative_tokens": 0}),
        "services[0].speculative.num_speculative_tokens",
    ),
    (dict(model="/srv/models/q.gguf"), "services[0].model"),
    (dict(no_such_key=1), "services[0].no_such_key"),
    (dict(host="0.0.0.0"), "services[0].host"),
    (dict(base_image=""), "services[0].base_image"),
]


@pytest.mark.parametrize("change,key", HOSTILE, ids=[k + ":" + repr(c)[:40] for c, k in HOSTILE])
def test_hostile_vllm_host_data(change, key):
    with pytest.raises(HostDataError) as err:
        parse_rig("spark.lan", mutate(spark, **change))
    assert err.value.host == "spark.lan" and err.value.key == key, str(err.value)
    assert str(err.value).startswith(f"host spark.lan: {key}: expected ")


def test_tensor_parallel_larger_than_gpus_and_two_services_on_one_port():
    with pytest.raises(
        HostDataError,
        match=r"services\[0\].tensor_parallel: expected tensor_parallel x "
        r"pipeline_parallel at most the 4 GPU",
    ):
        parse_rig("h", mutate(tp4, tensor_parallel=8))
    data = tp4()
    data["services"].append(dict(data["services"][0], name="second"))
    with pytest.raises(HostDataError, match=r"services\[1\].port"):
        parse_rig("h", data)


@pytest.mark.parametrize(
    "ref",
    [
        "vllm/vllm-openai:v0.19.1",
        "nvcr.io/nvidia/vllm:26.01-py3",
        "localhost:5000/rigkit-test/vllm-base:0.19.1",
        "vllm/vllm-openai@sha256:" + "a" * 64,
        "vllm/vllm-openai:latest@sha256:" + "b" * 64,
    ],
)
def test_pinned_bases_accepted(ref):
    parse_rig("h", mutate(spark, base_image=ref))


def test_image_tag_is_the_content_hash(tmp_path):
    import shutil

    src = tmp_path / "vllm"
    shutil.copytree(IMAGE_SOURCE, src)
    opts = parse_rig("h", spark()).services[0].options
    first = render.image_identity(opts, src)
    assert first == render.image_identity(opts, src) and first.tag.startswith("rigkit/vllm:")
    assert {rel for rel, _ in first.files} >= {
        "Dockerfile",
        "rigkit_vllm_patches/apply.py",
        "patches/01-inc-hybrid-fp8/inc-0.19.diff",
    }
    assert not any("02-rope" in rel for rel, _ in first.files)  # only the chosen patches
    diff = src / "patches/01-inc-hybrid-fp8/inc-0.19.diff"
    diff.write_text(diff.read_text() + "\n")
    assert render.image_identity(opts, src).tag != first.tag
    other_base = parse_rig("h", mutate(spark, base_image="vllm/vllm-openai:v0.19.0")).services[0].options
    assert render.image_identity(other_base, src).tag != render.image_identity(opts, src).tag


# --- the patches against the real files of every supported vLLM ----------------------------------------


@pytest.fixture(scope="module")
def real_vllm(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("wheel"))


@pytest.mark.parametrize("version", VLLM_VERSIONS)
def test_every_patch_applies_to_the_real_vllm(version, tmp_path_factory, tmp_path, monkeypatch):
    import shutil

    real = unpack(tmp_path_factory.mktemp("wheel"), version=version)
    monkeypatch.syspath_prepend(str(tmp_path))  # the patched vllm package, for the self-check's imports
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)

    root = tmp_path / "vllm"
    shutil.copytree(real, root)
    assert apply.vllm_version(root) == version
    patches = apply.load_patches(IMAGE_SOURCE / "patches")
    assert set(patches) == {"inc-hybrid-fp8", "rope-keys-set"}
    inc = apply.apply_patch(root, version, *patches["inc-hybrid-fp8"])
    assert inc["edits"] == [{"file": "model_executor/layers/quantization/inc.py", "kind": "diff", "result": "patched"}]
    text = (root / "model_executor/layers/quantization/inc.py").read_text()
    assert "RIGKIT_INC_HYBRID_FP8 = True" in text and "Fp8LinearMethod(self.fp8_config)" in text
    # Both of get_quant_method's not-INT4 paths (the GPTQ method's and extra_config's) ask first.
    assert text.count("if (fp8 := self._rigkit_fp8_method(layer, prefix)) is not None:") == 2
    real_text = (real / "model_executor/layers/quantization/inc.py").read_text()
    other = "inc-0.19.diff" if version.startswith("0.20.") else "inc-0.20.diff"
    with pytest.raises(apply.PatchError, match="does not apply"):  # each line's diff is its own
        apply.apply_hunks(real_text, apply.parse_diff((patches["inc-hybrid-fp8"][0] / other).read_text()), "x")
    rope = apply.apply_patch(root, version, *patches["rope-keys-set"])
    # 0.19.1 and 0.20.2 have the set form: decided by the file, nothing changed.
    assert [e["result"].split(" ")[0] for e in rope["edits"]] == ["not", "not"]
    assert (root / "transformers_utils/configs/qwen3_5_moe.py").read_text() == (
        real / "transformers_utils/configs/qwen3_5_moe.py"
    ).read_text()
    record = {"vllm": version, "vllm_dir": str(root), "patches": [inc, rope]}
    failures, notes = selfcheck.check(record)
    assert not failures, failures
    assert any("compiled only" in n for n in notes)  # no torch here: said so, not passed silently


def test_rope_fix_on_the_list_form(real_vllm):
    text = (real_vllm / "transformers_utils/configs/qwen3_5_moe.py").read_text()
    listed = text.replace(
        '"] = {\n                "mrope_section",\n                "mrope_interleaved",\n            }',
        '"] = [\n                "mrope_section",\n                "mrope_interleaved",\n            ]',
    )
    assert listed != text and rope_keys.has_list_form(listed) and not rope_keys.has_list_form(text)
    fixed = rope_keys.fix(listed)
    assert fixed == text and rope_keys.check(fixed) and rope_keys.fix(text) is None
    one_line = 'kwargs["ignore_keys_at_rope_validation"] = ["mrope_section", "mrope_interleaved"]'
    assert (
        rope_keys.fix(one_line) == 'kwargs["ignore_keys_at_rope_validation"] = {"mrope_section", "mrope_interleaved"}'
    )


def test_a_patch_that_does_not_apply_names_file_and_hunk(real_vllm, tmp_path):
    import shutil

    root = tmp_path / "vllm"
    shutil.copytree(real_vllm, root)
    inc = root / "model_executor/layers/quantization/inc.py"
    inc.write_text(
        inc.read_text().replace(
            "        self.pack_factor = Fraction(32, weight_bits)\n",
            "        self.pack_factor = Fraction(32, self.weight_bits)\n",
        )
    )
    patches = apply.load_patches(IMAGE_SOURCE / "patches")
    with pytest.raises(
        apply.PatchError,
        match=r"vllm/model_executor/layers/quantization/inc.py: hunk 2 of 5 "
        r"\(@@ -86,6 \+92,9 @@\) does not apply",
    ):
        apply.apply_patch(root, "0.19.1", *patches["inc-hybrid-fp8"])
    with pytest.raises(
        apply.PatchError, match=r"inc-hybrid-fp8 is for vLLM >=0.19,<0.20 or >=0.20,<0.21; this image has vLLM 0.21.0"
    ):
        apply.apply_patch(root, "0.21.0", *patches["inc-hybrid-fp8"])
    with pytest.raises(apply.PatchError, match=r"inc-hybrid-fp8 is for vLLM .*; this image has vLLM 0.18.1"):
        apply.apply_patch(root, "0.18.1", *patches["inc-hybrid-fp8"])


def test_versions():
    assert apply.version_matches("0.19.1rc1.dev15+g50cd5674b", ">=0.19,<0.20")
    assert not apply.version_matches("0.18.1rc1.dev41", ">=0.19,<0.20")
    assert apply.version_matches("0.19.0", "==0.19.*") and not apply.version_matches("0.2", "==0.19.*")


def test_inc_hybrid_dispatch_logic():
    meta = {
        "__metadata__": {"format": "pt"},
        "model.layers.0.mlp.shared_expert.gate_proj.weight": {"dtype": "F8_E4M3", "shape": [1024, 2048]},
        "model.layers.0.mlp.shared_expert.gate_proj.weight_scale_inv": {"dtype": "F32", "shape": [8, 16]},
        "model.layers.0.mlp.shared_expert.up_proj.weight": {"dtype": "F8_E4M3", "shape": [1024, 2048]},
        "model.layers.0.mlp.shared_expert.up_proj.weight_scale_inv": {"dtype": "F32", "shape": [8, 16]},
        "model.layers.0.linear_attn.in_proj_z.weight": {"dtype": "F8_E4M3", "shape": [64, 64]},  # no scale
        "model.layers.0.mlp.experts.0.qweight": {"dtype": "I32", "shape": [256, 1024]},
    }
    layers, block = inc_hybrid.find_fp8_layers(meta)
    assert block == [128, 128]
    assert layers == {"model.layers.0.mlp.shared_expert.gate_proj", "model.layers.0.mlp.shared_expert.up_proj"}
    packed = {"gate_up_proj": ["gate_proj", "up_proj"]}
    assert inc_hybrid.is_fp8_layer("model.layers.0.mlp.shared_expert.gate_up_proj", layers, packed)
    assert inc_hybrid.is_fp8_layer("layers.0.mlp.shared_expert.gate_proj", layers, packed)
    assert not inc_hybrid.is_fp8_layer("model.layers.0.mlp.shared_expert.down_proj", layers, packed)
    assert not inc_hybrid.is_fp8_layer("model.layers.0.linear_attn.in_proj_z", layers, packed)
    partial = set(layers) - {"model.layers.0.mlp.shared_expert.up_proj"}
    assert not inc_hybrid.is_fp8_layer("model.layers.0.mlp.shared_expert.gate_up_proj", partial, packed)
    assert inc_hybrid.find_fp8_layers({"a.weight": {"dtype": "BF16", "shape": [2, 2]}}) == (frozenset(), None)
    meta["model.layers.1.mlp.shared_expert.up_proj.weight"] = {"dtype": "F8_E4M3", "shape": [1024, 2048]}
    meta["model.layers.1.mlp.shared_expert.up_proj.weight_scale_inv"] = {"dtype": "F32", "shape": [16, 16]}
    with pytest.raises(inc_hybrid.HybridCheckpointError, match="block size"):
        inc_hybrid.find_fp8_layers(meta)

    class Mapper:
        def apply_list(self, names):
            return [n.replace("model.layers", "language_model.model.layers") for n in names]

    assert inc_hybrid.map_names({"model.layers.0.x"}, Mapper()) == {"language_model.model.layers.0.x"}


# --- MTP weights -----------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file by hand: 8-byte little-endian header length, JSON header, data."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def make_model(root: Path, mtp_in_index: bool = True, extra: bool = True) -> Path:
    root.mkdir()
    write_safetensors(root / "model-00001-of-00001.safetensors", {"model.embed_tokens.weight": ("BF16", [4, 2])})
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}
    if extra:
        write_safetensors(
            root / "model_extra_tensors.safetensors",
            {"mtp.fc.weight": ("BF16", [2, 2]), "mtp.layers.0.mlp.gate.weight": ("BF16", [2, 2])},
        )
    if mtp_in_index:
        weight_map.update(
            {
                "mtp.fc.weight": "model_extra_tensors.safetensors",
                "mtp.layers.0.mlp.gate.weight": "model_extra_tensors.safetensors",
            }
        )
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def test_mtp_weights(tmp_path):
    assert mtp_weights_problem(make_model(tmp_path / "ok")) is None
    assert "not referenced" in mtp_weights_problem(make_model(tmp_path / "unref", mtp_in_index=False))
    assert "references no mtp.* tensors" in mtp_weights_problem(make_model(tmp_path / "none", False, False))
    missing = make_model(tmp_path / "missing")
    (missing / "model_extra_tensors.safetensors").unlink()
    assert mtp_weights_problem(missing) == (
        "model_extra_tensors.safetensors is missing (2 MTP tensors of the index live there)"
    )
    short = make_model(tmp_path / "short")
    write_safetensors(short / "model_extra_tensors.safetensors", {"mtp.fc.weight": ("BF16", [2, 2])})
    assert "lacks 1 MTP tensor(s)" in mtp_weights_problem(short)
    assert "is missing" in mtp_weights_problem(tmp_path)


@pytest.mark.parametrize("inventory", ["spark.py", "spark-cluster.py", "vllm-tp4.py"])
def test_the_seeds_inventories_pin_the_current_line_with_their_flags_unchanged(inventory):
    """Each seed inventory's vLLM service pins 0.20.2; its ``vllm serve`` argv is the one it had
    on 0.19.1 (the same flags, values and order), and every flag is one of 0.20.2's options."""
    import runpy

    from rigkit.hostdata import option_tables

    hosts = runpy.run_path(str(Path(__file__).resolve().parents[1] / "inventories" / inventory))
    [(name, data)] = [h for group in hosts.values() if isinstance(group, list) for h in group][:1]
    keys = ("gpus", "cluster", "services", "models")
    svc = parse_rig(name, {k: data[k] for k in keys if k in data}).services[0]
    assert svc.options.base_image == "vllm/vllm-openai:v0.20.2"
    old = copy.deepcopy({k: data[k] for k in keys if k in data})
    old["services"][0]["base_image"] = "vllm/vllm-openai:v0.19.1"
    before = parse_rig(name, old).services[0]
    argv, argv_before = render.serve_args(svc), render.serve_args(before)
    assert argv == argv_before
    table = option_tables.vllm_table(svc.options.base_image)
    assert table["version"] == "0.20.2"
    assert all(word in table["options"] for word in argv if word.startswith("--"))


def test_status_shows_the_images_vllm_and_patch_states(tmp_path, monkeypatch):
    """The build keeps the self-check's report per image; status reads it for the running
    image and prints the base's vLLM and each patch's state."""
    from rigkit import status_containers
    from rigkit.scripts import container_host

    monkeypatch.setattr(container_host, "SELFCHECK_DIR", str(tmp_path / "{engine}" / "selfcheck"))
    tag = "rigkit/vllm:0123abcd"
    record = container_host.selfcheck_record("vllm", tag)
    assert record.parent == tmp_path / "vllm" / "selfcheck" and "/" not in record.name
    record.parent.mkdir(parents=True)
    report = {
        "vllm": "0.20.2",
        "ok": True,
        "patch_states": {
            "rope-keys-set": {"state": "not needed", "import": "imported"},
            "inc-hybrid-fp8": {"state": "applied", "import": "imported"},
        },
    }
    record.write_text(json.dumps(report))
    assert container_host.read_selfcheck("vllm", tag) == report
    assert container_host.read_selfcheck("vllm", "rigkit/vllm:other") is None  # built before: nothing shown
    record.write_text("not json")
    assert container_host.read_selfcheck("vllm", tag) is None
    info = {"services": [{"name": "q", "port": 8000, "image": tag, "verified_image": tag, "selfcheck": report}]}
    from rigkit.engines import sglang, vllm

    shown = status_containers.lines(info, vllm.ENGINE)
    assert shown[1].strip() == (
        "vLLM 0.20.2; patches: inc-hybrid-fp8 applied (imported), rope-keys-set not needed (imported)"
    )
    assert len(status_containers.lines(info, sglang.ENGINE)) == 1  # SGLang's images record no vLLM report
    info["services"][0]["selfcheck"] = None
    assert len(status_containers.lines(info, vllm.ENGINE)) == 1
