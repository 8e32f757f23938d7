"""
The container layer every container engine (vLLM, SGLang) renders through: the image's
identity (a tag that is the hash of its build context and base, so the same inputs never
build twice), the ``docker run`` argv of a service's container and its hardened unit. The
engines add only their server's own flags. Pure functions, tested without a host.

The API key never appears on a command line, in the unit or in ``docker inspect``: the key
file is mounted read-only at :data:`CONTAINER_KEY` and the image's entrypoint reads it inside
the container.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rigkit.hostdata import Rig, Service
from rigkit.render.systemd import exec_line, templates

DOCKER = "/usr/bin/docker"
CONTAINER_KEY = "/run/rigkit/api.key"
#: The label every container and image of rigkit carries: which service, which engine.
SERVICE_LABEL = "org.rigkit.service"
ENGINE_LABEL = "org.rigkit.engine"


@dataclass(frozen=True)
class ImageIdentity:
    """One image build: its tag (``<repo>:<hash>``), base, build arguments and the files of
    its build context."""

    tag: str
    base: str
    files: tuple[tuple[str, Path], ...]  # (path in the context, file here)
    build_args: tuple[tuple[str, str], ...] = ()
    context_root: str = ""  # rigkit.host_paths.image_context_dir of the engine
    dirs: tuple[str, ...] = ()  # directories of the context its Dockerfile copies, even when empty

    @property
    def context(self) -> str:
        return f"{self.context_root}/{self.tag.split(':', 1)[1]}"

    @property
    def repository(self) -> str:
        return self.tag.split(":", 1)[0]

    @classmethod
    def of(
        cls,
        repository: str,
        base: str,
        files: Sequence[tuple[str, Path]],
        *,
        scheme: str,
        build_args: Sequence[tuple[str, str]] = (),
        context_root: str,
        dirs: Sequence[str] = (),
    ) -> ImageIdentity:
        """The identity of ``base`` plus ``files``; ``scheme`` names what the host tool adds
        beyond the context (a change of it builds again), ``build_args`` go into the hash."""
        digest = hashlib.sha256()
        digest.update(f"{scheme}\nbase {base}\n".encode())
        for name, value in build_args:
            digest.update(f"{name.lower()} {value}\n".encode())
        for rel, path in files:
            content = path.read_bytes()
            digest.update(f"{rel} {len(content)}\n".encode())
            digest.update(content)
        return cls(
            tag=f"{repository}:{digest.hexdigest()[:16]}",
            base=base,
            files=tuple(files),
            build_args=tuple(build_args),
            context_root=context_root,
            dirs=tuple(dirs),
        )


def docker_run(
    service: Service,
    *,
    container: str,
    image: str,
    command: Sequence[str],
    gpus: int,
    stop_timeout: int,
    key_file: str,
    mounts: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    docker_args: Sequence[str] = (),
) -> list[str]:
    """The ``docker run`` argv of a service's container: host network and IPC (the server
    listens where the service says), an init, the service's label, its GPUs (its ``gpus``, else
    all the host has), the model and ``mounts`` read-only at their own paths, no Hub access,
    the key file read-only at :data:`CONTAINER_KEY`, then ``docker_args``, the service's ``env``
    (sorted), the image and ``command``."""
    argv = [
        DOCKER,
        "run",
        "--name",
        container,
        "--pull",
        "never",
        "--network",
        "host",
        "--ipc",
        "host",
        "--init",
        "--label",
        f"{SERVICE_LABEL}={service.name}",
        "--stop-timeout",
        str(stop_timeout),
    ]
    if service.gpus:
        argv += ["--gpus", '"device=' + ",".join(str(g) for g in service.gpus) + '"']
    elif gpus:
        argv += ["--gpus", "all"]
    argv += ["-v", f"{service.model}:{service.model}:ro"]
    for path in mounts:
        if path != service.model:
            argv += ["-v", f"{path}:{path}:ro"]
    argv += ["-e", "HF_HUB_OFFLINE=1"]
    if service.api_key_file:
        argv += ["-v", f"{key_file}:{CONTAINER_KEY}:ro", "-e", f"RIGKIT_API_KEY_FILE={CONTAINER_KEY}"]
    argv += list(docker_args)
    for name, value in sorted((env or {}).items()):
        argv += ["-e", f"{name}={value}"]
    return argv + [image, *command]


def render_unit(
    service: Service,
    *,
    title: str,
    image: str,
    run: Sequence[str],
    container: str,
    stop_timeout: int,
    start_timeout: int,
    ray_unit: str | None = None,
    ready: Sequence[str] | None = None,
    drop_page_cache: bool = False,
) -> str:
    """The hardened unit of a container service: the Docker client under systemd, which
    only talks to dockerd over its socket; the container itself is isolated by Docker.
    ``ready``: a check run before every start (a Ray cluster's readiness)."""
    return templates.get_template("container.service.j2").render(
        service=service,
        title=title,
        image=image,
        exec_start=exec_line(list(run)),
        ray_unit=ray_unit,
        ready=exec_line(list(ready)) if ready else None,
        exec_remove=exec_line([DOCKER, "rm", "-f", container]),
        exec_stop=exec_line([DOCKER, "stop", "-t", str(stop_timeout), container]),
        drop_page_cache=drop_page_cache,
        start_timeout=start_timeout,
        stop_timeout=stop_timeout + 30,
    )


def services_manifest(
    rig: Rig,
    engine: str,
    title: str,
    images: Mapping[str, str],
    own: Callable[[Service], Mapping[str, object]] = lambda s: {},
) -> str:
    """What the host tool, the watchdog and status read: the engine's enabled services that
    run here, their units, containers, images, ports, key files and models, plus what the
    engine adds per service (``own``: its ``ready_timeout``, ...)."""
    return (
        json.dumps(
            {
                "engine": engine,
                "title": title,
                "services": [
                    {
                        "name": s.name,
                        "unit": s.unit,
                        "container": s.names.container,
                        "image": images[s.name],
                        "port": s.port,
                        "model": s.model,
                        "model_id": s.model_id,
                        "engine": s.engine,
                        "key_file": s.names.key_file if s.api_key_file else None,
                        **own(s),
                    }
                    for s in rig.enabled_services
                    if s.engine == engine and rig.serves(s)
                ],
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
