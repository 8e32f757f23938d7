"""
What rigkit renders for an SGLang service: the image's identity (tag = hash of
``files/sglang`` and the pinned ``lmsysorg/sglang`` base), the ``python3 -m
sglang.launch_server`` argv, the ``docker run`` argv around it and the hardened unit. Pure
functions of the host data, tested without a host.

The API key never appears on a command line, in the unit or in ``docker inspect``: the key
file is mounted read-only at :data:`rigkit.render.containers.CONTAINER_KEY` and the image's entrypoint
(``files/sglang/entrypoint.py``) reads it into the server's arguments inside its own process.
"""

from __future__ import annotations

from pathlib import Path

from rigkit import host_paths
from rigkit.hostdata import Rig, Service
from rigkit.hostdata.sglang import IMAGE_SOURCE, SPECULATIVE_FLAGS, options_of
from rigkit.render import containers
from rigkit.render.containers import ImageIdentity

IMAGE_REPO = "rigkit/sglang"
CONTEXT_ROOT = host_paths.image_context_dir("sglang")
LAUNCH = ["python3", "-m", "sglang.launch_server"]
#: What the host tool adds beyond the context (a change builds every image again).
BUILD_SCHEME = "build 1"
CONTEXT_FILES = ("Dockerfile", "entrypoint.py")


def image_identity(image: str, source: Path = IMAGE_SOURCE) -> ImageIdentity:
    """rigkit's image of a pinned ``lmsysorg/sglang`` base: the base and files/sglang."""
    files = [(name, source / name) for name in CONTEXT_FILES]
    return ImageIdentity.of(IMAGE_REPO, image, files, scheme=BUILD_SCHEME, context_root=CONTEXT_ROOT)


def key_path(service: Service) -> str:
    return service.names.key_file


def container_name(service: Service) -> str:
    return service.names.container


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


def draft_paths(service: Service) -> tuple[str, ...]:
    """The draft model the speculative options name, which the container mounts read-only."""
    draft = (options_of(service).speculative or {}).get("draft_model_path")
    return (draft,) if isinstance(draft, str) else ()


def command_line(service: Service, image: str, gpus: int) -> list[str]:
    """The ``docker run`` argv of a service's container (rigkit.render.containers: no secret in
    it; the key is a file mounted read-only that the entrypoint reads)."""
    opts = options_of(service)
    return containers.docker_run(
        service,
        container=container_name(service),
        image=image,
        command=launch_args(service),
        gpus=gpus,
        stop_timeout=opts.stop_timeout,
        key_file=key_path(service),
        mounts=draft_paths(service),
        env=opts.env,
    )


def render_unit(service: Service, image: str, gpus: int) -> str:
    """The hardened unit (the Docker client under systemd; the container isolated by Docker)."""
    opts = options_of(service)
    return containers.render_unit(
        service,
        title="SGLang",
        image=image,
        run=command_line(service, image, gpus),
        container=container_name(service),
        stop_timeout=opts.stop_timeout,
        start_timeout=opts.ready_timeout + 60,
    )


def services_manifest(rig: Rig, images: dict[str, str]) -> str:
    """What the host tool, the watchdog and status read of the host's SGLang services."""
    return containers.services_manifest(
        rig, "sglang", "SGLang", images, lambda s: {"ready_timeout": options_of(s).ready_timeout}
    )
