"""
Host data ``services``: what every engine shares (name, engine, model, address, key,
enabled, ...) in :class:`Service`, the engine's own flags in its options class (the
engine's in ``rigkit.hostdata.engines``: :class:`LlamaServerOptions` for ``engine:
"llama.cpp"``). In host data both sit side by side in one mapping; parsing sorts each key to
its side::

    {"name": "qwen122b", "engine": "llama.cpp", "model": "ref:qwen122b-q6", "port": 8000,
     "ctx": 262144, "cache_type_k": "q8_0", "tensor_split": [0.9, 1, 1, 1, 1, 1]}

A service listens on 127.0.0.1 unless ``host`` names another address; listening beyond
loopback needs an ``api_key_file`` or an explicit ``allow_unauthenticated: true``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from rigkit.host_paths import ServiceNames
from rigkit.hostdata.engines import DEFAULT_ENGINE, SPECS, EngineOptions, EngineSpec
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.llama_server import SHARD, LlamaServerOptions, RouterModel, check_router
from rigkit.hostdata.models import MODEL_NAME, MODEL_REF_PREFIX
from rigkit.hostdata.schema import HostDataError, check_address, check_path, check_pattern, coerce_fields

SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,23}", re.ASCII)
# What clients call the model: printable, no spaces, quotes, '%' or shell syntax.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}", re.ASCII)
DISPLAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/@+()-]{0,127}", re.ASCII)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """One served model, whatever the engine."""

    name: str
    model: str  # path of the model (first shard) on the host, or "ref:<models[].name>"
    engine: str = "llama.cpp"
    host: str = LOOPBACK
    port: int = 8000
    ctx: int = 4096
    alias: str | None = None  # the model name clients see
    display_name: str | None = None  # for client configs
    extra_args: tuple[str, ...] = ()
    api_key_file: str | None = None  # on the deploying machine; copied to the host 0400
    allow_unauthenticated: bool = False  # listen beyond loopback without a key, knowingly
    gpus: tuple[int, ...] = ()  # CUDA_VISIBLE_DEVICES; empty: all
    enabled: bool = True
    # A timer probes generation (not just /health) every interval and restarts the service
    # after that many failures in a row: a hung server never exits by itself.
    watchdog: bool = True
    watchdog_interval: int = 60  # seconds; a probe may take as long
    watchdog_failures: int = 3
    options: EngineOptions = field(default_factory=LlamaServerOptions)  # the engine's own (its SPECS type)

    @property
    def spec(self) -> EngineSpec:
        return SPECS[self.engine]

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def names(self) -> ServiceNames:
        """What the service is called on the host (rigkit.host_paths)."""
        return ServiceNames(self.prefix, self.name)

    @property
    def unit(self) -> str:
        return self.names.unit

    @property
    def watchdog_unit(self) -> str:
        """The watchdog's oneshot unit; its timer has the same name ending in ``.timer``."""
        return self.names.watchdog_unit

    @property
    def watchdog_timer(self) -> str:
        return self.names.watchdog_timer

    @property
    def user(self) -> str:
        return self.names.user

    @property
    def model_id(self) -> str:
        """What clients call the model: the alias, else the file name without shard suffix."""
        if self.alias:
            return self.alias
        return SHARD.sub("", PurePosixPath(self.model).name).removesuffix(".gguf")

    @property
    def router_models(self) -> tuple[RouterModel, ...]:
        """The models a llama.cpp router service serves besides its own (none: one model)."""
        return self.options.router_models if isinstance(self.options, LlamaServerOptions) else ()

    @property
    def served(self) -> tuple[Service, ...]:
        """Every model the service serves, each as a service of its own (its file, id,
        context, options and extra_args; the service's name, port and key): the service
        itself first (a router's default, loaded at its start), then its router models."""
        if not self.router_models:
            return (self,)
        return (
            self.with_router_models(()),
            *(
                dataclasses.replace(
                    self,
                    model=m.model,
                    alias=m.alias,
                    display_name=m.display_name,
                    ctx=self.ctx if m.ctx is None else m.ctx,
                    extra_args=m.extra_args,
                    options=m.options,
                )
                for m in self.router_models
            ),
        )

    def with_router_models(self, models: Iterable[RouterModel]) -> Service:
        """The service with its router models replaced (their ``ref:`` models resolved)."""
        assert isinstance(self.options, LlamaServerOptions)
        return dataclasses.replace(self, options=dataclasses.replace(self.options, router_models=tuple(models)))

    @property
    def public(self) -> bool:
        """Listening beyond loopback."""
        return not ipaddress.ip_address(self.host).is_loopback


COMMON = {f.name for f in dataclasses.fields(Service)} - {"options"}


def parse_service(host: str, key: str, raw: Any, gpus: Gpus, llama_ref: str | None = None) -> Service:
    """One ``services[]`` entry: common keys to :class:`Service`, the rest to the engine's options;
    ``llama_ref`` (host data ``llama_cpp.ref``) picks the llama-server option table."""
    if isinstance(raw, Service):
        return raw
    if not isinstance(raw, dict):
        raise HostDataError(host, key, "a mapping of service fields", raw)
    engine = raw.get("engine", DEFAULT_ENGINE)
    if engine not in SPECS:
        raise HostDataError(host, f"{key}.engine", f"one of {', '.join(SPECS)}", engine)
    options_cls = SPECS[engine].options
    own = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - COMMON - own)
    if unknown:
        raise HostDataError(
            host, f"{key}.{unknown[0]}", f"one of the known keys ({', '.join(sorted(COMMON | own))})", "unknown key"
        )
    common = coerce_fields(Service, {k: v for k, v in raw.items() if k in COMMON}, host, key)
    if "host" in common:
        common["host"] = check_address(
            common["host"], host, f"{key}.host", "an IP address to listen on (127.0.0.1, 0.0.0.0, a LAN address)"
        )
    options = options_cls(**coerce_fields(options_cls, {k: v for k, v in raw.items() if k in own}, host, key))
    svc = Service(**common, options=options)
    # A router's models are checked as services of their own, then as the router's.
    served = svc.served
    for i, model in enumerate(served):
        at = key if i == 0 else f"{key}.router_models[{i - 1}]"
        _check_common(host, at, model, gpus)
        SPECS[engine].check(host, at, model, gpus, llama_ref)
    if svc.router_models:
        check_router(host, key, [(m.model_id, m) for m in served], llama_ref)
    return svc


def parse_services(host: str, raw: Any, gpus: Gpus, llama_ref: str | None = None) -> tuple[Service, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise HostDataError(host, "services", "a list of service mappings", raw)
    services = tuple(parse_service(host, f"services[{i}]", s, gpus, llama_ref) for i, s in enumerate(raw))
    seen_names: set[str] = set()
    ports: dict[int, str] = {}
    for i, svc in enumerate(services):
        key = f"services[{i}]"
        if svc.name in seen_names:
            raise HostDataError(host, f"{key}.name", "a name no other service on this host uses", svc.name)
        seen_names.add(svc.name)
        if svc.enabled:
            if svc.port in ports:
                raise HostDataError(
                    host, f"{key}.port", f"a port no other enabled service uses ({ports[svc.port]} has it)", svc.port
                )
            ports[svc.port] = svc.name
    return services


def _check_common(host: str, key: str, svc: Service, gpus: Gpus) -> None:
    check_pattern(
        svc.name,
        SERVICE_NAME,
        host,
        f"{key}.name",
        "lowercase letters, digits and '-', starting with a letter, at most 24 characters",
    )
    if svc.model.startswith(MODEL_REF_PREFIX):
        check_pattern(
            svc.model[len(MODEL_REF_PREFIX) :],
            MODEL_NAME,
            host,
            f"{key}.model",
            f"{MODEL_REF_PREFIX}<name of a Hub model in models>",
        )
    else:
        check_path(
            svc.model,
            host,
            f"{key}.model",
            f"an absolute path to the model on the host (or {MODEL_REF_PREFIX}<name> of a Hub model)",
        )
    if not 1 <= svc.port <= 65535:
        raise HostDataError(host, f"{key}.port", "a TCP port (1-65535)", svc.port)
    if svc.ctx < 1:
        raise HostDataError(host, f"{key}.ctx", "a positive integer", svc.ctx)
    if not 5 <= svc.watchdog_interval <= 86400:
        raise HostDataError(host, f"{key}.watchdog_interval", "seconds between 5 and 86400", svc.watchdog_interval)
    if not 1 <= svc.watchdog_failures <= 100:
        raise HostDataError(host, f"{key}.watchdog_failures", "a count between 1 and 100", svc.watchdog_failures)
    if svc.alias is not None:
        check_pattern(svc.alias, MODEL_ID, host, f"{key}.alias", "a model name: letters, digits and . _ : / @ + -")
    if svc.display_name is not None:
        check_pattern(
            svc.display_name,
            DISPLAY_NAME,
            host,
            f"{key}.display_name",
            "a display name: letters, digits, spaces and . _ : / @ + ( ) -",
        )
    if svc.api_key_file is not None and "\x00" in svc.api_key_file:
        raise HostDataError(host, f"{key}.api_key_file", "a file on the deploying machine", svc.api_key_file)
    if gpus.count and any(g < 0 or g >= gpus.count for g in svc.gpus):
        raise HostDataError(host, f"{key}.gpus", f"GPU indexes between 0 and {gpus.count - 1}", list(svc.gpus))
    if svc.public and svc.enabled and not svc.api_key_file and not svc.allow_unauthenticated:
        raise HostDataError(
            host,
            f"{key}.host",
            "127.0.0.1 (the default), or an api_key_file for a service "
            "listening beyond loopback (or allow_unauthenticated: true to open it knowingly)",
            svc.host,
        )
