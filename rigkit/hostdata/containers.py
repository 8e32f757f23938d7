"""
Host data every container engine (vLLM, SGLang) shares: the environment its container may be
given, by allowlist, and the checks of the options every container service has (``env``,
``ready_timeout``, ``stop_timeout``, ``keep_images``, a model directory). An engine adds its own
variable family (``VLLM_*``; ``SGLANG_*``) and what of it loads code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from rigkit.hostdata.schema import HostDataError, check_pattern

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}", re.ASCII)
#: Printable ASCII without spaces (NCCL's "^lo,docker0" and "=eth0" forms included); the value
#: reaches the unit through rigkit.render.systemd.escape like every other word.
ENV_VALUE = re.compile(r"[!-~]{0,256}", re.ASCII)
#: The documented tuning variables of what runs in every engine's container: NCCL, Gloo,
#: CUDA, PyTorch and Inductor, Triton, FlashInfer, Ray, OpenMP, the Hugging Face libraries.
SHARED_FAMILIES = (
    "NCCL",
    "GLOO",
    "CUDA",
    "TORCH",
    "TORCHINDUCTOR",
    "PYTORCH",
    "TRITON",
    "FLASHINFER",
    "RAY",
    "OMP",
    "MKL",
    "HF",
    "HF_HUB",
    "TRANSFORMERS",
    "TOKENIZERS",
    "SAFETENSORS",
)
PROXY_ENV = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})
#: Even in those families, a variable that points the process at files or code to load (a
#: plugin, a library, a logging config, a cache or home directory) is not host data's to set:
#: what runs in the container is the image's.
ENV_POINTS_AT_CODE = re.compile(
    r".*_(?:PATH|PATHS|DIR|DIRS|HOME|ROOT|FILE|LIB|LIBS|PLUGIN|PLUGINS|CONFIG_PATH)", re.ASCII
)
#: Environment rigkit sets itself, or that would carry a secret into the unit.
RESERVED_ENV = frozenset(
    {
        "VLLM_API_KEY",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "RIGKIT_API_KEY_FILE",
    }
)
SECRET_ENV = re.compile(r"(?:.*_)?(?:KEY|TOKEN|SECRET|PASSWORD)(?:_.*)?", re.ASCII)


class Environment:
    """The variables an engine's container may be given: the shared families and the
    engine's own (``own``: e.g. ``("VLLM",)``), never one of ``loads_code``."""

    def __init__(self, own: tuple[str, ...], loads_code: frozenset[str] = frozenset()):
        self.families = (*own, *SHARED_FAMILIES)
        self.pattern = re.compile(rf"(?:{'|'.join(self.families)})_[A-Z0-9_]+", re.ASCII)
        self.loads_code = loads_code

    def problem(self, name: str, value: str) -> tuple[str, str] | None:
        """Why ``name=value`` may not enter the container, as (what is wrong: ``name`` or
        ``value``, what is expected), or None."""
        if name in RESERVED_ENV or SECRET_ENV.fullmatch(name.upper()):
            return "name", (
                "no secret and nothing rigkit sets itself (the key goes through api_key_file; "
                "HF_HUB_OFFLINE and the GPUs are rigkit's)"
            )
        if name in self.loads_code:
            return "name", f"a tuning variable, not one that picks code to load ({', '.join(sorted(self.loads_code))})"
        if name not in PROXY_ENV and not self.pattern.fullmatch(name):
            return "name", (
                "a documented variable of what runs in the container: "
                + ", ".join(f"{f}_*" for f in self.families if f != "HF_HUB")
                + ", or HTTP(S)_PROXY / NO_PROXY in either case"
            )
        if ENV_POINTS_AT_CODE.fullmatch(name):
            return "name", (
                "a tuning variable, not one that points the process at files or code to load "
                "(*_PATH, *_DIR, *_HOME, *_ROOT, *_FILE, *_LIB, *_PLUGIN(S): the container's files are the image's)"
            )
        if not ENV_VALUE.fullmatch(value):
            return "value", "printable ASCII without spaces (at most 256 characters)"
        for word in value.split(","):
            if "://" in word:
                try:
                    url = urlsplit(word)
                except ValueError:
                    return "value", "a well-formed URL"
                if url.username is not None or url.password is not None:
                    return "value", (
                        "a URL without credentials (a password in a unit is readable by every local user; "
                        "use a proxy that needs none, or one on the host's loopback)"
                    )
        return None

    def check(self, host: str, key: str, env: Mapping[str, str]) -> None:
        for k, v in env.items():
            if k not in PROXY_ENV:
                check_pattern(k, ENV_NAME, host, f"{key}.env", "variable names of A-Z, 0-9 and _ (or the proxy pair)")
            refusal = self.problem(k, v)
            if refusal:
                what, expected = refusal
                raise HostDataError(host, f"{key}.env.{k}", expected, k if what == "name" else v)


class ContainerOptions(Protocol):
    """What every container engine's options have (VllmOptions, SglangOptions)."""

    @property
    def env(self) -> Mapping[str, str]: ...

    @property
    def ready_timeout(self) -> int: ...

    @property
    def stop_timeout(self) -> int: ...

    @property
    def keep_images(self) -> int: ...


def check_container_options(
    host: str, key: str, opts: ContainerOptions, model: str, *, title: str, environment: Environment
) -> None:
    """What every container service has: its environment, its timeouts, how many old images
    it keeps, and a model directory (not a GGUF file)."""
    environment.check(host, key, opts.env)
    ready_timeout, stop_timeout, keep_images = opts.ready_timeout, opts.stop_timeout, opts.keep_images
    if not 60 <= ready_timeout <= 7200:
        raise HostDataError(host, f"{key}.ready_timeout", "seconds between 60 and 7200", ready_timeout)
    if not 1 <= stop_timeout <= 600:
        raise HostDataError(host, f"{key}.stop_timeout", "seconds between 1 and 600", stop_timeout)
    if not 0 <= keep_images <= 20:
        raise HostDataError(host, f"{key}.keep_images", "a count of images between 0 and 20", keep_images)
    if model.endswith(".gguf"):
        raise HostDataError(
            host,
            f"{key}.model",
            f"the model's directory on the host ({title} loads safetensors checkpoints), or ref:<name> of a Hub model",
            model,
        )
