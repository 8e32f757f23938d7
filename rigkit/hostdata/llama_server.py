"""
Host data of ``engine: "llama.cpp"`` services (the default engine): llama-server's own flags
(:class:`LlamaServerOptions`) beside the common service keys, and their checks::

    {"name": "qwen122b", "model": "ref:qwen122b-q6", "port": 8000, "ctx": 262144,
     "cache_type_k": "q8_0", "tensor_split": [0.9, 1, 1, 1, 1, 1], "sampling": "qwen3.5-thinking"}

``model`` is the model's first shard on the host (llama-server loads the rest), or ``ref:`` a
locked Hub model (its first shard under ``dest``).

A service with ``router_models`` runs llama-server as a router (llama.cpp b11312
``tools/server/server-models.cpp``): it loads no model itself, and starts one llama-server per
model a request names (``"model"``), from a preset file rigkit renders (``--models-preset``);
at most ``models_max`` are loaded at once, the least recently used unloaded first. The
service's own ``model`` (with its options) is the default, loaded at startup; each
``router_models[]`` entry is one more model with its own file, ``alias``, ``ctx``, options and
``extra_args``::

    {"name": "qwen", "model": "ref:qwen122b-q6", "alias": "qwen3.5-122b", "models_max": 1,
     "router_models": [{"model": "ref:qwen397b-tq1", "alias": "qwen3.5-397b", "ctx": 65536}]}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.models import MODEL_REF_PREFIX
from rigkit.hostdata.schema import HostDataError, ServiceFields, coerce_fields

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
    "--sleep-idle-seconds",
)
#: What a router service's own command line gives llama-server besides --host, --port and
#: --api-key-file (common/arg.cpp of b11312); each model's flags are in the preset.
ROUTER_FLAGS = ("--models-preset", "--models-max", "--sleep-idle-seconds")

# A value in the router's preset (common/preset.cpp parse_ini_from_file, b11312): a value
# runs to the end of its line, ends before the first ';' or '#' (a comment starts there,
# whitespace or not), and its leading and trailing blanks are dropped; there is no quoting
# and no escape. So a value is printable ASCII without ';' or '#', starting and ending with a
# visible character: what llama-server reads back is then exactly the value rigkit wrote.
PRESET_VALUE = re.compile(r"[!-\x22$-:<-~](?:[ !-\x22$-:<-~]*[!-\x22$-:<-~])?", re.ASCII)
# A preset's section name is the model's id (the router passes it to the model's
# llama-server as --alias, server-models.cpp update_args). Section names '*' and 'default'
# are the preset's global sections, and the router rewrites whatever follows the last ':'
# (preset.cpp load_from_ini canonical_tag, a Hub tag like ':q8_0' becomes ':Q8_0'), so a
# router model's id has no ':'.
PRESET_SECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/@+-]{0,127}", re.ASCII)
PRESET_GLOBAL_SECTIONS = ("default",)

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
    # Unload the model after this many idle seconds (llama-server's sleep: the next request
    # loads it again); None: never.
    sleep_idle_seconds: int | None = None
    # A router service: the models it serves besides its own, and how many may be loaded at
    # once (llama-server's default is 4; rigkit's 1: big models rarely fit side by side).
    router_models: tuple[RouterModel, ...] = ()
    models_max: int = 1


#: Options a router model may not set for itself: they are the router's.
ROUTER_ONLY = ("router_models", "models_max", "sleep_idle_seconds")


@dataclass(frozen=True)
class RouterModel:
    """One more model of a router service (host data ``router_models[]``): its file, what
    clients call it, its context, and the llama-server options it loads with (the same keys
    as the service's own)."""

    model: str
    alias: str | None = None
    display_name: str | None = None
    ctx: int | None = None  # None: the service's
    extra_args: tuple[str, ...] = ()
    options: LlamaServerOptions = LlamaServerOptions()

    @classmethod
    def from_hostdata(cls, raw: Any, host: str, key: str) -> RouterModel:
        """One ``router_models[]`` mapping: its own keys, the rest to its options."""
        import dataclasses

        if not isinstance(raw, dict):
            raise HostDataError(host, key, "a mapping of a model's keys (model, alias, ctx, options)", raw)
        own = {f.name for f in dataclasses.fields(cls)} - {"options"}
        option_keys = {f.name for f in dataclasses.fields(LlamaServerOptions)} - set(ROUTER_ONLY)
        unknown = sorted(set(raw) - own - option_keys)
        if unknown:
            raise HostDataError(
                host,
                f"{key}.{unknown[0]}",
                f"one of a router model's keys ({', '.join(sorted(own | option_keys))})",
                "unknown key",
            )
        options = LlamaServerOptions(
            **coerce_fields(LlamaServerOptions, {k: v for k, v in raw.items() if k in option_keys}, host, key)
        )
        return cls(**coerce_fields(cls, {k: v for k, v in raw.items() if k in own}, host, key), options=options)


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
    # common/arg.cpp b11312: "cannot be 0 or less than -1"; rigkit's None is llama-server's -1.
    if opts.sleep_idle_seconds is not None and opts.sleep_idle_seconds < 1:
        raise HostDataError(host, f"{key}.sleep_idle_seconds", "seconds (at least 1)", opts.sleep_idle_seconds)
    if opts.models_max < 0:
        raise HostDataError(host, f"{key}.models_max", "a count of models (0: no limit)", opts.models_max)
    check_extra_args(host, key, svc, build_ref)


def check_router(host: str, key: str, models: Sequence[tuple[str, ServiceFields]], build_ref: str | None) -> None:
    """A router service's models (``(model id, model)``, the default first; each already
    checked as a service of its own): the pinned build has the router, every id is a preset
    section of its own, and every value the preset gets is one llama-server reads back
    whole (:data:`PRESET_VALUE`), one option once (a preset holds one value per key)."""
    import rigkit.hostdata.option_tables as option_tables

    table = option_tables.llama_server_table(build_ref)
    if "--models-preset" not in table["options"]:
        raise HostDataError(
            host,
            f"{key}.router_models",
            f"a llama.cpp build with the router (--models-preset; llama-server {table['version']} has none)",
            build_ref,
        )
    seen: dict[str, str] = {}
    for i, (model_id, model) in enumerate(models):
        at = key if i == 0 else f"{key}.router_models[{i - 1}]"
        if not PRESET_SECTION.fullmatch(model_id) or model_id in PRESET_GLOBAL_SECTIONS:
            raise HostDataError(
                host,
                f"{at}.alias",
                "a router model's id: letters, digits and . _ / @ + - (no ':', which the router rewrites; "
                "not 'default')",
                model_id,
            )
        if model_id in seen:
            raise HostDataError(
                host, f"{at}.alias", f"an id no other model of the service has ({seen[model_id]})", model_id
            )
        seen[model_id] = at
        if not PRESET_VALUE.fullmatch(model.model):
            raise HostDataError(
                host, f"{at}.model", f"a path the router's preset holds whole ({PRESET_RULE})", model.model
            )
        given: set[str] = set()
        for j, word in enumerate(model.extra_args):
            entry = table["options"].get(word.replace("_", "-") if word.startswith("--") else word)
            if entry is None:  # a value (check_extra_args saw each option take its own)
                if not PRESET_VALUE.fullmatch(word):
                    raise HostDataError(
                        host, f"{at}.extra_args[{j}]", f"a value the router's preset holds whole ({PRESET_RULE})", word
                    )
                continue
            if entry["arity"] not in (0, 1):
                raise HostDataError(
                    host, f"{at}.extra_args[{j}]", "an option of one value or none (a preset key holds one)", word
                )
            if entry["canonical"] in given:
                raise HostDataError(
                    host, f"{at}.extra_args[{j}]", "each option once (a preset key holds one value)", word
                )
            given.add(entry["canonical"])


PRESET_RULE = "printable ASCII without ';' or '#', no blank at either end"


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
