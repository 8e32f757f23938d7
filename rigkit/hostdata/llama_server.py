"""
Host data of ``engine: "llama.cpp"`` services (the default engine): llama-server's own flags
(:class:`LlamaServerOptions`) beside the common service keys, and their checks::

    {"name": "qwen122b", "model": "ref:qwen122b-q6", "port": 8000, "ctx": 262144,
     "cache_type_k": "q8_0", "tensor_split": [0.9, 1, 1, 1, 1, 1], "sampling": "qwen3.5-thinking"}

``model`` is the model's first shard on the host (llama-server loads the rest), or ``ref:`` a
locked Hub model (its first shard under ``dest``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.models import MODEL_REF_PREFIX
from rigkit.hostdata.schema import HostDataError, ServiceFields

SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf", re.ASCII)
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
SPLIT_MODES = ("none", "layer", "row")
#: Every flag rigkit.render.llama_server.command_line may give llama-server (a test renders a
#: service with every option set and compares): none of them may come again in extra_args.
RENDERED_FLAGS = (
    "-m",
    "--host",
    "--port",
    "-ngl",
    "-c",
    "-ctk",
    "-ctv",
    "--parallel",
    "--split-mode",
    "-ts",
    "-fa",
    "--alias",
    "--jinja",
    "--metrics",
    "--api-key-file",
)

# Named sampling presets; values are llama-server flags.
SAMPLING_PRESETS: dict[str, dict[str, str]] = {
    # Qwen3.5 thinking / coding preset, as in seeds 000 and 001.
    "qwen3.5-thinking": {"--temp": "0.6", "--top-p": "0.95", "--top-k": "20", "--min-p": "0.0"},
    # Qwen's recommended non-thinking (instruct) preset.
    "qwen3.5-instruct": {"--temp": "0.7", "--top-p": "0.8", "--top-k": "20", "--min-p": "0.0"},
    "greedy": {"--temp": "0.0", "--top-k": "1"},
}


@dataclass(frozen=True)
class LlamaServerOptions:
    """llama-server's own flags (``engine: "llama.cpp"``)."""

    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_gpu_layers: int = 999
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()
    sampling: str | None = None
    jinja: bool = True
    flash_attn: str | None = None  # "on", "off", "auto"; None leaves llama-server's default
    metrics: bool = True


def options_of(svc: ServiceFields) -> LlamaServerOptions:
    """A llama.cpp service's options, typed."""
    opts = svc.options
    if not isinstance(opts, LlamaServerOptions):
        raise TypeError(f"service {svc.name}: not a llama.cpp service ({type(opts).__name__})")
    return opts


def check_llama_server(host: str, key: str, svc: ServiceFields, gpus: Gpus, build_ref: str | None) -> None:
    """A llama.cpp service's own options, its model file and its ``extra_args`` (with the
    option table of ``build_ref``, the host's ``llama_cpp.ref``)."""
    opts = options_of(svc)
    if not svc.model.startswith(MODEL_REF_PREFIX):
        model = PurePosixPath(svc.model)
        if model.suffix != ".gguf":
            raise HostDataError(
                host,
                f"{key}.model",
                f"an absolute path to a .gguf file on the host (or {MODEL_REF_PREFIX}<name> of a Hub model)",
                svc.model,
            )
        shard = SHARD.search(model.name)
        if shard and shard.group(1) != "00001":
            first = SHARD.sub(f"-00001-of-{shard.group(2)}.gguf", model.name)
            raise HostDataError(
                host, f"{key}.model", f"the first shard (llama-server loads the rest), i.e. {first}", model.name
            )
    if opts.parallel < 1:
        raise HostDataError(host, f"{key}.parallel", "a positive integer", opts.parallel)
    for name, value in (("cache_type_k", opts.cache_type_k), ("cache_type_v", opts.cache_type_v)):
        if value not in KV_TYPES:
            raise HostDataError(host, f"{key}.{name}", f"one of {', '.join(KV_TYPES)}", value)
    if opts.split_mode not in SPLIT_MODES:
        raise HostDataError(host, f"{key}.split_mode", f"one of {', '.join(SPLIT_MODES)}", opts.split_mode)
    used_gpus = len(svc.gpus) or gpus.count
    if opts.tensor_split and not used_gpus:
        raise HostDataError(
            host,
            f"{key}.tensor_split",
            "GPUs to split across: gpus.count in host data (or the service's gpus); this host declares none",
            list(opts.tensor_split),
        )
    if opts.tensor_split and len(opts.tensor_split) != used_gpus:
        raise HostDataError(
            host, f"{key}.tensor_split", f"{used_gpus} values, one per GPU the service uses", list(opts.tensor_split)
        )
    if any(v < 0 for v in opts.tensor_split):
        raise HostDataError(host, f"{key}.tensor_split", "non-negative ratios", list(opts.tensor_split))
    if opts.sampling is not None and opts.sampling not in SAMPLING_PRESETS:
        raise HostDataError(host, f"{key}.sampling", f"one of the presets {', '.join(SAMPLING_PRESETS)}", opts.sampling)
    if opts.flash_attn is not None and opts.flash_attn not in ("on", "off", "auto"):
        raise HostDataError(host, f"{key}.flash_attn", "on, off or auto", opts.flash_attn)
    check_extra_args(host, key, svc, build_ref)


def check_extra_args(host: str, key: str, svc: ServiceFields, build_ref: str | None) -> None:
    """``extra_args`` parsed as llama-server parses them (rigkit.hostdata.engine_args), with the
    option table of the pinned build; refused where they name an option rigkit sets (the
    static list and every flag of the command line rigkit renders for this service)."""
    if not svc.extra_args:
        return
    # The renderer imports this module: imported here, when a service has extra_args.
    import rigkit.hostdata.engine_args as engine_args
    import rigkit.hostdata.option_tables as option_tables

    table = option_tables.llama_server_table(build_ref)
    # The sampling preset's flags only when the service names one: otherwise sampling is the
    # service's own to set.
    preset = tuple(SAMPLING_PRESETS.get(options_of(svc).sampling or "", {}))
    managed = engine_args.managed_options(table, engine_args.LLAMA_SERVER_MANAGED, RENDERED_FLAGS + preset)
    engine_args.check_extra_args(host, key, svc.extra_args, table, managed)
