"""Host data: the seeds' inventory renders their exact server command; bad input is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rigkit.hostdata import HostDataError, parse_rig
from rigkit.operations.llama_cpp import cmake_flags, flags_hash
from rigkit.render import llama_server

REPO = Path(__file__).resolve().parent.parent


def load_inventory(path: Path):
    spec = importlib.util.spec_from_file_location("inv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_rig(tmp_path=None):
    """The seed inventory's rig; with ``tmp_path``, its Hub models resolved through a stand-in
    lock (the Hub cannot be reached from here)."""
    ((name, data),) = load_inventory(REPO / "inventories/rig.py").rig
    if tmp_path is None:
        return parse_rig(name, data)
    from standin_hub import resolved_seed_rig

    return resolved_seed_rig(tmp_path, name, data, str(REPO / "inventories/rig.py"))


def base(**services_kw):
    service = {"name": "svc", "model": "/srv/models/m-00001-of-00002.gguf", **services_kw}
    return {"gpus": {"count": 2, "cuda_arch": ["86"]}, "llama_cpp": {"ref": "b8137"}, "services": [service]}


def test_seed_inventory_renders_seed_000_command_line(tmp_path):
    rig = seed_rig(tmp_path)
    (router,) = rig.services
    qwen122, qwen397 = router.served
    argv = llama_server.command_line(qwen122, "/opt/rigkit/llama.cpp/current/bin/llama-server")
    line = " ".join(argv)
    for fragment in [
        # The Hub's layout (UD-Q6_K_XL/), resolved through the lock to the first shard.
        "-m /srv/models/qwen-3.5/UD-Q6_K_XL/Qwen3.5-122B-A10B-UD-Q6_K_XL-00001-of-00004.gguf",
        "--host 0.0.0.0",
        "--port 8000",
        "--alias Qwen3.5-122B-A10B-UD-Q6_K_XL",
        "-ngl 999",
        "-c 262144",
        "-ctk q8_0",
        "-ctv q8_0",
        "--parallel 1",
        "--split-mode layer",
        "-ts 0.9,1,1,1,1,1",
        "--no-warmup",
        "--temp 0.6",
        "--top-p 0.95",
        "--top-k 20",
        "--min-p 0.0",
        "--jinja",
        "--metrics",
    ]:
        assert fragment in line, fragment
    assert qwen397.model == "/srv/models/qwen-3.5/Qwen3.5-397B-A17B-UD-TQ1_0.gguf"  # resolved through the lock
    assert rig.enabled_services == (router,) and router.options.models_max == 1


def test_seed_inventory_is_one_router_serving_both_seed_models(tmp_path):
    (router,) = seed_rig(tmp_path).services
    preset = llama_server.render_preset(router, "b8137")
    unit = llama_server.render_unit(router, "/opt/rigkit/llama.cpp", gpu=True, build_ref="b8137")
    path = llama_server.preset_path(router, preset)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/rigkit/llama.cpp/current/bin/llama-server --host 0.0.0.0 --port 8000 "
        f"--models-preset {path} --models-max 1"
    )
    sections = [line for line in preset.splitlines() if line.startswith("[")]
    assert sections == ["[Qwen3.5-122B-A10B-UD-Q6_K_XL]", "[Qwen3.5-397B-A17B-UD-TQ1_0]"]
    first, second = preset.split("[Qwen3.5-397B-A17B-UD-TQ1_0]")
    assert "load-on-startup = true" in first and "load-on-startup" not in second  # the 397B on request
    assert "m = /srv/models/qwen-3.5/Qwen3.5-397B-A17B-UD-TQ1_0.gguf" in second
    assert "c = 262144" in second and "ctk = q8_0" in second and "temp = 0.6" in second
    assert "ts = 0.9,1,1,1,1,1" in first and "no-warmup = true" in first and "ts =" not in second


def test_seed_build_flags():
    rig = seed_rig()
    flags = cmake_flags(rig.llama_cpp, rig.gpus.cuda_arch)
    assert "-DGGML_CUDA=ON" in flags and "-DGGML_CUDA_FA_ALL_QUANTS=ON" in flags
    assert "-DBUILD_SHARED_LIBS=OFF" in flags and "-DCMAKE_CUDA_ARCHITECTURES=86" in flags
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in flags  # no build-time download
    assert flags_hash(flags, ("llama-server",)) != flags_hash(flags[:-1], ("llama-server",))


def test_unit_runs_as_own_user_with_sandboxing_and_no_secret(tmp_path):
    rig = parse_rig("h", base(api_key_file=str(tmp_path / "key")))
    unit = llama_server.render_unit(rig.services[0], "/opt/rigkit/llama.cpp")
    assert "User=llama-svc" in unit and "Restart=on-failure" in unit
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert option in unit
    assert "ReadOnlyPaths=/srv/models" in unit
    assert "--api-key-file /etc/rigkit/llama/svc.key" in unit
    assert "--api-key " not in unit


def test_model_under_home_is_bound_read_only():
    data = {**base(model="/home/tom/models/q-00001-of-00004.gguf"), "model_roots": ["/home/tom/models"]}
    rig = parse_rig("h", data)
    unit = llama_server.render_unit(rig.services[0], "/opt/rigkit/llama.cpp")
    assert "ProtectHome=tmpfs" in unit and "BindReadOnlyPaths=/home/tom/models" in unit


def test_opencode_entries_list_every_model_of_a_router():
    config = json.loads(llama_server.opencode_config(seed_rig(), "rig.lan"))
    assert list(config["provider"]) == ["llama-cpp-qwen"]
    provider = config["provider"]["llama-cpp-qwen"]
    assert provider["options"]["baseURL"] == "http://rig.lan:8000/v1"
    assert provider["models"] == {
        "Qwen3.5-122B-A10B-UD-Q6_K_XL": {
            "name": "Qwen3.5-122B",
            "contextLength": 262144,
            "supportsStructuredOutputs": False,
        },
        "Qwen3.5-397B-A17B-UD-TQ1_0": {
            "name": "Qwen3.5-397B",
            "contextLength": 262144,
            "supportsStructuredOutputs": False,
        },
    }


def test_every_service_passes_its_model_id_as_alias():
    """/v1/models then names the model as opencode.json does (without --alias llama-server
    names it by its path)."""
    rig = parse_rig("h", base())
    argv = llama_server.command_line(rig.services[0], "llama-server")
    assert argv[argv.index("--alias") + 1] == rig.services[0].model_id == "m"
    config = json.loads(llama_server.opencode_config(rig, "h"))
    assert list(config["provider"]["llama-cpp-svc"]["models"]) == ["m"]


@pytest.mark.parametrize(
    "mutate, key, expected",
    [
        (lambda d: d["services"][0].update(tensorsplit=[1, 1]), "services[0].tensorsplit", "known keys"),
        (lambda d: d["services"][0].update(tensor_split=[1, 1, 1]), "services[0].tensor_split", "2 values"),
        (
            lambda d: d["services"].append({**d["services"][0], "name": "other"}),
            "services[1].port",
            "no other enabled service",
        ),
        (
            lambda d: d["services"][0].update(model="/srv/models/m-00002-of-00002.gguf"),
            "services[0].model",
            "m-00001-of-00002.gguf",
        ),
        (lambda d: d["services"][0].update(model="models/m.gguf"), "services[0].model", "absolute path"),
        (lambda d: d["llama_cpp"].update(ref="master"), "llama_cpp.ref", "not a moving ref"),
        (lambda d: d["llama_cpp"].update(ref="v1.0"), "llama_cpp.ref", "build tag"),
        (lambda d: d["services"][0].update(port="8000"), "services[0].port", "an integer"),
        (lambda d: d["services"][0].update(cache_type_k="q9"), "services[0].cache_type_k", "q8_0"),
        (lambda d: d["services"][0].update(sampling="hot"), "services[0].sampling", "qwen3.5-thinking"),
        (lambda d: d["services"][0].update(extra_args=["--api-key", "x"]), "services[0].extra_args[0]", "api_key_file"),
        (lambda d: d["services"][0].update(gpus=[5]), "services[0].gpus", "between 0 and 1"),
        (lambda d: d["services"][0].update(name="Big Model"), "services[0].name", "lowercase"),
        (lambda d: d.pop("llama_cpp"), "llama_cpp", "ref"),
        (lambda d: d["llama_cpp"].update(cmake_flags=["GGML_CUDA=ON"]), "llama_cpp.cmake_flags[0]", "-DNAME"),
        (lambda d: d.update(gpus={"count": 0}), "gpus", "cuda"),
    ],
)
def test_bad_input_names_host_key_and_expectation(mutate, key, expected):
    data = base()
    mutate(data)
    with pytest.raises(HostDataError) as err:
        parse_rig("rig-7", data)
    assert err.value.host == "rig-7"
    assert err.value.key == key
    assert expected in str(err.value)
    assert str(err.value).startswith(f"host rig-7: {key}: expected")


def test_disabled_service_may_share_a_port():
    data = base()
    data["services"].append({**data["services"][0], "name": "alt", "enabled": False})
    assert [s.name for s in parse_rig("h", data).enabled_services] == ["svc"]


def test_commit_sha_is_a_valid_pin():
    data = base()
    data["llama_cpp"]["ref"] = "e3546c794"
    assert parse_rig("h", data).llama_cpp.ref == "e3546c794"


def test_a_host_with_only_models_validates():
    rig = parse_rig("store", {"models": [{"upload": "/tmp/m", "dest": "/srv/models/m"}]})
    assert rig.llama_cpp is None and rig.services == () and len(rig.models) == 1


def test_two_services_one_disabled():
    data = base()
    data["services"].append({**data["services"][0], "name": "spare", "enabled": False, "ctx": 8192})
    rig = parse_rig("h", data)
    assert [s.name for s in rig.services] == ["svc", "spare"]
    assert [s.name for s in rig.enabled_services] == ["svc"]
    assert rig.services[1].ctx == 8192 and rig.services[1].engine == "llama.cpp"
    assert rig.services[1].options.cache_type_k == "f16"  # the engine's own flags sit with the engine


def test_llama_cpp_service_without_llama_cpp_names_both_keys():
    data = base()
    del data["llama_cpp"]
    with pytest.raises(HostDataError) as err:
        parse_rig("h", data)
    assert err.value.key == "llama_cpp" and "services[0] (svc) has engine llama.cpp" in str(err.value)


def test_unknown_engine_is_named():
    data = base()
    data["services"][0]["engine"] = "tgi"
    with pytest.raises(HostDataError, match=r"services\[0\]\.engine: expected one of llama.cpp"):
        parse_rig("h", data)
