"""SGLang as an engine, without a host: its option table is what its own sources say, every
flag rigkit renders is one of SGLang's with the arity rigkit gives it, the command line and
unit are exactly what a seed-like service needs, the key stays off every command line, and
hostile host data is refused naming host, key and what was expected."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rigkit.hostdata import HostDataError, Service, option_tables
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.services import parse_service
from rigkit.hostdata.sglang import (
    IMAGE_SOURCE,
    SPECULATIVE_ALGORITHMS,
    env_problem,
)
from rigkit.render import sglang as render

IMAGE = "lmsysorg/sglang:v0.5.12-cu130"
TABLE = option_tables.sglang_table(IMAGE)
ENTRYPOINT = IMAGE_SOURCE / "entrypoint.py"


def seed() -> dict:
    return {
        "name": "qwen35",
        "engine": "sglang",
        "model": "/srv/models/Qwen3.5-35B-A3B",
        "port": 8001,
        "ctx": 262144,
        "alias": "qwen3.5-35b",
        "image": IMAGE,
        "tensor_parallel": 1,
        "mem_fraction_static": 0.85,
        "reasoning_parser": "qwen3",
        "tool_call_parser": "qwen3_coder",
        "speculative": {"algorithm": "NEXTN", "num_steps": 3, "eagle_topk": 1, "num_draft_tokens": 4},
    }


def parse(raw: dict, gpus: int = 1, host: str = "h", key: str = "services[0]") -> Service:
    """What the services parser does for engine "sglang": the common keys to Service, the rest
    to SglangOptions, then SGLang's checks."""
    return parse_service(host, key, {"engine": "sglang", **raw}, Gpus(count=gpus, cuda_arch=("90",)))


def refused(raw: dict, gpus: int = 1) -> HostDataError:
    with pytest.raises(HostDataError) as err:
        parse(copy.deepcopy(raw), gpus)
    assert err.value.host == "h" and str(err.value).startswith(f"host h: {err.value.key}: expected ")
    return err.value


def unit_argv(unit: str) -> list[str]:
    """ExecStart= split as systemd splits it (quotes with C escapes; %% and $$ undone)."""
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(start.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))


# ------------------------------------------------------------------------------ the table


def test_sglang_table_is_what_the_sources_say():
    """Regenerated from the SGLang wheel's parser sources (downloaded once into the cache)."""
    from rigkit.hostdata.option_tables import generate

    for version in option_tables.SGLANG_VERSIONS:
        table = generate.sglang_table(version)
        assert generate.render(table) == generate.render(option_tables.load(f"sglang-{version}"))
    rules = TABLE["rules"]
    assert rules["abbreviations"] is True and rules["equals_form"] is True
    assert rules["underscore_to_dash"] == "none" and rules["config_file"] == "--config"


def wheel_file(name: str) -> str:
    from rigkit.sandbox.offline import default_cache_dir

    whl = sorted((default_cache_dir() / "wheels").glob(f"sglang-{TABLE['version']}-*.whl"))[0]
    with zipfile.ZipFile(whl) as zf:
        return zf.read(name).decode()


def test_parser_is_plain_argparse():
    """The rules' sources: prepare_server_args builds a plain ArgumentParser (abbreviations on,
    no '_' rewriting, no @files) and merges --config only for that exact word."""
    src = wheel_file("sglang/srt/server_args.py")
    assert 'parser = argparse.ArgumentParser(prog="sglang serve")' in src
    assert 'if "--config" in argv:' in src
    assert "allow_abbrev" not in src and "fromfile_prefix_chars" not in src
    assert "prepare_server_args(sys.argv[1:])" in wheel_file("sglang/launch_server.py")


def test_speculative_algorithms_are_sglangs():
    src = wheel_file("sglang/srt/speculative/spec_info.py")
    body = src[src.index("class SpeculativeAlgorithm(Enum):") :].split("@classmethod", 1)[0]
    names = {line.split("=")[0].strip() for line in body.splitlines() if "= auto()" in line}
    assert set(SPECULATIVE_ALGORITHMS) == (names - {"NONE"}) | {"NEXTN"}
    assert 'speculative_algorithm == "NEXTN"' in wheel_file("sglang/srt/server_args.py")


def test_table_entries():
    o = TABLE["options"]
    assert o["--model"]["canonical"] == "--model-path"
    assert o["--tp-size"]["canonical"] == "--tensor-parallel-size" and o["--tp-size"]["kind"] == "int"
    assert "--tp" not in o  # SGLang's docs' --tp is argparse's prefix matching
    assert o["--stream-output"]["canonical"] == "--incremental-streaming-output"  # same dest
    assert o["--collect-tokens-histogram"]["arity"] == 0  # DeprecatedAction: nargs=0
    assert o["--lora-paths"]["arity"] == "*"
    assert o["--no-lora-strict-loading"]["negative"] is True
    assert "qwen3" in o["--reasoning-parser"]["choices"] and "deepseek-r1" in o["--reasoning-parser"]["choices"]
    assert "qwen3_coder" in o["--tool-call-parser"]["choices"]
    assert "all" in o["--lora-target-modules"]["choices"]


def test_every_rendered_flag_is_sglangs_with_its_arity():
    raw = seed()
    raw.update(speculative={**raw["speculative"], "algorithm": "EAGLE3", "draft_model_path": "/srv/models/draft"})
    argv = render.launch_args(parse(raw))
    assert argv[:3] == render.LAUNCH
    options = TABLE["options"]
    i, seen = 3, []
    while i < len(argv):
        flag = argv[i]
        assert flag in options, flag
        arity = options[flag]["arity"]
        assert isinstance(arity, int), flag
        values = argv[i + 1 : i + 1 + arity]
        assert all(not v.startswith("--") for v in values) and len(values) == arity, flag
        for v in values:
            kind = options[flag]["kind"]
            if kind == "int":
                int(v)
            elif kind == "float":
                float(v)
            elif kind == "choice":
                assert v in options[flag]["choices"]
        seen.append(flag)
        i += 1 + arity
    for flag, _ in render.SPECULATIVE_FLAGS.values():
        assert flag in seen


def test_table_by_image():
    assert option_tables.sglang_table("lmsysorg/sglang:v0.5.12")["version"] == "0.5.12"
    assert option_tables.sglang_table("lmsysorg/sglang:v0.5.12-cu130-amd64")["version"] == "0.5.12"
    assert option_tables.sglang_table("lmsysorg/sglang@sha256:" + "0" * 64)["version"] == "0.5.12"
    assert option_tables.sglang_table("lmsysorg/sglang:v0.9.0-cu130")["version"] == option_tables.SGLANG_VERSIONS[-1]


# ------------------------------------------------------------------------------ rendering


SEED_ARGV = [
    "python3",
    "-m",
    "sglang.launch_server",
    "--model-path",
    "/srv/models/Qwen3.5-35B-A3B",
    "--served-model-name",
    "qwen3.5-35b",
    "--host",
    "127.0.0.1",
    "--port",
    "8001",
    "--context-length",
    "262144",
    "--tp-size",
    "1",
    "--mem-fraction-static",
    "0.85",
    "--reasoning-parser",
    "qwen3",
    "--tool-call-parser",
    "qwen3_coder",
    "--speculative-algorithm",
    "NEXTN",
    "--speculative-num-steps",
    "3",
    "--speculative-eagle-topk",
    "1",
    "--speculative-num-draft-tokens",
    "4",
]


def test_seed_like_argv_exactly():
    assert render.launch_args(parse(seed())) == SEED_ARGV
    raw = seed()
    raw["extra_args"] = ["--kv-cache-dtype", "fp8_e4m3", "--max-running-requests", "8"]
    assert render.launch_args(parse(raw)) == SEED_ARGV + raw["extra_args"]


def test_command_line_and_unit(tmp_path):
    raw = seed()
    raw.update(host="0.0.0.0", api_key_file=str(tmp_path / "k"), gpus=[1], env={"SGLANG_ENABLE_JIT_DEEPGEMM": "0"})
    svc = parse(raw, gpus=2)
    image = "rigkit/sglang:0123456789abcdef"
    argv = render.command_line(svc, image, gpus=2)
    assert argv[:2] == ["/usr/bin/docker", "run"]
    for pair in (
        ["--name", "rigkit-sglang-qwen35"],
        ["--pull", "never"],
        ["--network", "host"],
        ["--ipc", "host"],
        ["--gpus", '"device=1"'],
        ["-v", "/srv/models/Qwen3.5-35B-A3B:/srv/models/Qwen3.5-35B-A3B:ro"],
        ["-v", "/etc/rigkit/sglang/qwen35.key:/run/rigkit/api.key:ro"],
        ["-e", "RIGKIT_API_KEY_FILE=/run/rigkit/api.key"],
        ["-e", "HF_HUB_OFFLINE=1"],
        ["-e", "SGLANG_ENABLE_JIT_DEEPGEMM=0"],
    ):
        assert any(argv[i : i + 2] == pair for i in range(len(argv))), pair
    assert "--init" in argv
    assert argv[argv.index(image) + 1 :] == render.launch_args(svc)
    unit = render.render_unit(svc, image, gpus=2)
    assert unit_argv(unit) == argv
    for line in (
        "User=sglang-qwen35",
        "SupplementaryGroups=docker",
        "PrivateNetwork=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "StateDirectory=rigkit-sglang-qwen35",
        "Environment=DOCKER_CONFIG=/var/lib/rigkit-sglang-qwen35",
        "ExecStop=/usr/bin/docker stop -t 60 rigkit-sglang-qwen35",
        "TimeoutStartSec=960",
        "TimeoutStopSec=90",
    ):
        assert line in unit.splitlines(), line
    assert "--api-key" not in argv and "--api-key" not in unit and "API_KEY=" not in unit
    assert svc.unit == "rigkit-sglang-qwen35.service"


def test_draft_model_mounted_read_only():
    raw = seed()
    raw["speculative"] = {"algorithm": "EAGLE3", "num_steps": 3, "draft_model_path": "/srv/models/eagle3-draft"}
    argv = render.command_line(parse(raw), "rigkit/sglang:x", gpus=1)
    assert "/srv/models/eagle3-draft:/srv/models/eagle3-draft:ro" in argv
    assert argv[argv.index("--speculative-draft-model-path") + 1] == "/srv/models/eagle3-draft"


def test_image_tag_is_the_content_hash(tmp_path):
    for name in render.CONTEXT_FILES:
        (tmp_path / name).write_bytes((IMAGE_SOURCE / name).read_bytes())
    a = render.image_identity(IMAGE, tmp_path)
    assert a == render.image_identity(IMAGE, tmp_path) and a.tag.startswith("rigkit/sglang:")
    assert render.image_identity("lmsysorg/sglang:v0.5.12-cu129", tmp_path).tag != a.tag
    (tmp_path / "entrypoint.py").write_text("# changed\n")
    assert render.image_identity(IMAGE, tmp_path).tag != a.tag
    assert render.image_identity(IMAGE).tag == render.image_identity(IMAGE).tag


def test_extra_args_render_as_meant():
    raw = seed()
    raw["extra_args"] = ["--chat-template", "$(touch /tmp/x) ; %n", "--enable-metrics", "--chunked-prefill-size=4096"]
    svc = parse(raw)
    argv = render.command_line(svc, "rigkit/sglang:x", gpus=1)
    assert argv[-4:] == raw["extra_args"]
    assert unit_argv(render.render_unit(svc, "rigkit/sglang:x", gpus=1)) == argv


# ------------------------------------------------------------------------------ hostile host data


def mutate(**kw) -> dict:
    raw = seed()
    for k, v in kw.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    return raw


HOSTILE = [
    (mutate(image=None), "services[0].image", "pinned lmsysorg/sglang"),
    (mutate(image="lmsysorg/sglang"), "services[0].image", ":latest"),
    (mutate(image="lmsysorg/sglang:latest"), "services[0].image", "moving tag"),
    (mutate(image="lmsysorg/sglang:v0.5.12\n"), "services[0].image", "control characters"),
    (mutate(image="lmsysorg/sglang:$(id)"), "services[0].image", "image reference"),
    (mutate(image="evil/sglang:v0.5.12-cu130"), "services[0].image", "an image of lmsysorg/sglang"),
    (mutate(image="lmsysorg/sglang-evil:v0.5.12"), "services[0].image", "an image of lmsysorg/sglang"),
    (mutate(image="ｌmsysorg/sglang:v0.5.12"), "services[0].image", "image reference"),
    (mutate(tensor_parallel=2), "services[0].tensor_parallel", "at most the 1 GPU"),
    (mutate(tensor_parallel=0), "services[0].tensor_parallel", "positive"),
    (mutate(mem_fraction_static=1.0), "services[0].mem_fraction_static", "(0, 1)"),
    (mutate(mem_fraction_static=0), "services[0].mem_fraction_static", "(0, 1)"),
    (mutate(reasoning_parser="qwen3\n--api-key"), "services[0].reasoning_parser", "control characters"),
    (mutate(reasoning_parser="$(id)"), "services[0].reasoning_parser", "parser name"),
    (mutate(reasoning_parser="../qwen3"), "services[0].reasoning_parser", "parser name"),
    (mutate(reasoning_parser="qwen３"), "services[0].reasoning_parser", "parser name"),
    (mutate(reasoning_parser="qwen9"), "services[0].reasoning_parser", "one of SGLang's parsers"),
    (mutate(tool_call_parser="qwen3-coder"), "services[0].tool_call_parser", "one of SGLang's parsers"),
    (mutate(speculative={"num_steps": 3}), "services[0].speculative.algorithm", "a speculative algorithm"),
    (mutate(speculative={"algorithm": "nextn"}), "services[0].speculative.algorithm", "one of SGLang's"),
    (mutate(speculative={"algorithm": "EAGLE\n"}), "services[0].speculative.algorithm", "expected a non-empty"),
    (mutate(speculative={"algorithm": "EAGLE-x"}), "services[0].speculative.algorithm", "one of SGLang's"),
    (mutate(speculative={"algorithm": "NEXTN", "steps": 3}), "services[0].speculative", "keys among"),
    (mutate(speculative={"algorithm": "NEXTN", "api_key": "x"}), "services[0].speculative", "keys among"),
    (mutate(speculative={"algorithm": "NEXTN", "num_steps": "3"}), "services[0].speculative.num_steps", "integer"),
    (mutate(speculative={"algorithm": "NEXTN", "num_steps": True}), "services[0].speculative.num_steps", "integer"),
    (mutate(speculative={"algorithm": "NEXTN", "num_steps": 0}), "services[0].speculative.num_steps", "integer"),
    (mutate(speculative={"algorithm": "EAGLE3"}), "services[0].speculative.draft_model_path", "draft model"),
    (
        mutate(speculative={"algorithm": "EAGLE3", "draft_model_path": "/srv/../etc"}),
        "services[0].speculative.draft_model_path",
        "normalised",
    ),
    (
        mutate(speculative={"algorithm": "EAGLE3", "draft_model_path": "/srv/d:/etc"}),
        "services[0].speculative.draft_model_path",
        "letters, digits",
    ),
    (
        mutate(speculative={"algorithm": "EAGLE3", "draft_model_path": "/srv/$(id)"}),
        "services[0].speculative.draft_model_path",
        "letters, digits",
    ),
    (mutate(env={"SGLANG_API_KEY": "x"}), "services[0].env.SGLANG_API_KEY", "no secret"),
    (mutate(env={"SGL_HF_TOKEN": "x"}), "services[0].env.SGL_HF_TOKEN", "no secret"),
    (mutate(env={"SGLANG_PLUGINS": "evil"}), "services[0].env.SGLANG_PLUGINS", "code to load"),
    (mutate(env={"SGLANG_PLATFORM": "evil"}), "services[0].env.SGLANG_PLATFORM", "code to load"),
    (mutate(env={"SGLANG_CACHE_DIR": "/tmp"}), "services[0].env.SGLANG_CACHE_DIR", "files or code"),
    (mutate(env={"LD_PRELOAD": "/x.so"}), "services[0].env.LD_PRELOAD", "SGLANG_*, SGL_*"),
    (mutate(env={"SGLANG_X": "1\nExecStartPre=/bin/sh"}), "services[0].env.SGLANG_X", "control characters"),
    (mutate(env={"SGLANG_X": "$(id) x"}), "services[0].env.SGLANG_X", "printable ASCII"),
    (mutate(env={"HTTPS_PROXY": "http://u:p@proxy:3128"}), "services[0].env.HTTPS_PROXY", "without credentials"),
    (mutate(env={"SGLANG_Ｘ": "1"}), "services[0].env", "A-Z"),
    (mutate(ready_timeout=10), "services[0].ready_timeout", "between 60"),
    (mutate(model="/srv/models/q.gguf"), "services[0].model", "safetensors"),
    (mutate(parallel=4), "services[0].parallel", "known keys"),
]


@pytest.mark.parametrize("raw,key,says", HOSTILE, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(HOSTILE)])
def test_hostile_host_data(raw, key, says):
    err = refused(raw)
    assert err.key == key, str(err)
    assert says in str(err), str(err)


# (extra_args, index refused, a word the message says)
EXTRA_HOSTILE = [
    (["--api-key", "sk-x"], 0, "api_key_file"),
    (["--api-key=sk-x"], 0, "api_key_file"),
    (["--api-ke", "sk-x"], 0, "not a prefix"),
    (["--api-ke=sk-x"], 0, "not a prefix"),
    (["--api_key", "sk-x"], 0, "not one of its options"),  # no '_' rewriting in SGLang
    (["--API-KEY", "sk-x"], 0, "not one of its options"),
    (["--admin-api-key", "sk-x"], 0, "keys never go"),
    (["--ssl-keyfile-password", "x"], 0, "TLS"),
    (["\u2013\u2013api-key", "sk-x"], 0, "ASCII"),
    (["--\uff41pi-key", "sk-x"], 0, "ASCII"),
    (["--api\u2011key", "sk-x"], 0, "ASCII"),
    (["--model", "/etc"], 0, "rigkit manages"),
    (["--model-path=/etc"], 0, "rigkit manages"),
    (["/etc"], 0, "a value belongs after"),
    (["--host", "0.0.0.0"], 0, "rigkit manages"),
    (["--port=1"], 0, "rigkit manages"),
    (["--tp", "2"], 0, "not a prefix"),
    (["--tp-size", "2"], 0, "tensor_parallel"),
    (["--tensor-parallel-size=2"], 0, "tensor_parallel"),
    (["--served-model-name", "x"], 0, "alias"),
    (["--context-length", "8k"], 0, "ctx"),
    (["--mem-fraction-static", "0.5"], 0, "mem_fraction_static"),
    (["--config", "/tmp/x.yaml"], 0, "YAML"),
    (["--config=/tmp/x.yaml"], 0, "YAML"),
    (["--trust-remote-code"], 0, "runs code"),
    (["--enable-custom-logit-processor"], 0, "runs code"),
    (["--download-dir", "/tmp"], 0, "models"),
    (["--ssl-certfile", "/c"], 0, "TLS"),
    (["--grpc-mode"], 0, "OpenAI HTTP API"),
    (["--dist-init-addr", "10.0.0.1:5000"], 0, "one host"),
    (["--reasoning-parser", "deepseek-r1"], 0, "reasoning_parser"),
    (["--tool-call-parser", "hermes"], 0, "tool_call_parser"),
    (["--speculative-algorithm", "EAGLE"], 0, "speculative"),
    (["--speculative-draft-model", "/x"], 0, "speculative"),
    (["--speculative-num-steps", "5"], 0, "speculative"),
    (["--kv-cache-dtype", "--api-key"], 1, "not an option"),
    (["--kv-cache-dtype", "int3"], 1, "one of"),
    (["--kv-cache-dtype"], 0, "a value after"),
    (["--max-running-requests", "many"], 1, "an integer"),
    (["--mm-process-config", "{not json"], 1, "JSON"),
    (["--enable-metrics=yes"], 0, "takes none"),
    (["--enable-metrics", "\nExecStartPre=/bin/sh"], 1, "control characters"),
    (["--chat-template", "a\nb"], 1, "control characters"),
    (["-h"], 0, "never serve"),
    (["--help"], 0, "never serve"),
    (["--"], 0, "not one of its options"),
    (["--lora-paths", "a", "--api-key", "k"], 2, "api_key_file"),
]


@pytest.mark.parametrize("extra,index,says", EXTRA_HOSTILE, ids=[repr(e)[:50] for e, _, _ in EXTRA_HOSTILE])
def test_extra_args_refused(extra, index, says):
    err = refused(mutate(extra_args=extra))
    assert err.key == f"services[0].extra_args[{index}]", str(err)
    assert says in str(err), str(err)


def test_accepted_host_data():
    parse(mutate(speculative=None, reasoning_parser=None, tool_call_parser=None, mem_fraction_static=None))
    parse(mutate(image="lmsysorg/sglang@sha256:" + "a" * 64))
    parse(mutate(image="docker.io/lmsysorg/sglang:v0.5.12-cu130"))
    parse(mutate(tensor_parallel=4, reasoning_parser="deepseek-r1", tool_call_parser="minimax-m2"), gpus=4)
    parse(mutate(speculative={"algorithm": "NGRAM"}))
    parse(mutate(env={"SGLANG_ENABLE_JIT_DEEPGEMM": "0", "SGL_CHUNKED_PREFIX_CACHE_THRESHOLD": "8192"}))
    parse(mutate(env={"NCCL_DEBUG": "INFO", "NO_PROXY": "localhost,127.0.0.1"}))
    parse(mutate(extra_args=["--kv-cache-dtype", "fp8_e4m3", "--max-running-requests", "8", "--disable-radix-cache"]))


def test_env_problem_is_vllms_with_sglangs_family():
    assert env_problem("SGLANG_ENABLE_TORCH_COMPILE", "1") is None
    assert env_problem("VLLM_USE_V1", "1") is None  # vLLM's rules kept whole
    assert env_problem("HF_TOKEN", "x") is not None
    assert env_problem("SGLANG_MODEL_PATH", "/x") is not None
    assert env_problem("SGLANG_X", "http://a:b@h") is not None


# ------------------------------------------------------------------------------ the entrypoint


STANDIN_SERVER_ARGS = """
import argparse, dataclasses
from typing import Optional

@dataclasses.dataclass
class ServerArgs:
    model_path: str
    served_model_name: Optional[str] = None
    api_key: Optional[str] = None

def prepare_server_args(argv):
    p = argparse.ArgumentParser(prog="sglang serve")
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--api-key")
    a = p.parse_args(argv)
    return ServerArgs(a.model_path, a.served_model_name, a.api_key)
"""
STANDIN_LAUNCH = """
import json, os, sys
from sglang.srt.server_args import prepare_server_args
if __name__ == "__main__":
    args = prepare_server_args(sys.argv[1:])
    print(json.dumps({"api_key": args.api_key, "repr": repr(args), "argv": sys.argv[1:],
                      "cmdline": open("/proc/self/cmdline").read(), "env": dict(os.environ)}))
"""


@pytest.fixture
def standin(tmp_path):
    """A stand-in ``sglang`` package: launch_server reports what it got."""
    root = tmp_path / "standin"
    (root / "sglang" / "srt").mkdir(parents=True)
    (root / "sglang" / "__init__.py").write_text("")
    (root / "sglang" / "srt" / "__init__.py").write_text("")
    (root / "sglang" / "srt" / "server_args.py").write_text(STANDIN_SERVER_ARGS)
    (root / "sglang" / "launch_server.py").write_text(STANDIN_LAUNCH)
    return root


def run_entrypoint(standin: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(standin), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entrypoint_reads_the_key_inside_the_process(standin, tmp_path):
    key = tmp_path / "api.key"
    key.write_text("sk-secret-123\n")
    args = ["python3", "-m", "sglang.launch_server", "--model-path", "/m", "--served-model-name", "q"]
    done = run_entrypoint(standin, args, {"RIGKIT_API_KEY_FILE": str(key)})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["api_key"] == "sk-secret-123"
    assert "sk-secret" not in got["cmdline"] and "sk-secret" not in json.dumps(got["env"])
    assert "RIGKIT_API_KEY_FILE" not in got["env"]
    assert "sk-secret" not in got["repr"] and "api_key=<redacted>" in got["repr"]
    assert got["argv"][-4:] == ["--model-path", "/m", "--served-model-name", "q"]
    # Without a key file: no key, and the command is the service's as given.
    got = json.loads(run_entrypoint(standin, args, {}).stdout)
    assert got["api_key"] is None and got["argv"] == args[3:]


def test_entrypoint_runs_only_launch_server(standin):
    for args in (["/bin/sh", "-c", "id"], ["python3", "-c", "print(1)"], []):
        done = run_entrypoint(standin, args, {})
        assert done.returncode != 0 and "must start with python3 -m sglang.launch_server" in done.stderr
    done = run_entrypoint(standin, ["--selfcheck"], {})
    assert done.returncode == 0 and "selfcheck ok" in done.stdout, done.stderr
