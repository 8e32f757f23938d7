"""
What rigkit renders for an SGLang service: the image's identity (tag = hash of
``files/sglang`` and the pinned ``lmsysorg/sglang`` base), the ``python3 -m
sglang.launch_server`` argv, the ``docker run`` argv around it and the hardened unit. Pure
functions of the host data, tested without a host.

The API key never appears on a command line, in the unit or in ``docker inspect``: the key
file is mounted read-only at :data:`CONTAINER_KEY` and the image's entrypoint
(``files/sglang/entrypoint.py``) reads it into the server's arguments inside its own process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from rigkit.hostdata import Service
from rigkit.hostdata.sglang import IMAGE_SOURCE, SPECULATIVE_FLAGS, options_of
from rigkit.render.systemd import exec_line, templates

PREFIX = "sglang"  # unit rigkit-sglang-<name>.service, user sglang-<name>
KEY_DIR = "/etc/rigkit/sglang"
IMAGE_REPO = "rigkit/sglang"
DOCKER = "/usr/bin/docker"
CONTAINER_KEY = "/run/rigkit/api.key"
LAUNCH = ["python3", "-m", "sglang.launch_server"]
BUILD_SCHEME = "build 1"
#: The files of the build context, in files/sglang.
CONTEXT_FILES = ("Dockerfile", "entrypoint.py")


@dataclass(frozen=True)
class ImageIdentity:
    """One image build: its tag, base and the files of its build context."""

    tag: str
    base: str
    files: tuple[tuple[str, Path], ...]  # (path in the context, file here)

    @classmethod
    def of(cls, image: str, source: Path = IMAGE_SOURCE) -> ImageIdentity:
        files = tuple((name, source / name) for name in CONTEXT_FILES)
        digest = hashlib.sha256()
        digest.update(f"{BUILD_SCHEME}\nbase {image}\n".encode())
        for rel, path in files:
            content = path.read_bytes()
            digest.update(f"{rel} {len(content)}\n".encode())
            digest.update(content)
        return cls(tag=f"{IMAGE_REPO}:{digest.hexdigest()[:16]}", base=image, files=files)


def unit_name(service: Service) -> str:
    return f"rigkit-{PREFIX}-{service.name}.service"


def user(service: Service) -> str:
    return f"{PREFIX}-{service.name}"


def key_path(service: Service) -> str:
    return f"{KEY_DIR}/{service.name}.key"


def container_name(service: Service) -> str:
    return f"rigkit-{PREFIX}-{service.name}"


def launch_args(service: Service) -> list[str]:
    """The container's command: ``python3 -m sglang.launch_server`` and its flags (the
    service's keys, then the typed options, then ``extra_args``). ``--tp-size`` is SGLang's
    own spelling: its docs' ``--tp`` is argparse taking a prefix, which rigkit never relies on."""
    opts = options_of(service)
    argv = [
        *LAUNCH,
        "--model-path",
        service.model,
        "--served-model-name",
        service.model_id,
        "--host",
        service.host,
        "--port",
        str(service.port),
        "--context-length",
        str(service.ctx),
        "--tp-size",
        str(opts.tensor_parallel),
    ]
    if opts.mem_fraction_static is not None:
        argv += ["--mem-fraction-static", f"{opts.mem_fraction_static:g}"]
    if opts.reasoning_parser:
        argv += ["--reasoning-parser", opts.reasoning_parser]
    if opts.tool_call_parser:
        argv += ["--tool-call-parser", opts.tool_call_parser]
    for key, (flag, _) in SPECULATIVE_FLAGS.items():
        if opts.speculative and key in opts.speculative:
            argv += [flag, str(opts.speculative[key])]
    argv += list(service.extra_args)
    return argv


def command_line(service: Service, image: str, gpus: int) -> list[str]:
    """The ``docker run`` argv of a service's container (no secret in it: the key is a file
    mounted read-only that the entrypoint reads)."""
    opts = options_of(service)
    argv = [
        DOCKER,
        "run",
        "--name",
        container_name(service),
        "--pull",
        "never",
        "--network",
        "host",
        "--ipc",
        "host",
        "--init",
        "--label",
        f"org.rigkit.service={service.name}",
        "--stop-timeout",
        str(opts.stop_timeout),
    ]
    if service.gpus:
        argv += ["--gpus", '"device=' + ",".join(str(g) for g in service.gpus) + '"']
    elif gpus:
        argv += ["--gpus", "all"]
    argv += ["-v", f"{service.model}:{service.model}:ro"]
    draft = (opts.speculative or {}).get("draft_model_path")
    if isinstance(draft, str) and draft != service.model:
        argv += ["-v", f"{draft}:{draft}:ro"]
    argv += ["-e", "HF_HUB_OFFLINE=1"]
    if service.api_key_file:
        argv += ["-v", f"{key_path(service)}:{CONTAINER_KEY}:ro", "-e", f"RIGKIT_API_KEY_FILE={CONTAINER_KEY}"]
    for name, value in sorted(opts.env.items()):
        argv += ["-e", f"{name}={value}"]
    return argv + [image] + launch_args(service)


def render_unit(service: Service, image: str, gpus: int) -> str:
    """The hardened unit (the Docker client under systemd; the container isolated by Docker)."""
    opts = options_of(service)
    name = container_name(service)
    return templates.get_template("sglang.service.j2").render(
        service=service,
        image=image,
        user=user(service),
        state=f"rigkit-{PREFIX}-{service.name}",
        exec_start=exec_line(command_line(service, image, gpus)),
        exec_remove=exec_line([DOCKER, "rm", "-f", name]),
        exec_stop=exec_line([DOCKER, "stop", "-t", str(opts.stop_timeout), name]),
        start_timeout=opts.ready_timeout + 60,
        stop_timeout=opts.stop_timeout + 30,
    )
