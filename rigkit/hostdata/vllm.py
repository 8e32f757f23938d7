"""
Host data of ``engine: "vllm"`` services: vLLM's own flags (:class:`VllmOptions`) beside the
common service keys, and their checks. A vLLM service runs ``vllm serve`` in a container of
an image rigkit builds from ``files/vllm`` on a pinned base image::

    {"name": "qwen122b", "engine": "vllm", "model": "ref:qwen122b-int4", "port": 8000,
     "ctx": 262144, "alias": "qwen3.5-122b", "base_image": "vllm/vllm-openai:v0.19.1",
     "patches": ["inc-hybrid-fp8"], "gpu_memory_utilization": 0.90,
     "reasoning_parser": "qwen3", "tool_call_parser": "qwen3_coder",
     "enable_auto_tool_choice": True, "attention_backend": "FLASHINFER",
     "speculative": {"method": "mtp", "num_speculative_tokens": 1}}

The common ``ctx`` is ``--max-model-len``, ``alias`` is ``--served-model-name``; ``model`` is
the model's directory on the host (or ``ref:`` a locked Hub model: its ``dest``).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigkit.hostdata.containers import Environment, check_container_options
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.schema import HostDataError, ServiceFields, check_path, check_pattern

#: ``files/vllm`` of this checkout: the Dockerfile, the patches, the helper package.
IMAGE_SOURCE = Path(__file__).resolve().parents[2] / "files" / "vllm"

# A Docker image reference, read as docker reads it: [domain[:port]/]path[:tag][@sha256:digest].
# The first component is a domain when it holds '.' or ':' or is localhost; domains are
# case-insensitive host names, the path components lower-case.
DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?",
    re.ASCII,
)
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
#: Tags that name whatever was pushed last: never a pin.
MOVING_TAGS = frozenset(
    {
        "latest",
        "main",
        "master",
        "nightly",
        "stable",
        "edge",
        "dev",
        "head",
        "rolling",
        "release",
        "current",
        "newest",
        "unstable",
        "testing",
    }
)
PATCH_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}", re.ASCII)
PARSER = re.compile(r"[a-z0-9][a-z0-9_]{0,63}", re.ASCII)
ATTENTION_BACKEND = re.compile(r"[A-Z][A-Z0-9_]{0,63}", re.ASCII)
SPEC_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
# A speculative value: a word, or a draft model's absolute path on the host (mounted read-only).
SPEC_TEXT = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_.:/@+-]{0,255}", re.ASCII)
MM_KINDS = ("image", "video", "audio")
#: vLLM's own variables (vllm/envs.py) beside the families every container engine takes.
ENVIRONMENT = Environment(own=("VLLM",))


#: Every flag rigkit.render.vllm.serve_args may give ``vllm serve`` (across a Ray cluster too; a
#: test renders services with every option set and compares): none may come again in extra_args.
RENDERED_FLAGS = (
    "--served-model-name",
    "--host",
    "--port",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--distributed-executor-backend",
    "--dtype",
    "--reasoning-parser",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "--attention-backend",
    "--speculative-config",
    "--skip-mm-profiling",
    "--limit-mm-per-prompt",
    "--max-num-batched-tokens",
    "--max-num-seqs",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
)


@dataclass(frozen=True)
class VllmOptions:
    """vLLM's own flags (``engine: "vllm"``)."""

    base_image: str = ""  # required: the pinned base (exact tag or digest) files/vllm/Dockerfile builds FROM
    patches: tuple[str, ...] = ()  # names of files/vllm/patches/<NN>-<name> to apply
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_utilization: float = 0.9
    dtype: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    speculative: dict[str, str | int | float] | None = None  # --speculative-config, e.g. {"method": "mtp", ...}
    attention_backend: str | None = None  # e.g. FLASHINFER
    limit_mm_per_prompt: dict[str, int] | None = None  # e.g. {"image": 2}
    skip_mm_profiling: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None  # None: vLLM's default
    env: dict[str, str] = field(default_factory=dict)  # container environment (no secrets)
    # Unified memory (DGX Spark): drop the page cache before start so the model's pages
    # do not crowd out the GPU's share.
    drop_page_cache: bool = False
    ready_timeout: int = 900  # seconds for the model to load (~15 min for 122B on a Spark)
    stop_timeout: int = 60
    # Images of the engine kept beyond what serves, the last verified and other services' own
    # (each is tens of GB on a Spark's disk).
    keep_images: int = 2
    # The host's ``cluster`` (rigkit.hostdata.cluster) this service spans: declared alike on
    # every node; the head serves it through Ray, the other nodes run Ray in its image.
    cluster: str | None = None

    @property
    def draft_paths(self) -> tuple[str, ...]:
        """Host paths the speculative config names (a draft model), which the container mounts."""
        return tuple(v for v in (self.speculative or {}).values() if isinstance(v, str) and v.startswith("/"))

    @property
    def mtp(self) -> bool:
        return self.speculative is not None and self.speculative.get("method") == "mtp"


def image_tag_problem(ref: str) -> str | None:
    """Why ``ref`` is not a pinned image reference, or None."""
    name, _, digest = ref.partition("@")
    if digest and not DIGEST.fullmatch(digest):
        return "not an image reference (a digest is sha256: and 64 hex digits)"
    parts = name.split("/")
    last, _, tag = parts[-1].partition(":")
    parts[-1] = last
    domain = parts[0] if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost") else None
    path = parts[1:] if domain is not None else parts
    if (
        (domain is not None and not DOMAIN.fullmatch(domain))
        or not 1 <= len(path) <= 9
        or not all(PATH_COMPONENT.fullmatch(p) for p in path)
        or (tag and not TAG.fullmatch(tag))
    ):
        return "not an image reference"
    if not tag and not digest:
        return "no tag or digest (that means :latest)"
    if tag and tag.lower() in MOVING_TAGS and not digest:
        return f"the moving tag :{tag}"
    return None


def env_problem(name: str, value: str) -> tuple[str, str] | None:
    """Why ``name=value`` may not enter a vLLM container (rigkit.hostdata.containers), or None."""
    return ENVIRONMENT.problem(name, value)


def available_patches() -> dict[str, Path]:
    """Patch name -> its directory (``files/vllm/patches/<NN>-<name>``)."""
    found = {}
    root = IMAGE_SOURCE / "patches"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "patch.json").is_file():
                found[d.name.split("-", 1)[1]] = d
    return found


def options_of(svc: ServiceFields) -> VllmOptions:
    """A vLLM service's options, typed."""
    opts = svc.options
    if not isinstance(opts, VllmOptions):
        raise TypeError(f"service {svc.name}: not a vLLM service ({type(opts).__name__})")
    return opts


def check_service(host: str, key: str, svc: ServiceFields, gpus: Gpus, build_ref: str | None = None) -> None:
    """A vLLM service's own options with its model and GPUs, and its ``extra_args`` against
    vLLM's parser for the base image's version (``build_ref`` is llama.cpp's; unused)."""
    check_vllm(host, key, options_of(svc), svc.model, svc.gpus, gpus)
    if not svc.extra_args:
        return
    import rigkit.hostdata.engine_args as engine_args
    import rigkit.hostdata.option_tables as option_tables

    table = option_tables.vllm_table(options_of(svc).base_image)
    managed = engine_args.managed_options(table, engine_args.VLLM_MANAGED, RENDERED_FLAGS)
    engine_args.check_extra_args(host, key, svc.extra_args, table, managed)


def check_vllm(host: str, key: str, opts: VllmOptions, model: str, service_gpus: tuple[int, ...], gpus: Gpus) -> None:
    """A vLLM service's own options, with the service's model and GPUs (rigkit.hostdata.services
    calls this with its fields: that module imports this one)."""
    if not opts.base_image:
        raise HostDataError(
            host,
            f"{key}.base_image",
            "a pinned base image (exact tag or digest) for files/vllm/Dockerfile, e.g. vllm/vllm-openai:v0.20.2",
        )
    problem = image_tag_problem(opts.base_image)
    if problem:
        raise HostDataError(
            host,
            f"{key}.base_image",
            f"a pinned image reference: an exact tag or a digest (got {problem})",
            opts.base_image,
        )
    known = available_patches()
    for i, name in enumerate(opts.patches):
        check_pattern(name, PATCH_NAME, host, f"{key}.patches[{i}]", "a patch name")
        if name not in known:
            raise HostDataError(
                host,
                f"{key}.patches[{i}]",
                f"one of the patches in files/vllm/patches ({', '.join(known) or 'none'})",
                name,
            )
    if len(set(opts.patches)) != len(opts.patches):
        raise HostDataError(host, f"{key}.patches", "each patch once", list(opts.patches))
    check_patch_versions(host, key, opts)
    for name, value in (("tensor_parallel", opts.tensor_parallel), ("pipeline_parallel", opts.pipeline_parallel)):
        if value < 1:
            raise HostDataError(host, f"{key}.{name}", "a positive integer", value)
    available = len(service_gpus) or gpus.count
    # Across a cluster the sizes are checked against every node's GPUs (rigkit.hostdata.rig).
    if available and opts.cluster is None and opts.tensor_parallel * opts.pipeline_parallel > available:
        raise HostDataError(
            host,
            f"{key}.tensor_parallel",
            f"tensor_parallel x pipeline_parallel at most the {available} GPU(s) the service "
            f"uses ({'its gpus' if service_gpus else 'gpus.count'})",
            opts.tensor_parallel * opts.pipeline_parallel,
        )
    if not 0 < opts.gpu_memory_utilization <= 1:
        raise HostDataError(host, f"{key}.gpu_memory_utilization", "a fraction in (0, 1]", opts.gpu_memory_utilization)
    import rigkit.hostdata.option_tables as option_tables

    table = option_tables.vllm_table(opts.base_image)
    if opts.dtype is not None:
        check_choice(host, f"{key}.dtype", opts.dtype, table, "--dtype choices", table["options"]["--dtype"]["choices"])
    for name in ("reasoning_parser", "tool_call_parser"):
        value = getattr(opts, name)
        if value is not None:
            check_pattern(value, PARSER, host, f"{key}.{name}", "a parser name (lowercase letters, digits, _)")
            check_choice(host, f"{key}.{name}", value, table, f"{name.replace('_', ' ')}s")
    if opts.enable_auto_tool_choice and not opts.tool_call_parser:
        raise HostDataError(
            host, f"{key}.tool_call_parser", "a tool-call parser (enable_auto_tool_choice needs one, e.g. qwen3_coder)"
        )
    if opts.attention_backend is not None:
        check_pattern(
            opts.attention_backend,
            ATTENTION_BACKEND,
            host,
            f"{key}.attention_backend",
            "a vLLM attention backend name such as FLASHINFER",
        )
        check_choice(host, f"{key}.attention_backend", opts.attention_backend, table, "attention backends")
    if opts.speculative is not None:
        if "method" not in opts.speculative:
            raise HostDataError(host, f"{key}.speculative.method", "a speculative method (e.g. mtp)")
        for k, v in opts.speculative.items():
            check_pattern(k, SPEC_KEY, host, f"{key}.speculative", "keys of lowercase letters, digits and _")
            check_choice(host, f"{key}.speculative", k, table, "speculative config keys", key="speculative_config_keys")
            if isinstance(v, str):
                check_pattern(
                    v,
                    SPEC_TEXT,
                    host,
                    f"{key}.speculative.{k}",
                    "letters, digits and _ . : / @ + - (no spaces, quotes or shell syntax)",
                )
                if v.startswith("/"):  # a draft model on the host; rigkit.hostdata.rig checks its root
                    check_path(v, host, f"{key}.speculative.{k}", "a draft model's absolute path on the host")
        method = opts.speculative["method"]
        check_choice(
            host, f"{key}.speculative.method", str(method), table, "speculative methods", key="speculative_method"
        )
        tokens = opts.speculative.get("num_speculative_tokens")
        if opts.mtp and (not isinstance(tokens, int) or not 1 <= tokens <= 8):
            raise HostDataError(
                host, f"{key}.speculative.num_speculative_tokens", "an integer from 1 to 8 for MTP", tokens
            )
    if opts.limit_mm_per_prompt is not None:
        for k, v in opts.limit_mm_per_prompt.items():
            if k not in MM_KINDS:
                raise HostDataError(host, f"{key}.limit_mm_per_prompt", f"keys among {', '.join(MM_KINDS)}", k)
            if not 0 <= v <= 64:
                raise HostDataError(host, f"{key}.limit_mm_per_prompt.{k}", "0 to 64 items", v)
    for name in ("max_num_batched_tokens", "max_num_seqs"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise HostDataError(host, f"{key}.{name}", "a positive integer", value)
    check_container_options(host, key, opts, model, title="vLLM", environment=ENVIRONMENT)


def check_choice(
    host: str,
    where: str,
    value: str,
    table: dict[str, Any],
    what: str,
    choices: list[str] | None = None,
    *,
    key: str | None = None,
) -> None:
    """``value`` among what the base image's vLLM accepts (its option table's ``registries``,
    read from its wheel: rigkit.hostdata.option_tables.generate), naming the version and the choices."""
    accepted = choices if choices is not None else table["registries"][key or where.rpartition(".")[2]]
    if value not in accepted:
        raise HostDataError(host, where, f"one of vLLM {table['version']}'s {what} ({', '.join(accepted)})", value)


@functools.cache
def patch_version_ranges(name: str) -> tuple[str, ...]:
    """The vLLM versions a patch has an edit for (its patch.json's ``versions``), read once:
    the patches ship with rigkit and do not change while it runs."""
    return tuple(
        line["vllm"] for line in json.loads((available_patches()[name] / "patch.json").read_text())["versions"]
    )


def check_patch_versions(host: str, key: str, opts: VllmOptions) -> None:
    """Each chosen patch has an edit for the vLLM version the base image's tag names (the
    image build refuses the same; this says so before any host changes). A base whose tag
    names no version (a digest) is judged by the build, which reads vLLM's own version."""
    from packaging.specifiers import SpecifierSet

    import rigkit.hostdata.option_tables as option_tables

    version = option_tables.vllm_version(opts.base_image)
    if version is None:
        return
    for i, name in enumerate(opts.patches):
        ranges = patch_version_ranges(name)
        if not any(SpecifierSet(r).contains(version) for r in ranges):
            raise HostDataError(
                host,
                f"{key}.patches[{i}]",
                f"a patch for the base's vLLM {version} ({name} is for vLLM {' or '.join(ranges)})",
                name,
            )


def mtp_problem(model_dir: Any) -> str | None:
    """Why a model directory has no usable MTP weights, or None (``rigkit.scripts.vllm_host``'s
    rule, which the host runs before MTP is enabled)."""
    from rigkit.scripts.vllm_host import mtp_weights_problem

    return mtp_weights_problem(Path(model_dir))
