"""
The engines a service may name (host data ``engine``), each declared once: its options type,
the prefix of its units, users and key directory, how it loads a model, and its checks. An
engine's own module (rigkit/hostdata/<engine>.py) holds its options and checks; this registry
is the only list of them in host data (the deploy side's is ``rigkit.engines``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import rigkit.hostdata.llama_server as llama_server
import rigkit.hostdata.sglang as sglang
import rigkit.hostdata.vllm as vllm
from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.llama_server import LlamaServerOptions
from rigkit.hostdata.schema import ServiceFields
from rigkit.hostdata.sglang import SglangOptions
from rigkit.hostdata.vllm import VllmOptions

#: A service's own options: its engine's type.
EngineOptions = Union[LlamaServerOptions, VllmOptions, SglangOptions]  # noqa: UP007 - a runtime alias


@dataclass(frozen=True)
class EngineSpec:
    """What host data knows of an engine."""

    name: str  # host data's ``engine``
    prefix: str  # of its units, users, key directory: rigkit-<prefix>-<service>.service
    options: type  # its options dataclass
    # (host, key, service, gpus, the host's pinned llama.cpp build) -> None, or HostDataError
    check: Callable[[str, str, ServiceFields, Gpus, str | None], None]
    loads_directory: bool  # a model's directory (safetensors); else its first shard (GGUF)
    needs_llama_cpp: bool = False  # runs the host's llama.cpp build (host data llama_cpp)


SPECS: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("llama.cpp", "llama", LlamaServerOptions, llama_server.check_llama_server, False, True),
        EngineSpec("vllm", "vllm", VllmOptions, vllm.check_service, True),
        EngineSpec("sglang", "sglang", SglangOptions, sglang.check_service, True),
    )
}
DEFAULT_ENGINE = "llama.cpp"
