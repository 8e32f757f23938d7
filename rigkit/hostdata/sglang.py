"""
Host data of ``engine: "sglang"`` services: SGLang's own flags (:class:`SglangOptions`) beside
the common service keys, and their checks. An SGLang service runs ``python3 -m
sglang.launch_server`` in a container of an image rigkit builds from ``files/sglang`` on a
pinned ``lmsysorg/sglang`` image::

    {"name": "qwen35", "engine": "sglang", "model": "ref:qwen3.5-35b", "port": 8001,
     "ctx": 262144, "alias": "qwen3.5-35b", "image": "lmsysorg/sglang:v0.5.12-cu130",
     "mem_fraction_static": 0.85, "reasoning_parser": "qwen3", "tool_call_parser": "qwen3_coder",
     "speculative": {"algorithm": "NEXTN", "num_steps": 3, "eagle_topk": 1, "num_draft_tokens": 4}}

The common ``ctx`` is ``--context-length``, ``alias`` is ``--served-model-name``; ``model`` is
the model's directory on the host (or ``ref:`` a locked Hub model: its ``dest``). The flag
names and their values are checked against SGLang's own parser (the option table of the
image's version, :func:`rigkit.hostdata.option_tables.sglang_table`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rigkit.hostdata.vllm as vllm
from rigkit.hostdata.containers import Environment, check_container_options
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.schema import HostDataError, ServiceFields, check_path, check_pattern

#: ``files/sglang`` of this checkout: the Dockerfile and the entrypoint.
IMAGE_SOURCE = Path(__file__).resolve().parents[2] / "files" / "sglang"
#: The repository every image must come from (SGLang's own builds).
IMAGE_REPOSITORY = "lmsysorg/sglang"
EXAMPLE_IMAGE = "lmsysorg/sglang:v0.5.12-cu130"
#: SGLang's parser names hold '-' too (deepseek-r1, gpt-oss, minimax-m2).
PARSER = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)
#: speculative key -> (flag, type). The algorithm is SGLang's own name (case-insensitive there,
#: upper-case here); NEXTN is SGLang's alias of EAGLE for a model's own MTP layers.
SPECULATIVE_FLAGS: dict[str, tuple[str, type]] = {
    "algorithm": ("--speculative-algorithm", str),
    "num_steps": ("--speculative-num-steps", int),
    "eagle_topk": ("--speculative-eagle-topk", int),
    "num_draft_tokens": ("--speculative-num-draft-tokens", int),
    "draft_model_path": ("--speculative-draft-model-path", str),
}
#: sglang/srt/speculative/spec_info.py SpeculativeAlgorithm (less NONE) and the NEXTN alias
#: of server_args.py _resolve_speculative_algorithm_alias.
#: Every flag rigkit.render.sglang.launch_args may give SGLang (a test renders a service with
#: every option set and compares): none of them may come again in extra_args.
RENDERED_FLAGS: tuple[str, ...] = (
    "--model-path",
    "--served-model-name",
    "--host",
    "--port",
    "--context-length",
    "--tp-size",
    "--mem-fraction-static",
    "--reasoning-parser",
    "--tool-call-parser",
    *(flag for flag, _ in SPECULATIVE_FLAGS.values()),
)
SPECULATIVE_ALGORITHMS = ("DFLASH", "EAGLE", "EAGLE3", "FROZEN_KV_MTP", "NEXTN", "NGRAM", "STANDALONE")
#: Algorithms with a separate draft model (the others draft with the model's own layers or none).
DRAFT_MODEL_ALGORITHMS = ("DFLASH", "EAGLE3", "FROZEN_KV_MTP", "STANDALONE")
#: A path mounted into the container as ``-v P:P:ro``: no ':' or ',' (docker's separators),
#: no spaces, quotes or shell syntax.
MOUNT_PATH = re.compile(r"/[A-Za-z0-9._/@+-]{1,4095}", re.ASCII)
#: SGLang's own environment (sglang/srt/environ.py: SGLANG_*, and the older SGL_*; the vLLM
#: kernels its images carry read VLLM_*), beside the families every container engine takes;
#: of its own, what picks code to load (a hardware platform plugin, general plugins) is refused.
ENVIRONMENT = Environment(own=("SGLANG", "SGL", "VLLM"), loads_code=frozenset({"SGLANG_PLATFORM", "SGLANG_PLUGINS"}))


@dataclass(frozen=True)
class SglangOptions:
    """SGLang's own flags (``engine: "sglang"``)."""

    image: str = ""  # required: a pinned lmsysorg/sglang image (exact tag or digest) files/sglang builds FROM
    tensor_parallel: int = 1  # --tp-size
    mem_fraction_static: float | None = None  # None: SGLang sizes it
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    # --speculative-*: {"algorithm": "NEXTN", "num_steps": 3, "eagle_topk": 1, "num_draft_tokens": 4}
    speculative: dict[str, str | int] | None = None
    env: dict[str, str] = field(default_factory=dict)  # container environment (no secrets)
    ready_timeout: int = 900  # seconds for the model to load
    stop_timeout: int = 60
    keep_images: int = 2  # images kept beyond what serves, the last verified and other services'


def image_repository(ref: str) -> str:
    """``lmsysorg/sglang`` of ``lmsysorg/sglang:v0.5.12-cu130`` (or of ``...@sha256:...``)."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.partition(':')[0]}" if head else last.partition(":")[0]


def options_of(svc: ServiceFields) -> SglangOptions:
    """An SGLang service's options, typed."""
    opts: object = svc.options
    if not isinstance(opts, SglangOptions):
        raise TypeError(f"service {svc.name}: not an SGLang service ({type(opts).__name__})")
    return opts


def env_problem(name: str, value: str) -> tuple[str, str] | None:
    """Why ``name=value`` may not enter an SGLang container (rigkit.hostdata.containers), or None."""
    return ENVIRONMENT.problem(name, value)


def check_service(host: str, key: str, svc: ServiceFields, gpus: Gpus, build_ref: str | None = None) -> None:
    """An SGLang service's own options with its model and GPUs, and its ``extra_args``."""
    check_sglang(host, key, options_of(svc), svc.model, svc.gpus, gpus)
    check_extra_args(host, key, svc)


def check_sglang(
    host: str, key: str, opts: SglangOptions, model: str, service_gpus: tuple[int, ...], gpus: Gpus
) -> None:
    """An SGLang service's own options, with the service's model and GPUs (the services
    parser calls this with its fields)."""
    import rigkit.hostdata.option_tables as option_tables

    if not opts.image:
        raise HostDataError(
            host, f"{key}.image", f"a pinned {IMAGE_REPOSITORY} image (exact tag or digest), e.g. {EXAMPLE_IMAGE}"
        )
    problem = vllm.image_tag_problem(opts.image)
    if problem:
        raise HostDataError(
            host, f"{key}.image", f"a pinned image reference: an exact tag or a digest (got {problem})", opts.image
        )
    if image_repository(opts.image) not in (IMAGE_REPOSITORY, f"docker.io/{IMAGE_REPOSITORY}"):
        raise HostDataError(
            host,
            f"{key}.image",
            f"an image of {IMAGE_REPOSITORY} (SGLang's own builds), e.g. {EXAMPLE_IMAGE}",
            opts.image,
        )
    if not isinstance(opts.tensor_parallel, int) or isinstance(opts.tensor_parallel, bool) or opts.tensor_parallel < 1:
        raise HostDataError(host, f"{key}.tensor_parallel", "a positive integer", opts.tensor_parallel)
    available = len(service_gpus) or gpus.count
    if available and opts.tensor_parallel > available:
        raise HostDataError(
            host,
            f"{key}.tensor_parallel",
            f"at most the {available} GPU(s) the service uses ({'its gpus' if service_gpus else 'gpus.count'})",
            opts.tensor_parallel,
        )
    if opts.mem_fraction_static is not None and not 0 < opts.mem_fraction_static < 1:
        raise HostDataError(host, f"{key}.mem_fraction_static", "a fraction in (0, 1)", opts.mem_fraction_static)
    options = option_tables.sglang_table(opts.image)["options"]
    for attr, flag in (("reasoning_parser", "--reasoning-parser"), ("tool_call_parser", "--tool-call-parser")):
        value = getattr(opts, attr)
        if value is None:
            continue
        check_pattern(value, PARSER, host, f"{key}.{attr}", "a parser name (lowercase letters, digits, _ and -)")
        known = options[flag]["choices"]
        if value not in known:
            raise HostDataError(host, f"{key}.{attr}", f"one of SGLang's parsers ({', '.join(known)})", value)
    if opts.speculative is not None:
        _check_speculative(host, f"{key}.speculative", opts.speculative)
    check_container_options(host, key, opts, model, title="SGLang", environment=ENVIRONMENT)


def _check_speculative(host: str, key: str, spec: dict[str, Any]) -> None:
    if not isinstance(spec, dict):
        raise HostDataError(host, key, "a mapping of speculative options", spec)
    for k, v in spec.items():
        if k not in SPECULATIVE_FLAGS:
            raise HostDataError(host, key, f"keys among {', '.join(SPECULATIVE_FLAGS)}", k)
        kind = SPECULATIVE_FLAGS[k][1]
        if kind is int and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64):
            raise HostDataError(host, f"{key}.{k}", "an integer from 1 to 64", v)
        if kind is str and not isinstance(v, str):
            raise HostDataError(host, f"{key}.{k}", "text", v)
    algorithm = spec.get("algorithm")
    if algorithm is None:
        raise HostDataError(host, f"{key}.algorithm", f"a speculative algorithm ({', '.join(SPECULATIVE_ALGORITHMS)})")
    if algorithm not in SPECULATIVE_ALGORITHMS:
        raise HostDataError(
            host, f"{key}.algorithm", f"one of SGLang's algorithms ({', '.join(SPECULATIVE_ALGORITHMS)})", algorithm
        )
    draft = spec.get("draft_model_path")
    if draft is not None:
        what = "an absolute path to the draft model's directory on the host"
        check_path(str(draft), host, f"{key}.draft_model_path", what)
        check_pattern(str(draft), MOUNT_PATH, host, f"{key}.draft_model_path", f"{what} (letters, digits, / . _ @ + -)")
    elif algorithm in DRAFT_MODEL_ALGORITHMS:
        raise HostDataError(
            host,
            f"{key}.draft_model_path",
            f"the draft model's directory on the host ({algorithm} drafts with a model of its own)",
        )


def check_extra_args(host: str, key: str, svc: ServiceFields) -> None:
    """``extra_args`` parsed as ``sglang.launch_server`` parses argv, with the table of the
    image's version; refused where they name an option rigkit manages (the static list, any
    option carrying a secret, and every flag of the command line rigkit renders)."""
    if not svc.extra_args:
        return
    import rigkit.hostdata.engine_args as engine_args
    import rigkit.hostdata.option_tables as option_tables

    table = option_tables.sglang_table(options_of(svc).image)
    managed = engine_args.managed_options(table, engine_args.SGLANG_MANAGED, RENDERED_FLAGS)
    for canonical, reason in engine_args.secret_options(table).items():
        managed.setdefault(canonical, reason)
    engine_args.check_extra_args(host, key, svc.extra_args, table, managed)
