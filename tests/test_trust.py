"""
Trust boundaries, round two (issue 20): a service's environment, its model's place, its
address, the image it builds from and the cmake flags of a build are matched against what
their consumer accepts; refusals say the real reason; ``rigkit bench`` never runs a program
found by port; ``rigkit`` stops quietly on a closed pipe. (Engine flags: test_engine_args.py;
locks, fetcher and transport: test_trust_supply.py.)
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rigkit.bench import hostside
from rigkit.hostdata import HostDataError, parse_rig
from rigkit.hostdata.rig import resolve_model_refs
from rigkit.models.lockfile import LockError
from rigkit.render import llama_server
from rigkit.render import vllm as render_vllm

BASE_IMAGE = "vllm/vllm-openai:v0.19.1"


def llama_rig(**service) -> dict:
    return {
        "gpus": {"count": 2, "cuda_arch": ["86"]},
        "llama_cpp": {"ref": "b11312"},
        "services": [{"name": "svc", "model": "/srv/models/m-00001-of-00002.gguf", **service}],
    }


def vllm_rig(**service) -> dict:
    return {
        "gpus": {"count": 1},
        "services": [{"name": "v", "engine": "vllm", "model": "/srv/models/qwen", "base_image": BASE_IMAGE, **service}],
    }


def refused(data: dict) -> HostDataError:
    with pytest.raises(HostDataError) as err:
        parse_rig("h", copy.deepcopy(data))
    assert err.value.host == "h" and "Traceback" not in str(err.value)
    return err.value


# --- environment: documented variables only --------------------------------------------------

HOSTILE_ENV = [
    ({"LD_PRELOAD": "/srv/models/x.so"}, "services[0].env.LD_PRELOAD"),
    ({"LD_LIBRARY_PATH": "/srv/models"}, "services[0].env.LD_LIBRARY_PATH"),
    ({"PATH": "/srv/models/bin"}, "services[0].env.PATH"),
    ({"PYTHONPATH": "/srv/models"}, "services[0].env.PYTHONPATH"),
    ({"PYTHONSTARTUP": "/srv/models/x.py"}, "services[0].env.PYTHONSTARTUP"),
    ({"BASH_ENV": "/srv/models/x.sh"}, "services[0].env.BASH_ENV"),
    ({"VLLM_PLUGINS": "evil"}, "services[0].env.VLLM_PLUGINS"),
    ({"NCCL_NET_PLUGIN": "/srv/models/libnccl-net.so"}, "services[0].env.NCCL_NET_PLUGIN"),
    ({"VLLM_LOGGING_CONFIG_PATH": "/srv/models/log.json"}, "services[0].env.VLLM_LOGGING_CONFIG_PATH"),
    ({"TORCH_EXTENSIONS_DIR": "/srv/models/ext"}, "services[0].env.TORCH_EXTENSIONS_DIR"),
    ({"HTTPS_PROXY": "http://user:hunter2@proxy.lan:3128"}, "services[0].env.HTTPS_PROXY"),
    ({"no_proxy": "x,https://u:p@h"}, "services[0].env.no_proxy"),
    ({"VLLM_API_KEY": "sk-1"}, "services[0].env.VLLM_API_KEY"),
    ({"HF_TOKEN": "hf_x"}, "services[0].env.HF_TOKEN"),
    ({"VLLM_X": "a b"}, "services[0].env.VLLM_X"),
    ({"VLLM_X": "a\nExecStartPre=/bin/sh"}, "services[0].env.VLLM_X"),
    ({"VLLM_\u0130X": "1"}, "services[0].env"),  # a dotted capital I: not ASCII
    ({"Path": "/x"}, "services[0].env"),
]


@pytest.mark.parametrize("env,key", HOSTILE_ENV, ids=[k for _, k in HOSTILE_ENV])
def test_environment_outside_the_documented_variables_is_refused(env, key):
    assert refused(vllm_rig(env=env)).key == key


def test_documented_environment_is_accepted_and_reaches_the_container():
    env = {
        "NCCL_SOCKET_IFNAME": "^lo,docker0",
        "NCCL_IB_HCA": "=mlx5_0",
        "https_proxy": "http://proxy.lan:3128",
        "no_proxy": "localhost,127.0.0.1,.lan",
        "HTTPS_PROXY": "http://proxy.lan:3128",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "VLLM_USE_FLASHINFER_SAMPLER": "1",
        "TORCH_CUDA_ARCH_LIST": "12.1a",
    }
    svc = parse_rig("h", vllm_rig(env=env)).services[0]
    argv = render_vllm.command_line(svc, "rigkit/vllm:0123456789abcdef", gpus=1)
    for name, value in env.items():
        assert argv[argv.index(f"{name}={value}") - 1] == "-e"


# --- images: as docker reads a reference ----------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["NVCR.IO/nvidia/vllm:26.01-py3", "Registry.Lan:5000/ai/vllm:v0.19.1", "localhost/vllm:0.19.1"],
)
def test_registry_hosts_are_case_insensitive(ref):
    assert parse_rig("h", vllm_rig(base_image=ref)).services[0].options.base_image == ref


@pytest.mark.parametrize(
    "ref",
    ["Vllm/vllm-openai:v0.19.1", "vllm/../x:1", "vllm/x:1:2", "\uff56llm/x:1", "vllm/x:v1 ", "-v/x:1", "vllm/x@md5:00"],
)
def test_image_references_docker_would_not_read_are_refused(ref):
    assert refused(vllm_rig(base_image=ref)).key == "services[0].base_image"


# --- addresses: one spelling per address -------------------------------------------------------


def test_ipv4_mapped_addresses_are_the_ipv4_address_they_are():
    # ::ffff:0.0.0.0 is every IPv4 address: beyond loopback, so it needs a key.
    assert refused(llama_rig(host="::ffff:0.0.0.0")).key == "services[0].host"
    assert parse_rig("h", llama_rig(host="::ffff:127.0.0.1")).services[0].host == "127.0.0.1"
    opened = parse_rig("h", llama_rig(host="::ffff:0.0.0.0", allow_unauthenticated=True)).services[0]
    assert opened.host == "0.0.0.0" and opened.public
    assert parse_rig("h", llama_rig(host="0:0:0:0:0:0:0:1")).services[0].host == "::1"
    assert refused(llama_rig(host="127.0.0.\u0661")).key == "services[0].host"


# --- model paths: under the model roots --------------------------------------------------------

HOSTILE_MODEL_PATHS = [
    "/etc/m.gguf",
    "/var/run/m.gguf",
    "/run/m.gguf",
    "/opt/rigkit/llama.cpp/m.gguf",
    "/var/lib/rigkit/m.gguf",
    "/usr/share/m.gguf",
    "/home/tom/m.gguf",  # a home directory only where the inventory names it
    "/srv/other/m.gguf",
    "/srv/models/a:/etc/m.gguf",
]


@pytest.mark.parametrize("path", HOSTILE_MODEL_PATHS)
def test_model_paths_outside_the_roots_are_refused(path):
    err = refused(llama_rig(model=path))
    assert err.key == "services[0].model" and "model roots" in err.expected or "':'" in err.expected


@pytest.mark.parametrize("model", ["/var/run", "/etc", "/srv/models/x:/var/run", "/"])
def test_a_vllm_container_mounts_no_system_directory(model):
    assert refused(vllm_rig(model=model)).key == "services[0].model"


@pytest.mark.parametrize(
    "path", ["/data/qwen/m-00001-of-00002.gguf", "/mnt/nvme0/models/m.gguf", "/models/m.gguf", "/srv/models/m.gguf"]
)
def test_model_paths_under_the_default_roots_are_accepted(path):
    assert parse_rig("h", llama_rig(model=path)).services[0].model == path


def test_an_inventory_names_its_own_roots():
    data = {**llama_rig(model="/home/tom/models/m.gguf"), "model_roots": ["/home/tom/models"]}
    assert parse_rig("h", data).services[0].model == "/home/tom/models/m.gguf"
    # ... which replace the defaults.
    assert refused({**llama_rig(model="/srv/models/m.gguf"), "model_roots": ["/home/tom/models"]}).key == (
        "services[0].model"
    )


@pytest.mark.parametrize(
    "roots,key",
    [
        (["/"], "model_roots[0]"),
        (["/etc"], "model_roots[0]"),
        (["/var"], "model_roots[0]"),  # holds /var/lib/rigkit and /var/run
        (["/opt/rigkit/models"], "model_roots[0]"),
        (["/srv/models", "relative"], "model_roots[1]"),
        (["/srv/../etc"], "model_roots[0]"),
        ("/srv/models", "model_roots"),
        ([], "model_roots"),
    ],
)
def test_hostile_model_roots_are_refused(roots, key):
    assert refused({**llama_rig(), "model_roots": roots}).key == key


# --- cmake: llama.cpp's and ggml's options ---------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        "-DCMAKE_PROJECT_INCLUDE=/srv/models/x.cmake",
        "-DCMAKE_TOOLCHAIN_FILE=/srv/models/t.cmake",
        "-DCMAKE_CUDA_COMPILER_LAUNCHER=/srv/models/x",
        "-DCMAKE_C_COMPILER:FILEPATH=/srv/models/cc",
        "-DCMAKE_PROJECT_llama_INCLUDE_BEFORE=/srv/models/x.cmake",
        "-Dggml_cuda=ON",
    ],
)
def test_cmake_entries_that_run_host_files_are_refused(flag):
    data = llama_rig()
    data["llama_cpp"]["cmake_flags"] = [flag]
    assert refused(data).key == "llama_cpp.cmake_flags[0]"


def test_llama_cpp_and_ggml_options_are_accepted():
    flags = [
        "-DGGML_CUDA_FA_ALL_QUANTS=ON",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DCMAKE_CUDA_ARCHITECTURES=86;89",
        "-DLLAMA_CURL=OFF",
        "-DCMAKE_BUILD_TYPE:STRING=Release",
    ]
    data = llama_rig()
    data["llama_cpp"]["cmake_flags"] = flags
    assert parse_rig("h", data).llama_cpp.cmake_flags == tuple(flags)


# --- refusals say the real reason -------------------------------------------------------------


def test_a_newline_is_called_a_newline():
    err = refused(llama_rig(alias="tiny\nUser=root"))
    assert err.key == "services[0].alias" and "newline" in err.expected


def test_tensor_split_without_gpus_says_the_host_declares_none():
    data = llama_rig(tensor_split=[1, 1])
    data["gpus"] = {"count": 0}
    data["llama_cpp"]["cuda"] = False
    err = refused(data)
    assert err.key == "services[0].tensor_split" and "declares none" in err.expected and "0 values" not in str(err)


def test_a_ref_missing_from_the_lock_names_the_keys_that_use_it():
    data = {
        **llama_rig(model="ref:qwen"),
        "models": [{"name": "qwen", "repo": "org/qwen-gguf", "include": ["Q8/*.gguf"], "dest": "/srv/models/q"}],
    }
    with pytest.raises(LockError) as err:
        resolve_model_refs(parse_rig("h", data), {})
    assert "no lock entry (named by models[0] qwen, services[0].model)" in str(err.value)


def test_unit_of_an_accepted_model_path_with_spaces_round_trips():
    svc = parse_rig("h", llama_rig(model="/data/my models/m.gguf")).services[0]
    unit = llama_server.render_unit(svc, "/opt/rigkit/llama.cpp")
    assert 'ReadOnlyPaths="/data/my models"' in unit


# --- rigkit bench: the unit's own binary ------------------------------------------------------


def test_bench_probe_never_runs_what_merely_listens_on_the_port(monkeypatch, tmp_path):
    ran = tmp_path / "ran"
    impostor = tmp_path / "impostor"
    impostor.write_text(f"#!/bin/sh\ntouch {ran}\nsleep 30\n")
    impostor.chmod(0o755)
    proc = subprocess.Popen([str(impostor)])
    try:
        monkeypatch.setattr(hostside, "listening_pid", lambda port: proc.pid)
        monkeypatch.setattr(hostside, "gpus", lambda: [])
        # With a unit: only systemd's main PID counts; a stopped unit (0) finds no server.
        monkeypatch.setattr(hostside, "sh", lambda argv: "0")
        assert "server" not in hostside.probe(8000, "rigkit-llama-x.service", None)
        # Without one: what listens is described, never run.
        found = hostside.probe(8000, None, None)["server"]
        assert found["pid"] == proc.pid and "version" not in found
        # The unit's main process is run for its version.
        monkeypatch.setattr(hostside, "sh", lambda argv: str(proc.pid))
        ran.unlink(missing_ok=True)
        assert "version" in hostside.probe(8000, "rigkit-llama-x.service", None)["server"]
    finally:
        proc.kill()
        proc.wait()


# --- a closed pipe ------------------------------------------------------------------------------


def test_rigkit_stops_quietly_on_a_closed_pipe():
    """``rigkit status --json | head``: the reader leaves before the report is written. The
    report here is a large one (status's own printing, its host queries replaced), written
    into a real pipe whose reader is closed."""
    script = (
        "import sys; from rigkit import cli, status\n"
        "status.collect = lambda *a, **k: (0, {'hosts': {f'h{i}': {'services': ['x' * 100]} for i in range(5000)}})\n"
        "sys.exit(cli.main(['status', '--json', 'inventories/sandbox.py']))\n"
    )
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run([sys.executable, "-c", script], stdout=writer, stderr=subprocess.PIPE, text=True)
    os.close(writer)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


# --- numbers and look-alikes --------------------------------------------------------------------


def test_numeric_keys_take_integers():
    data = llama_rig()
    data["gpus"]["cuda_arch"] = [86, "121a"]
    data["llama_cpp"]["cuda_arch"] = [90]
    rig = parse_rig("h", data)
    assert rig.gpus.cuda_arch == ("86", "121a") and rig.llama_cpp.cuda_arch == ("90",)
    data["gpus"]["cuda_arch"] = [True]
    assert refused(data).key == "gpus.cuda_arch[0]"


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d["gpus"].update(cuda_arch=["8\u0666"]), "gpus.cuda_arch[0]"),  # Arabic-Indic six
        (lambda d: d["llama_cpp"].update(ref="b1131\u0662"), "llama_cpp.ref"),
        (lambda d: d["services"][0].update(name="sv\u0441"), "services[0].name"),  # Cyrillic es
        (lambda d: d["services"][0].update(alias="qwen\u2215x"), "services[0].alias"),  # division slash
        (lambda d: d["services"][0].update(port="８０００"), "services[0].port"),  # fullwidth digits
    ],
)
def test_unicode_look_alikes_are_refused(mutate, key):
    data = llama_rig()
    mutate(data)
    assert refused(data).key == key


def test_every_host_data_pattern_is_ascii_only():
    """``\\d`` and ``\\w`` match any script's digits and letters unless re.ASCII is given."""
    import ast

    root = Path(__file__).resolve().parents[1] / "rigkit"
    missing = []
    for path in [*(root / "hostdata").rglob("*.py"), *(root / "models").rglob("*.py")]:
        if path.parent.name == "option_tables":  # reads the engines' own sources, not host data
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = isinstance(node, ast.Call) and ast.unparse(node.func) == "re.compile"
            if call and "re.ASCII" not in ast.unparse(node):
                missing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not missing, missing


# --- real values of the write-ups ---------------------------------------------------------------


def test_a_draft_model_by_absolute_path_is_mounted_read_only():
    spec = {"method": "eagle3", "model": "/srv/models/qwen-eagle3", "num_speculative_tokens": 3}
    svc = parse_rig("h", vllm_rig(speculative=spec)).services[0]
    argv = render_vllm.command_line(svc, "rigkit/vllm:0123456789abcdef", gpus=1)
    assert argv[argv.index("/srv/models/qwen-eagle3:/srv/models/qwen-eagle3:ro") - 1] == "-v"
    serve = argv[argv.index("rigkit/vllm:0123456789abcdef") + 1 :]
    assert serve[serve.index("--speculative-config") + 1] == (
        '{"method":"eagle3","model":"/srv/models/qwen-eagle3","num_speculative_tokens":3}'
    )


@pytest.mark.parametrize("path", ["/etc/draft", "/srv/models/../../etc", "/var/run/draft"])
def test_a_draft_model_outside_the_roots_is_refused(path):
    err = refused(vllm_rig(speculative={"method": "eagle3", "model": path}))
    assert err.key == "services[0].speculative.model"


# --- keep_images: a count ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 21, True, "2", 2.5, "2\n"])
def test_keep_images_is_a_small_count(value):
    assert refused(vllm_rig(keep_images=value)).key == "services[0].keep_images"


@pytest.mark.parametrize("value", [0, 2, 20])
def test_keep_images_takes_a_count(value):
    assert parse_rig("h", vllm_rig(keep_images=value)).services[0].options.keep_images == value
