"""
Host data for a rig, declared once, typed and validated before anything runs.

An inventory gives each host plain dicts under ``gpus``, ``llama_cpp``, ``services`` and
``models``; :func:`rig_for` turns them into the dataclasses below or raises
:class:`HostDataError` naming the host, the key and what was expected::

    rig = [("rig", {
        "gpus": {"count": 6, "cuda_arch": ["86"]},
        "llama_cpp": {"ref": "b8137"},
        "services": [{"name": "qwen122b", "model": "/srv/models/...-00001-of-00004.gguf"}],
    })]

``models`` entries are either uploads from the deploying machine, ``{"upload": LOCAL_DIR,
"dest": HOST_DIR}``, or Hub references with a name, ``{"name": "qwen122b-q6", "repo":
"unsloth/Qwen3.5-122B-A10B-GGUF", "revision": "main", "include": ["UD-Q6_K_XL/*.gguf"],
"dest": "/srv/models/qwen122b"}`` (optional ``endpoint``; else host data ``hf_endpoint``,
``$HF_ENDPOINT``, the Hub). A service names a Hub model with ``"model": "ref:qwen122b-q6"``;
:func:`rig_for` resolves it through the model lock (``rigkit lock INVENTORY``) to
``<dest>/<first shard>``, so llama-server's ``-m`` gets the first shard. The lock is
found, in order, at host data ``model_lock``, ``$RIGKIT_MODEL_LOCK``, or next to the
inventory pyinfra was given (``<inventory stem>.lock.yaml``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from pyinfra.api.exceptions import PyinfraError

from rigkit.hub import REPO_RE as HUB_REPO
from rigkit.hub import ModelRef
from rigkit.lockfile import LockError

UPSTREAM_LLAMA_CPP = "https://github.com/ggml-org/llama.cpp"
BUILD_TAG = re.compile(r"^b\d+$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{7,40}$")
SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_REF_PREFIX = "ref:"  # services[].model: "ref:<models[].name>"
LOCK_ENV = "RIGKIT_MODEL_LOCK"
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
SPLIT_MODES = ("none", "layer", "row")

# Named sampling presets; values are llama-server flags.
SAMPLING_PRESETS: dict[str, dict[str, str]] = {
    # Qwen3.5 thinking / coding preset, as in seeds 000 and 001.
    "qwen3.5-thinking": {"--temp": "0.6", "--top-p": "0.95", "--top-k": "20", "--min-p": "0.0"},
    # Qwen's recommended non-thinking (instruct) preset.
    "qwen3.5-instruct": {"--temp": "0.7", "--top-p": "0.8", "--top-k": "20", "--min-p": "0.0"},
    "greedy": {"--temp": "0.0", "--top-k": "1"},
}


class HostDataError(PyinfraError, ValueError):
    """Bad host data: says which host, which key, and what was expected."""

    def __init__(self, host: str, key: str, expected: str, got: Any = dataclasses.MISSING):
        self.host, self.key, self.expected = host, key, expected
        message = f"host {host}: {key}: expected {expected}"
        if got is not dataclasses.MISSING:
            message += f", got {got!r}"
        super().__init__(message)


class ModelLockError(PyinfraError, LockError):
    """The model lock is missing or does not match a host's Hub models; names ``rigkit lock``."""


@dataclass(frozen=True)
class Gpus:
    count: int = 0
    # CUDA architectures such as "86" (RTX 3090), "90" (H100), "121" (GB10). Empty: read
    # from the host's GPUs (nvidia-smi) at deploy time.
    cuda_arch: tuple[str, ...] = ()


@dataclass(frozen=True)
class LlamaCpp:
    ref: str  # a build tag (b8137) or a commit sha; never a branch
    git_url: str = UPSTREAM_LLAMA_CPP
    cuda: bool = True
    cuda_arch: tuple[str, ...] = ()  # default: the host's gpus.cuda_arch
    fa_all_quants: bool = True
    cmake_flags: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("llama-server",)
    keep_builds: int = 3
    root: str = "/opt/rigkit/llama.cpp"


@dataclass(frozen=True)
class Service:
    name: str
    model: str  # path of the model (first shard) on the host
    host: str = "0.0.0.0"
    port: int = 8000
    ctx: int = 4096
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_gpu_layers: int = 999
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()
    sampling: str | None = None
    jinja: bool = True
    flash_attn: str | None = None  # "on", "off", "auto"; None leaves llama-server's default
    alias: str | None = None  # the model name clients see
    display_name: str | None = None  # for client configs
    extra_args: tuple[str, ...] = ()
    api_key_file: str | None = None  # on the deploying machine; copied to the host 0400
    gpus: tuple[int, ...] = ()  # CUDA_VISIBLE_DEVICES; empty: all
    metrics: bool = True
    enabled: bool = True

    @property
    def unit(self) -> str:
        return f"rigkit-llama-{self.name}.service"

    @property
    def user(self) -> str:
        return f"llama-{self.name}"

    @property
    def model_id(self) -> str:
        """What clients call the model: the alias, else the file name without shard suffix."""
        if self.alias:
            return self.alias
        return SHARD.sub("", PurePosixPath(self.model).name).removesuffix(".gguf")


@dataclass(frozen=True)
class UploadModel:
    """Files of a directory on the deploying machine, copied into ``dest`` on the host."""

    upload: str
    dest: str


@dataclass(frozen=True)
class HubModel:
    """A Hub repository's files (``include`` patterns) at ``revision``, placed under ``dest``
    keeping their repository paths; pinned by the model lock."""

    repo: str
    dest: str
    name: str | None = None  # what services call it: "model": "ref:<name>"
    revision: str = "main"
    include: tuple[str, ...] = ("*",)
    endpoint: str | None = None

    @cached_property
    def ref(self) -> ModelRef:
        return ModelRef(repo=self.repo, revision=self.revision, include=self.include,
                        dest=self.dest, endpoint=self.endpoint)


@dataclass(frozen=True)
class Rig:
    host: str
    gpus: Gpus
    llama_cpp: LlamaCpp
    services: tuple[Service, ...]
    models: tuple[UploadModel | HubModel, ...] = ()
    # ModelRef.key -> rigkit.lockfile.LockEntry, filled by resolve_model_refs()
    locks: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def enabled_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.enabled)

    @property
    def hub_models(self) -> tuple[HubModel, ...]:
        return tuple(m for m in self.models if isinstance(m, HubModel))

    @property
    def unresolved(self) -> tuple[Service, ...]:
        """Services whose model is still a ``ref:`` (no lock applied yet)."""
        return tuple(s for s in self.services if s.model.startswith(MODEL_REF_PREFIX))

    def lock_for(self, model: HubModel) -> Any:
        """The lock entry (commit sha, files with sha256) of a Hub model of this rig."""
        try:
            return self.locks[model.ref.key]
        except KeyError:
            raise HostDataError(self.host, "models", f"{model.repo} resolved through the model lock "
                                "(rig_for() does that; parse_rig() alone does not)") from None


# --- parsing -----------------------------------------------------------------------------


def _build(cls: type, raw: Any, host: str, key: str) -> Any:
    """Make a frozen dataclass from a dict, checking key names and value types."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise HostDataError(host, key, f"a mapping of {cls.__name__} fields", raw)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise HostDataError(host, f"{key}.{unknown[0]}",
                            f"one of the known keys ({', '.join(fields)})", "unknown key")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise HostDataError(host, f"{key}.{name}", "a value (this key is required)")
            continue
        values[name] = _coerce(raw[name], hints[name], host, f"{key}.{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, host: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, host, key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise HostDataError(host, key, "a list", value)
        return tuple(_coerce(v, args[0], host, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HostDataError(host, key, "a number", value)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HostDataError(host, key, "an integer", value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise HostDataError(host, key, "true or false", value)
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise HostDataError(host, key, "a non-empty string", value)
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise HostDataError(host, key, "a mapping", value)
        return value
    return value


def parse_rig(host: str, data: dict[str, Any]) -> Rig:
    """Validate one host's rig data; raises HostDataError on the first problem."""
    gpus = _build(Gpus, data.get("gpus", {}), host, "gpus")
    if gpus.count < 0:
        raise HostDataError(host, "gpus.count", "0 or more", gpus.count)
    for i, arch in enumerate(gpus.cuda_arch):
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise HostDataError(host, f"gpus.cuda_arch[{i}]", 'a CUDA architecture like "86" or "121a"', arch)

    if "llama_cpp" not in data:
        raise HostDataError(host, "llama_cpp", "a mapping with at least ref (a build tag such as b8137)")
    llama = _build(LlamaCpp, data["llama_cpp"], host, "llama_cpp")
    if not (BUILD_TAG.match(llama.ref) or COMMIT_SHA.match(llama.ref)):
        raise HostDataError(host, "llama_cpp.ref",
                            "a pinned build tag such as b8137 or a commit sha (7-40 hex digits), "
                            "not a moving ref like a branch", llama.ref)
    if llama.cuda and not (llama.cuda_arch or gpus.cuda_arch or gpus.count):
        raise HostDataError(host, "gpus", "gpus.count or gpus.cuda_arch when llama_cpp.cuda is on "
                            "(or set llama_cpp.cuda: false for a CPU build)")
    if llama.keep_builds < 2:
        raise HostDataError(host, "llama_cpp.keep_builds", "at least 2 (current and previous)", llama.keep_builds)
    for i, flag in enumerate(llama.cmake_flags):
        if not flag.startswith("-D"):
            raise HostDataError(host, f"llama_cpp.cmake_flags[{i}]", "a -DNAME=VALUE cmake flag", flag)

    raw_services = data.get("services", [])
    if not isinstance(raw_services, (list, tuple)):
        raise HostDataError(host, "services", "a list of service mappings", raw_services)
    services = tuple(_build(Service, s, host, f"services[{i}]") for i, s in enumerate(raw_services))
    seen_names: set[str] = set()
    ports: dict[int, str] = {}
    for i, svc in enumerate(services):
        key = f"services[{i}]"
        _check_service(host, key, svc, gpus)
        if svc.name in seen_names:
            raise HostDataError(host, f"{key}.name", "a name no other service on this host uses", svc.name)
        seen_names.add(svc.name)
        if svc.enabled:
            if svc.port in ports:
                raise HostDataError(host, f"{key}.port",
                                    f"a port no other enabled service uses ({ports[svc.port]} has it)",
                                    svc.port)
            ports[svc.port] = svc.name
    models = parse_models(host, data.get("models", ()))
    hub_names = [m.name for m in models if isinstance(m, HubModel) and m.name]
    for i, svc in enumerate(services):
        if svc.model.startswith(MODEL_REF_PREFIX) and svc.model[len(MODEL_REF_PREFIX):] not in hub_names:
            raise HostDataError(host, f"services[{i}].model",
                                f"{MODEL_REF_PREFIX}<name> naming a Hub model of this host's models "
                                f"({', '.join(hub_names) or 'none declared'})", svc.model)
    return Rig(host=host, gpus=gpus, llama_cpp=llama, services=services, models=models)


def parse_models(host: str, raw: Any) -> tuple[UploadModel | HubModel, ...]:
    """Validate host data ``models``: upload entries and named Hub references."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise HostDataError(host, "models", "a list of model mappings", raw)
    out: list[UploadModel | HubModel] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        key = f"models[{i}]"
        if isinstance(entry, dict) and "upload" in entry:
            model = _build(UploadModel, entry, host, key)
        elif isinstance(entry, (dict, HubModel, ModelRef)):
            if isinstance(entry, ModelRef):
                entry = {"repo": entry.repo, "revision": entry.revision, "include": list(entry.include),
                         "dest": entry.dest, **({"endpoint": entry.endpoint} if entry.endpoint else {})}
            model = _build(HubModel, entry, host, key)
            _check_hub_model(host, key, model)
            if model.name is not None:
                if model.name in names:
                    raise HostDataError(host, f"{key}.name", "a name no other model on this host uses",
                                        model.name)
                names.add(model.name)
        else:
            raise HostDataError(host, key, "a mapping with upload and dest, or name, repo and dest "
                                "(a Hub reference)", entry)
        if not PurePosixPath(model.dest).is_absolute():
            raise HostDataError(host, f"{key}.dest", "an absolute directory path on the host", model.dest)
        out.append(model)
    return tuple(out)


def _check_hub_model(host: str, key: str, m: HubModel) -> None:
    if m.name is not None and not MODEL_NAME.match(m.name):
        raise HostDataError(host, f"{key}.name", "letters, digits, '.', '_' and '-' (what services "
                            f"name with {MODEL_REF_PREFIX}<name>)", m.name)
    if not HUB_REPO.match(m.repo):
        raise HostDataError(host, f"{key}.repo", "a Hub repository '<org>/<name>'", m.repo)
    if any(c.isspace() for c in m.revision):
        raise HostDataError(host, f"{key}.revision", "a branch, tag or commit sha", m.revision)
    if not m.include or not all(pattern.strip() for pattern in m.include):
        raise HostDataError(host, f"{key}.include", "a non-empty list of glob patterns", list(m.include))
    if m.endpoint is not None and not m.endpoint.startswith(("http://", "https://")):
        raise HostDataError(host, f"{key}.endpoint", "an http(s) URL", m.endpoint)


def _check_service(host: str, key: str, svc: Service, gpus: Gpus) -> None:
    if not SERVICE_NAME.match(svc.name):
        raise HostDataError(host, f"{key}.name", "lowercase letters, digits and '-', "
                            "starting with a letter, at most 24 characters", svc.name)
    if svc.model.startswith(MODEL_REF_PREFIX):
        if not MODEL_NAME.match(svc.model[len(MODEL_REF_PREFIX):]):
            raise HostDataError(host, f"{key}.model", f"{MODEL_REF_PREFIX}<name of a Hub model in models>",
                                svc.model)
        return _check_service_rest(host, key, svc, gpus)
    model = PurePosixPath(svc.model)
    if not model.is_absolute() or model.suffix != ".gguf":
        raise HostDataError(host, f"{key}.model", "an absolute path to a .gguf file on the host "
                            f"(or {MODEL_REF_PREFIX}<name> of a Hub model)", svc.model)
    shard = SHARD.search(svc.model)
    if shard and shard.group(1) != "00001":
        first = SHARD.sub(f"-00001-of-{shard.group(2)}.gguf", model.name)
        raise HostDataError(host, f"{key}.model",
                            f"the first shard (llama-server loads the rest), i.e. {first}", model.name)
    _check_service_rest(host, key, svc, gpus)


def _check_service_rest(host: str, key: str, svc: Service, gpus: Gpus) -> None:
    if not 1 <= svc.port <= 65535:
        raise HostDataError(host, f"{key}.port", "a TCP port (1-65535)", svc.port)
    for name, value in (("ctx", svc.ctx), ("parallel", svc.parallel)):
        if value < 1:
            raise HostDataError(host, f"{key}.{name}", "a positive integer", value)
    for name, value in (("cache_type_k", svc.cache_type_k), ("cache_type_v", svc.cache_type_v)):
        if value not in KV_TYPES:
            raise HostDataError(host, f"{key}.{name}", f"one of {', '.join(KV_TYPES)}", value)
    if svc.split_mode not in SPLIT_MODES:
        raise HostDataError(host, f"{key}.split_mode", f"one of {', '.join(SPLIT_MODES)}", svc.split_mode)
    used_gpus = len(svc.gpus) or gpus.count
    if svc.tensor_split and len(svc.tensor_split) != used_gpus:
        raise HostDataError(host, f"{key}.tensor_split",
                            f"{used_gpus} values, one per GPU the service uses", list(svc.tensor_split))
    if any(v < 0 for v in svc.tensor_split):
        raise HostDataError(host, f"{key}.tensor_split", "non-negative ratios", list(svc.tensor_split))
    if gpus.count and any(g < 0 or g >= gpus.count for g in svc.gpus):
        raise HostDataError(host, f"{key}.gpus", f"GPU indexes between 0 and {gpus.count - 1}", list(svc.gpus))
    if svc.sampling is not None and svc.sampling not in SAMPLING_PRESETS:
        raise HostDataError(host, f"{key}.sampling", f"one of the presets {', '.join(SAMPLING_PRESETS)}",
                            svc.sampling)
    if svc.flash_attn is not None and svc.flash_attn not in ("on", "off", "auto"):
        raise HostDataError(host, f"{key}.flash_attn", "on, off or auto", svc.flash_attn)
    for i, arg in enumerate(svc.extra_args):
        if arg in ("--api-key", "--api-key-file"):
            raise HostDataError(host, f"{key}.extra_args[{i}]",
                                "no API key flag (use api_key_file; keys never go on a command line)", arg)


def resolve_model_refs(rig: Rig, lock: Mapping[str, Any], inventory: str = "INVENTORY") -> Rig:
    """The rig with its Hub models' lock entries and each ``ref:`` service model replaced by
    ``<dest>/<first shard>``; raises rigkit.lockfile.LockError naming ``rigkit lock`` when
    an entry is missing or stale."""
    from rigkit import lockfile

    hub = rig.hub_models
    if not hub:
        return rig
    entries = lockfile.check([m.ref for m in hub], lock, inventory=inventory)
    locks = {m.ref.key: entries[m.ref.key] for m in hub}
    by_name = {m.name: m for m in hub if m.name}
    services = []
    for svc in rig.services:
        if svc.model.startswith(MODEL_REF_PREFIX):
            m = by_name[svc.model[len(MODEL_REF_PREFIX):]]
            try:
                path = locks[m.ref.key].model_path(m.dest)
            except ValueError as exc:
                raise HostDataError(rig.host, f"services[{svc.name}].model",
                                    f"a Hub model with one first shard ({exc})") from None
            svc = dataclasses.replace(svc, model=path)
        services.append(svc)
    return dataclasses.replace(rig, services=tuple(services), locks=locks)


def pyinfra_inventory_path() -> str | None:
    """The inventory file the running ``pyinfra`` command was given, if it is a file: pyinfra's
    own click command parses its command line again (deploy code runs in greenlets, where
    click's current context is not visible)."""
    try:
        import click
        from pyinfra import context

        ctx = click.get_current_context(silent=True)
        inventory = ctx.find_root().params.get("inventory") if ctx else None
        if not inventory and "pyinfra_cli.cli" in sys.modules:
            command = sys.modules["pyinfra_cli.cli"].cli
            with command.make_context("pyinfra", list(sys.argv[1:]), resilient_parsing=True) as parsed:
                inventory = parsed.params.get("inventory")
        if not inventory:
            return None
        cwd = context.state.cwd if context.ctx_state.isset() and context.state.cwd else os.getcwd()
        path = Path(cwd, inventory)
        return str(inventory) if path.is_file() else None
    except Exception:  # not under the pyinfra CLI
        return None


def find_model_lock(data: Mapping[str, Any]) -> tuple[Path | None, str]:
    """Where the model lock is, and the inventory to name in ``rigkit lock ...`` hints:
    host data ``model_lock``, else ``$RIGKIT_MODEL_LOCK``, else next to pyinfra's inventory."""
    from rigkit import lockfile

    inventory = pyinfra_inventory_path()
    explicit = data.get("model_lock") or os.environ.get(LOCK_ENV)
    if explicit:
        return Path(str(explicit)).expanduser(), inventory or "INVENTORY"
    if inventory:
        try:
            from pyinfra import context
            cwd = context.state.cwd if context.ctx_state.isset() and context.state.cwd else os.getcwd()
        except Exception:
            cwd = os.getcwd()
        return lockfile.lock_path_for(Path(cwd, inventory)), inventory
    return None, "INVENTORY"


def rig_for(host: Any) -> Rig:
    """The validated rig data of a pyinfra host (``from pyinfra import host``), Hub model
    references resolved through the model lock; raises before any host changes when the
    data is bad or the lock is missing or stale."""
    data = {k: host.data.get(k) for k in ("gpus", "llama_cpp", "services", "models")
            if host.data.get(k) is not None}
    rig = parse_rig(host.name, data)
    if not rig.hub_models:
        return rig
    from rigkit import lockfile

    path, inventory = find_model_lock({"model_lock": host.data.get("model_lock")})
    if path is None:
        raise ModelLockError(
            f"host {host.name}: models: Hub models need the model lock, and it was not found: run "
            f"pyinfra with an inventory file (the lock is <inventory stem>.lock.yaml next to it), or "
            f"set host data model_lock or ${LOCK_ENV}; write it with: rigkit lock INVENTORY")
    try:
        return resolve_model_refs(rig, lockfile.load(path, inventory=inventory), inventory)
    except lockfile.LockError as exc:
        raise ModelLockError(f"host {host.name}: {exc}") from None
