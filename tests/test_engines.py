"""
The engine seam without a host: host data's engines and the deploy side's agree, every flag a
renderer gives is one its engine's checks refuse in ``extra_args`` (the lists beside each
engine's options), names on the host come from rigkit.host_paths, and the container engines
render through one layer. (On a host: tests/test_engines_e2e.py.)
"""

from __future__ import annotations

import dataclasses

from rigkit.engines import ENGINES
from rigkit.engines.containers import ContainerEngine
from rigkit.host_paths import ServiceNames
from rigkit.hostdata import llama_server as llama_hostdata
from rigkit.hostdata import parse_rig
from rigkit.hostdata import sglang as sglang_hostdata
from rigkit.hostdata import vllm as vllm_hostdata
from rigkit.hostdata.engines import SPECS
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.services import parse_service
from rigkit.render import llama_server, ray, sglang, vllm

VLLM_BASE = "vllm/vllm-openai:v0.19.1"
SGLANG_IMAGE = "lmsysorg/sglang:v0.5.12-cu130"


def flags(argv: list[str]) -> set[str]:
    return {word for word in argv if word.startswith("-") and not word.lstrip("-").replace(".", "").isdigit()}


def test_every_engine_is_declared_on_both_sides():
    assert list(ENGINES) == list(SPECS)
    for name, engine in ENGINES.items():
        assert engine.prefix == SPECS[name].prefix, name


def test_llama_server_flags_rigkit_renders_are_the_listed_ones():
    svc = parse_rig(
        "h",
        {
            "gpus": {"count": 2},
            "llama_cpp": {"ref": "b11312"},
            "services": [
                {
                    "name": "s",
                    "model": "/srv/models/m-00001-of-00002.gguf",
                    "alias": "m",
                    "tensor_split": [1, 1],
                    "flash_attn": "on",
                    "sampling": "qwen3.5-thinking",
                    "api_key_file": "/tmp/k",
                    "sleep_idle_seconds": 600,
                }
            ],
        },
    ).services[0]
    preset = set(llama_hostdata.SAMPLING_PRESETS["qwen3.5-thinking"])
    assert flags(llama_server.command_line(svc, "llama-server")) == set(llama_hostdata.RENDERED_FLAGS) | preset
    # A router's own line: its flags and the address and key; every model's are in the preset.
    router = parse_rig(
        "h",
        {
            "llama_cpp": {"ref": "b11312", "cuda": False},
            "services": [
                {
                    "name": "r",
                    "model": "/srv/models/a.gguf",
                    "api_key_file": "/tmp/k",
                    "sleep_idle_seconds": 600,
                    "router_models": [{"model": "/srv/models/b.gguf"}],
                }
            ],
        },
    ).services[0]
    assert flags(llama_server.command_line(router, "llama-server", "/etc/p.ini")) == set(
        llama_hostdata.ROUTER_FLAGS
    ) | {"--host", "--port", "--api-key-file"}


def test_vllm_flags_rigkit_renders_are_the_listed_ones():
    full = {
        "name": "v",
        "engine": "vllm",
        "model": "/srv/models/q",
        "base_image": VLLM_BASE,
        "tensor_parallel": 2,
        "pipeline_parallel": 2,
        "dtype": "bfloat16",
        "reasoning_parser": "qwen3",
        "enable_auto_tool_choice": True,
        "tool_call_parser": "qwen3_coder",
        "attention_backend": "FLASHINFER",
        "speculative": {"method": "mtp", "num_speculative_tokens": 1},
        "skip_mm_profiling": True,
        "limit_mm_per_prompt": {"image": 2},
        "max_num_batched_tokens": 8192,
        "max_num_seqs": 4,
    }
    seen: set[str] = set(ray.VLLM_SERVE_ARGS[:1])
    for prefix_caching in (True, False):
        svc = parse_service("h", "services[0]", {**full, "enable_prefix_caching": prefix_caching}, Gpus(count=4))
        seen |= flags(vllm.serve_args(svc))
    assert seen == set(vllm_hostdata.RENDERED_FLAGS)


def test_sglang_flags_rigkit_renders_are_the_listed_ones():
    svc = parse_service(
        "h",
        "services[0]",
        {
            "name": "s",
            "engine": "sglang",
            "model": "/srv/models/q",
            "image": SGLANG_IMAGE,
            "mem_fraction_static": 0.85,
            "reasoning_parser": "qwen3",
            "tool_call_parser": "qwen3_coder",
            "speculative": {
                "algorithm": "EAGLE3",
                "num_steps": 3,
                "eagle_topk": 1,
                "num_draft_tokens": 4,
                "draft_model_path": "/srv/models/draft",
            },
        },
        Gpus(count=1),
    )
    assert flags(sglang.launch_args(svc)) - {"-m"} == set(sglang_hostdata.RENDERED_FLAGS)


def test_names_on_the_host_come_from_one_place():
    names = ServiceNames("vllm", "qwen122b")
    assert (names.unit, names.user, names.key_file, names.container, names.home) == (
        "rigkit-vllm-qwen122b.service",
        "vllm-qwen122b",
        "/etc/rigkit/vllm/qwen122b.key",
        "rigkit-vllm-qwen122b",
        "/var/lib/rigkit-vllm-qwen122b",
    )
    assert ServiceNames.of_unit("rigkit-llama-tiny.service", ("llama", "vllm")) == ServiceNames("llama", "tiny")
    assert ServiceNames.of_unit("rigkit-watchdog-tiny.service", ("llama", "vllm")) is None
    svc = parse_service("h", "services[0]", {"name": "tiny", "model": "/srv/models/m.gguf"}, Gpus(), "b11312")
    assert svc.names == ServiceNames("llama", "tiny") and svc.unit == "rigkit-llama-tiny.service"


def test_container_engines_share_the_docker_run_of_one_layer():
    v = parse_service(
        "h",
        "services[0]",
        {"name": "a", "engine": "vllm", "model": "/srv/models/q", "base_image": VLLM_BASE},
        Gpus(count=1),
    )
    s = parse_service(
        "h",
        "services[0]",
        {"name": "a", "engine": "sglang", "model": "/srv/models/q", "image": SGLANG_IMAGE},
        Gpus(count=1),
    )
    v_argv = vllm.command_line(v, "rigkit/vllm:0123456789abcdef", gpus=1)
    s_argv = sglang.command_line(dataclasses.replace(s), "rigkit/sglang:0123456789abcdef", gpus=1)
    head = v_argv[: v_argv.index("rigkit/vllm:0123456789abcdef")]
    assert head[:2] == ["/usr/bin/docker", "run"] and "--pull" in head and "--init" in head
    # The same docker run, but for the container's name and label.
    assert [w.replace("vllm", "E") for w in head] == [
        w.replace("sglang", "E") for w in s_argv[: s_argv.index("rigkit/sglang:0123456789abcdef")]
    ]
    assert all(isinstance(ENGINES[n], ContainerEngine) for n in ("vllm", "sglang"))
