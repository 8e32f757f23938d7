"""extra_args parsed as each engine parses them, with the option table of its pinned version:
hostile spellings refused (host, key, what was expected), real values accepted and rendered
as meant; the committed tables equal what the generator derives from the real sources."""

from __future__ import annotations

import copy
import json
import re
import shlex

import pytest

from rigkit.hostdata import HostDataError, parse_rig
from rigkit.hostdata import option_tables as tables
from rigkit.render import llama_server
from rigkit.render import vllm as render_vllm


def llama_data(extra: list[str], **svc) -> dict:
    return {
        "gpus": {"count": 2, "cuda_arch": ["86"]},
        "llama_cpp": {"ref": "b11312"},
        "services": [{"name": "svc", "model": "/srv/models/m-00001-of-00002.gguf", "extra_args": extra, **svc}],
    }


def vllm_data(extra: list[str], base: str = "vllm/vllm-openai:v0.19.1") -> dict:
    return {
        "gpus": {"count": 1, "cuda_arch": ["121"]},
        "services": [
            {
                "name": "q",
                "engine": "vllm",
                "model": "/srv/models/q",
                "base_image": base,
                "reasoning_parser": "qwen3",
                "extra_args": extra,
            }
        ],
    }


def refused(data: dict) -> HostDataError:
    with pytest.raises(HostDataError) as err:
        parse_rig("h", copy.deepcopy(data))
    assert err.value.host == "h" and str(err.value).startswith(f"host h: {err.value.key}: expected ")
    return err.value


# (extra_args, index refused, a word the message says)
LLAMA_HOSTILE = [
    (["--host", "0.0.0.0"], 0, "rigkit manages"),
    (["--host=0.0.0.0"], 0, "no '=' form"),
    (["--api-key", "x"], 0, "api_key_file"),
    (["--api_key", "x"], 0, "api_key_file"),  # '_' -> '-' as llama-server does
    (["--api-ke", "x"], 0, "not a prefix"),
    (["--API-KEY", "x"], 0, "not one of its options"),
    (["--api-key-file", "/tmp/k"], 0, "api_key_file"),
    (["-m", "/etc/passwd"], 0, "rigkit manages"),
    (["--model", "/etc/passwd"], 0, "rigkit manages"),
    (["/srv/models/other.gguf"], 0, "a value belongs after"),
    (["--port", "1"], 0, "rigkit manages"),
    (["-c", "8192"], 0, "ctx"),
    (["-np", "4"], 0, "parallel"),
    (["--no-jinja"], 0, "jinja"),
    (["-hf", "evil/repo"], 0, "models"),
    (["--hf_token", "hf_x"], 0, "hf_token_file"),
    (["-mu", "https://evil.example/m.gguf"], 0, "models"),
    (["--ssl-key-file", "/k"], 0, "TLS"),
    (["--path", "/"], 0, "static files"),
    (["--alias", "--api-key"], 0, "alias"),
    (["--chat-template-file", "--api-key"], 1, "not an option"),
    (["-b", "--host"], 1, "not an option"),
    (["-b"], 0, "a value after -b"),
    (["-b", "lots"], 1, "an integer"),
    (["--temp", "hot"], 1, "a number"),
    (["--chat-template-kwargs", "{enable_thinking: false}"], 1, "JSON"),
    (["\u2013host", "0.0.0.0"], 0, "ASCII"),
    (["--\uff48ost", "0.0.0.0"], 0, "ASCII"),
    (["--no-warmup", "\n--host"], 1, "control characters"),
    (["--config", "/tmp/x.yaml"], 0, "not one of its options"),
    (["--no-mmap"], 0, "not one of its options"),  # b11312 has --load-mode instead
    (["-h"], 0, "never serve"),
]


@pytest.mark.parametrize("extra,index,says", LLAMA_HOSTILE, ids=[repr(e)[:50] for e, _, _ in LLAMA_HOSTILE])
def test_llama_server_refuses(extra, index, says):
    err = refused(llama_data(extra))
    assert err.key == f"services[0].extra_args[{index}]", str(err)
    assert says in str(err), str(err)


def test_sampling_flags_are_managed_only_with_a_preset():
    assert parse_rig("h", llama_data(["--temp", "0.2"])).services[0].extra_args == ("--temp", "0.2")
    err = refused(llama_data(["--temp", "0.2"], sampling="greedy"))
    assert err.key == "services[0].extra_args[0]" and "rigkit sets it" in str(err)


def unit_argv(unit: str) -> list[str]:
    """ExecStart= split as systemd splits it (quotes with C escapes; %% and $$ undone)."""
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(start.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))


LLAMA_REAL = [
    ["--chat-template-kwargs", '{"enable_thinking":false}'],
    ["--reasoning-budget", "0"],
    ["-b", "2048", "-ub", "2048"],
    ["--load-mode", "none"],
    ["--cache-reuse", "256"],
    ["--no-warmup", "--temp", "-0.5", "--seed", "42"],
    ["--spec_type", "ngram-simple"],  # '_' in a long name: llama-server's own spelling rule
]


@pytest.mark.parametrize("extra", LLAMA_REAL, ids=[repr(e)[:50] for e in LLAMA_REAL])
def test_llama_server_real_values_render_as_meant(extra):
    svc = parse_rig("h", llama_data(extra)).services[0]
    argv = llama_server.command_line(svc, "/opt/rigkit/llama.cpp/current/bin/llama-server")
    assert argv[-len(extra) :] == extra
    unit = llama_server.render_unit(svc, "/opt/rigkit/llama.cpp")
    assert unit_argv(unit) == argv


def test_older_pin_uses_its_own_table():
    data = llama_data(["--no-mmap"])
    data["llama_cpp"]["ref"] = "b10000"  # nearest older table: b9976, which has --no-mmap
    assert parse_rig("h", data).services[0].extra_args == ("--no-mmap",)
    data["llama_cpp"]["ref"] = "0123abcd"  # a commit: the newest table
    assert refused(data).key == "services[0].extra_args[0]"
    assert tables.llama_server_table("b8137")["version"] == "b9976"  # older than any: the oldest
    assert tables.vllm_table("vllm/vllm-openai:v0.99.0")["version"] == tables.VLLM_VERSIONS[-1]


VLLM_HOSTILE = [
    (["--host", "0.0.0.0"], 0, "rigkit manages"),
    (["--host=0.0.0.0"], 0, "rigkit manages"),
    (["--api_key", "sk-x"], 0, "api_key_file"),
    (["--api-ke", "sk-x"], 0, "not a prefix"),
    (["--api-ke=sk-x"], 0, "not a prefix"),
    (["--API-KEY", "sk-x"], 0, "not one of its options"),
    (["--model", "/etc"], 0, "rigkit manages"),
    (["--model=/etc"], 0, "rigkit manages"),
    (["/etc"], 0, "a value belongs after"),
    (["--config", "/tmp/x.yaml"], 0, "YAML"),
    (["--port", "1"], 0, "rigkit manages"),
    (["-tp", "8"], 0, "tensor_parallel"),
    (["-tp=8"], 0, "tensor_parallel"),
    (["--tensor_parallel_size", "8"], 0, "tensor_parallel"),
    (["--served-model-name", "x"], 0, "alias"),
    (["--trust-remote-code"], 0, "runs code"),
    (["--hf-token"], 0, "hf_token_file"),
    (["--allowed-local-media-path", "/"], 0, "reads only its model"),
    (["--download-dir", "/tmp"], 0, "models"),
    (["--speculative-config", "{}"], 0, "speculative"),
    (["--reasoning-parser", "deepseek_r1"], 0, "reasoning_parser"),
    (["--enable-prefix-caching"], 0, "enable_prefix_caching"),
    (["--no-enable-prefix-caching"], 0, "enable_prefix_caching"),
    (["--max-num-seqs", "8"], 0, "max_num_seqs"),
    (["--kv-cache-dtype", "--api-key"], 1, "not an option"),
    (["--kv-cache-dtype", "int3"], 1, "one of"),
    (["--kv-cache-dtype"], 0, "a value after"),
    (["--max-num-partial-prefills", "many"], 1, "an integer"),
    (["--compilation-config", "{not json"], 1, "JSON"),
    (["--enable-chunked-prefill=yes"], 0, "takes none"),
    (["--port.x", "1"], 0, "rigkit manages"),
    (["--seed.x", "1"], 0, "dotted key only of a JSON option"),
    (["\u2013\u2013host", "0.0.0.0"], 0, "ASCII"),
    (["--\uff48ost", "0.0.0.0"], 0, "ASCII"),
    (["--enable-chunked-prefill", "\nExecStartPre=/bin/sh"], 1, "control characters"),
    (["--"], 0, "not one of its options"),
]


@pytest.mark.parametrize("extra,index,says", VLLM_HOSTILE, ids=[repr(e)[:50] for e, _, _ in VLLM_HOSTILE])
def test_vllm_refuses(extra, index, says):
    err = refused(vllm_data(extra))
    assert err.key == f"services[0].extra_args[{index}]", str(err)
    assert says in str(err), str(err)


VLLM_REAL = [
    ["--compilation-config", '{"cudagraph_mode":"FULL"}'],
    ["--kv-cache-dtype", "fp8"],
    ["--enable-chunked-prefill"],
    ["--no-enable-log-requests"],
    ["--compilation-config.cudagraph_mode", "FULL"],
    ["--default-chat-template-kwargs", '{"enable_thinking": false}'],
    ["-O3"],
    ["--max_num_partial_prefills", "2"],
]


@pytest.mark.parametrize("extra", VLLM_REAL, ids=[repr(e)[:50] for e in VLLM_REAL])
def test_vllm_real_values_render_as_meant(extra):
    svc = parse_rig("h", vllm_data(extra)).services[0]
    argv = render_vllm.command_line(svc, "rigkit/vllm:0123456789abcdef", gpus=1)
    assert argv[-len(extra) :] == extra
    assert unit_argv(render_vllm.render_unit(svc, "rigkit/vllm:0123456789abcdef", gpus=1)) == argv


def test_tables_cover_every_spelling_with_arity():
    llama = tables.load("llama-server-b11312")["options"]
    assert llama["-c"] == llama["--ctx-size"] and llama["-c"]["arity"] == 1 and llama["-c"]["kind"] == "int"
    assert llama["--no-jinja"]["canonical"] == "--jinja" and llama["--no-jinja"]["arity"] == 0
    assert llama["--chat-template-kwargs"]["kind"] == "json"
    assert llama["--control-vector-layer-range"]["arity"] == 2
    vllm = tables.load("vllm-0.19.1")["options"]
    assert vllm["-tp"]["canonical"] == "--tensor-parallel-size"
    assert vllm["--no-enable-chunked-prefill"]["arity"] == 0
    assert vllm["--api-key"]["arity"] == "+"
    assert all(re.fullmatch(r"--?[A-Za-z0-9][A-Za-z0-9.-]*", s, re.ASCII) for s in [*llama, *vllm])


@pytest.mark.parametrize("version", ["0.3.36", "0.3.34"])
def test_llama_server_table_is_what_the_sources_say(version):
    """Regenerated from the llama-cpp-python sdist's vendored arg.cpp (downloaded once, sha256
    checked, into the cache)."""
    from rigkit.hostdata.option_tables import generate

    table = generate.llama_server_table(version)
    assert generate.render(table) == generate.render(tables.load(f"llama-server-{table['version']}"))


def test_vllm_table_is_what_the_sources_say():
    """Regenerated from the vLLM wheel's parser sources (downloaded once into the cache)."""
    from rigkit.hostdata.option_tables import generate

    for version in tables.VLLM_VERSIONS:
        table = generate.vllm_table(version)
        assert generate.render(table) == generate.render(tables.load(f"vllm-{version}"))
        assert json.loads(generate.render(table))["rules"]["abbreviations"] is True


# --- the choices of the base image's vLLM version (its table's registries, from its wheel) ----


def vllm_service(base: str, **options) -> dict:
    data = vllm_data([], base)
    data["services"][0].update(options)
    return data


@pytest.mark.parametrize(
    "options",
    [
        # Seed 003's and seed 002's values, accepted by both lines.
        dict(reasoning_parser="qwen3", tool_call_parser="qwen3_coder", enable_auto_tool_choice=True),
        dict(attention_backend="FLASHINFER", speculative={"method": "mtp", "num_speculative_tokens": 1}),
        dict(attention_backend="FLASH_ATTN", speculative={"method": "qwen3_5_mtp", "num_speculative_tokens": 2}),
        dict(dtype="bfloat16", tool_call_parser="hermes", enable_auto_tool_choice=True),
    ],
)
@pytest.mark.parametrize("base", ["vllm/vllm-openai:v0.19.1", "vllm/vllm-openai:v0.20.2"])
def test_vllm_choices_both_lines_accept(base, options):
    opts = parse_rig("h", vllm_service(base, **options)).services[0].options
    for name, value in options.items():
        assert getattr(opts, name) == value


# (options, key, the version named, the table's list of choices it must name)
VLLM_CHOICE_REFUSED = [
    # What 0.20 added: the 0.19.1 base lacks it.
    (dict(reasoning_parser="deepseek_v4"), "services[0].reasoning_parser", "0.19.1", "reasoning_parser"),
    (
        dict(tool_call_parser="mimo", enable_auto_tool_choice=True),
        "services[0].tool_call_parser",
        "0.19.1",
        "tool_call_parser",
    ),
    (dict(attention_backend="TURBOQUANT"), "services[0].attention_backend", "0.19.1", "attention_backend"),
    (dict(speculative={"method": "dflash"}), "services[0].speculative.method", "0.19.1", "speculative_method"),
    # No vLLM has these.
    (dict(reasoning_parser="qwen3_5"), "services[0].reasoning_parser", "0.20.2", "reasoning_parser"),
    (dict(attention_backend="FLASHINFER_V2"), "services[0].attention_backend", "0.20.2", "attention_backend"),
    (
        dict(speculative={"method": "mtp", "num_speculative_tokens": 1, "drafter": "x"}),
        "services[0].speculative",
        "0.20.2",
        "speculative_config_keys",
    ),
    (dict(speculative={"method": "medusa2"}), "services[0].speculative.method", "0.20.2", "speculative_method"),
    (dict(dtype="fp8"), "services[0].dtype", "0.20.2", "--dtype"),
    # A key 0.20 renamed (synthetic_acceptance_rate -> synthetic_acceptance_rates).
    (
        dict(speculative={"method": "mtp", "num_speculative_tokens": 1, "synthetic_acceptance_rate": 0.5}),
        "services[0].speculative",
        "0.20.2",
        "speculative_config_keys",
    ),
]


@pytest.mark.parametrize("options, key, version, choices", VLLM_CHOICE_REFUSED)
def test_vllm_choice_the_version_lacks_is_refused(options, key, version, choices):
    err = refused(vllm_service(f"vllm/vllm-openai:v{version}", **options))
    assert err.key == key and f"one of vLLM {version}'s " in str(err)
    table = tables.load(f"vllm-{version}")
    accepted = table["options"][choices]["choices"] if choices.startswith("--") else table["registries"][choices]
    named = str(err).split(" (", 1)[1].split(")", 1)[0].split(", ")
    assert named == accepted  # that version's own choices, all of them


def test_vllm_choices_are_refused_before_the_pattern_lets_a_lookalike_through():
    # A Unicode look-alike of a real backend: refused by the pattern (ASCII only) with its key.
    err = refused(vllm_service("vllm/vllm-openai:v0.20.2", attention_backend="FLASH\u0410TTN"))
    assert err.key == "services[0].attention_backend"
    err = refused(vllm_service("vllm/vllm-openai:v0.20.2", reasoning_parser="qwen3\n"))
    assert err.key == "services[0].reasoning_parser"


@pytest.mark.parametrize(
    "base, patches, says",
    [
        ("vllm/vllm-openai:v0.21.0", ["inc-hybrid-fp8"], "inc-hybrid-fp8 is for vLLM >=0.19,<0.20 or >=0.20,<0.21"),
        ("vllm/vllm-openai:v0.18.1", ["inc-hybrid-fp8"], "a patch for the base's vLLM 0.18.1"),
    ],
)
def test_a_patch_without_an_edit_for_the_base_version_is_refused(base, patches, says):
    err = refused(vllm_service(base, patches=patches))
    assert err.key == "services[0].patches[0]" and says in str(err)


@pytest.mark.parametrize(
    "base",
    [
        "vllm/vllm-openai:v0.19.1",
        "vllm/vllm-openai:v0.20.0",
        "vllm/vllm-openai:v0.20.2",
        # A digest names no version: the image build reads vLLM's own and decides.
        "vllm/vllm-openai@sha256:" + "0" * 64,
    ],
)
def test_patches_for_every_supported_line_accepted(base):
    svc = parse_rig("h", vllm_service(base, patches=["inc-hybrid-fp8", "rope-keys-set"])).services[0]
    assert svc.options.patches == ("inc-hybrid-fp8", "rope-keys-set")


def test_vllm_table_by_release_line():
    assert tables.vllm_table("vllm/vllm-openai:v0.20.0")["version"] == "0.20.2"  # its line's table
    assert tables.vllm_table("vllm/vllm-openai:v0.19.0")["version"] == "0.19.1"
    assert tables.vllm_table("vllm/vllm-openai:v0.18.1")["version"] == "0.19.1"  # older than any: the oldest
    assert tables.vllm_table("vllm/vllm-openai:v0.22.0")["version"] == "0.20.2"  # newer: the nearest older
    assert tables.vllm_table("vllm/vllm-openai@sha256:" + "0" * 64)["version"] == tables.VLLM_VERSIONS[-1]
