"""
What rigkit renders for a vLLM service: the image's identity (tag = hash of the Dockerfile,
the helper package, the chosen patches and the base reference), the ``docker run`` argv with
the ``vllm serve`` flags, the hardened unit and the verifier's manifest. Pure functions of the
host data, tested without a host.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rigkit.hostdata import Rig, Service
from rigkit.hostdata.cluster import Cluster
from rigkit.hostdata.vllm import IMAGE_SOURCE, VllmOptions, available_patches
from rigkit.render import ray
from rigkit.render.systemd import exec_line, templates

KEY_DIR = "/etc/rigkit/vllm"
MANIFEST = "/etc/rigkit/vllm/services.json"
CONTEXT_DIR = "/opt/rigkit/vllm/context"
IMAGE_REPO = "rigkit/vllm"
DOCKER = "/usr/bin/docker"
CONTAINER_KEY = "/run/rigkit/api.key"
#: What vllm_host.py build adds beyond the context (in the tag: an image built before it
#: changed is built again): the base image's ID as a label, which a cluster's nodes compare.
BUILD_SCHEME = "build 2: org.rigkit.vllm.base-id"


@dataclass(frozen=True)
class ImageIdentity:
    """One image build: its tag, base, patches and the files of its build context."""

    tag: str
    base: str
    patches: tuple[str, ...]
    files: tuple[tuple[str, Path], ...]  # (path in the context, file here)

    @property
    def context(self) -> str:
        return f"{CONTEXT_DIR}/{self.tag.split(':', 1)[1]}"

    @classmethod
    def of(cls, opts: VllmOptions, source: Path = IMAGE_SOURCE) -> ImageIdentity:
        known = (
            available_patches()
            if source == IMAGE_SOURCE
            else {
                d.name.split("-", 1)[1]: d
                for d in sorted((source / "patches").iterdir())
                if (d / "patch.json").is_file()
            }
        )
        files: list[tuple[str, Path]] = [("Dockerfile", source / "Dockerfile")]
        files += [(f"rigkit_vllm_patches/{p.name}", p) for p in sorted((source / "rigkit_vllm_patches").glob("*.py"))]
        for name in opts.patches:
            d = known[name]
            files += [(f"patches/{d.name}/{p.name}", p) for p in sorted(d.iterdir()) if p.is_file()]
        digest = hashlib.sha256()
        digest.update(f"{BUILD_SCHEME}\nbase {opts.base_image}\npatches {','.join(opts.patches)}\n".encode())
        for rel, path in files:
            content = path.read_bytes()
            digest.update(f"{rel} {len(content)}\n".encode())
            digest.update(content)
        return cls(
            tag=f"{IMAGE_REPO}:{digest.hexdigest()[:16]}",
            base=opts.base_image,
            patches=tuple(opts.patches),
            files=tuple(files),
        )


def key_path(service: Service) -> str:
    return f"{KEY_DIR}/{service.name}.key"


def container_name(service: Service) -> str:
    return f"rigkit-vllm-{service.name}"


def serve_args(service: Service, cluster: Cluster | None = None) -> list[str]:
    """``vllm serve`` arguments (after the image's entrypoint): the model, then the flags
    (with Ray as the executor across the ``cluster`` it heads)."""
    opts: VllmOptions = service.options  # type: ignore[assignment]
    argv = [
        service.model,
        "--served-model-name",
        service.model_id,
        "--host",
        service.host,
        "--port",
        str(service.port),
        "--max-model-len",
        str(service.ctx),
        "--gpu-memory-utilization",
        f"{opts.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(opts.tensor_parallel),
    ]
    if opts.pipeline_parallel != 1:
        argv += ["--pipeline-parallel-size", str(opts.pipeline_parallel)]
    if cluster is not None:
        argv += ray.VLLM_SERVE_ARGS
    if opts.dtype:
        argv += ["--dtype", opts.dtype]
    if opts.reasoning_parser:
        argv += ["--reasoning-parser", opts.reasoning_parser]
    if opts.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if opts.tool_call_parser:
        argv += ["--tool-call-parser", opts.tool_call_parser]
    if opts.attention_backend:
        argv += ["--attention-backend", opts.attention_backend]
    if opts.speculative:
        argv += ["--speculative-config", json.dumps(opts.speculative, separators=(",", ":"))]
    if opts.skip_mm_profiling:
        argv.append("--skip-mm-profiling")
    if opts.limit_mm_per_prompt is not None:
        argv += ["--limit-mm-per-prompt", json.dumps(opts.limit_mm_per_prompt, separators=(",", ":"))]
    if opts.max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(opts.max_num_batched_tokens)]
    if opts.max_num_seqs:
        argv += ["--max-num-seqs", str(opts.max_num_seqs)]
    if opts.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if opts.enable_prefix_caching else "--no-enable-prefix-caching")
    argv += list(service.extra_args)
    return argv


def command_line(service: Service, image: str, gpus: int, cluster: Cluster | None = None) -> list[str]:
    """The ``docker run`` argv of a service's container (no secret in it: the key is a file
    mounted read-only that the entrypoint reads); ``cluster``: the Ray cluster it heads."""
    opts: VllmOptions = service.options  # type: ignore[assignment]
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
    for path in opts.draft_paths:  # a draft model, at the path the speculative config names
        argv += ["-v", f"{path}:{path}:ro"]
    argv += ["-e", "HF_HUB_OFFLINE=1"]
    if service.api_key_file:
        argv += ["-v", f"{key_path(service)}:{CONTAINER_KEY}:ro", "-e", f"RIGKIT_API_KEY_FILE={CONTAINER_KEY}"]
    if cluster is not None:
        argv += ray.vllm_docker_args(cluster, cluster)
    for name, value in sorted(opts.env.items()):
        argv += ["-e", f"{name}={value}"]
    return argv + [image] + serve_args(service, cluster)


def render_unit(
    service: Service, image: str, gpus: int, cluster: Cluster | None = None, ready: list[str] | None = None
) -> str:
    """The hardened unit; with ``cluster`` (the Ray cluster it heads), ``ready`` is the
    readiness check's argv, run before every start (a boot included)."""
    opts: VllmOptions = service.options  # type: ignore[assignment]
    name = container_name(service)
    return templates.get_template("vllm.service.j2").render(
        service=service,
        image=image,
        exec_start=exec_line(command_line(service, image, gpus, cluster)),
        ray_unit=ray.node_unit_name(cluster) if cluster else None,
        ready=exec_line(ready) if ready else None,
        exec_remove=exec_line([DOCKER, "rm", "-f", name]),
        exec_stop=exec_line([DOCKER, "stop", "-t", str(opts.stop_timeout), name]),
        drop_page_cache=opts.drop_page_cache,
        start_timeout=opts.ready_timeout + 60 + (cluster.join_timeout if cluster else 0),
    )


def services_manifest(rig: Rig, images: dict[str, str]) -> str:
    """What the host tool reads: enabled vLLM services, their units, containers, images,
    ports, key files and models; ``ready_timeout`` sizes the readiness wait."""
    return (
        json.dumps(
            {
                "engine": "vllm",
                "services": [
                    {
                        "name": s.name,
                        "unit": s.unit,
                        "container": container_name(s),
                        "image": images[s.name],
                        "port": s.port,
                        "model": s.model,
                        "model_id": s.model_id,
                        "engine": s.engine,
                        "key_file": key_path(s) if s.api_key_file else None,
                        "ready_timeout": s.options.ready_timeout,  # type: ignore[attr-defined]
                        "mtp": s.options.mtp,  # type: ignore[attr-defined]
                    }
                    for s in rig.enabled_services
                    if s.engine == "vllm" and rig.serves(s)
                ],
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
