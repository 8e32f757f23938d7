"""
What rigkit renders for a vLLM service: the image's identity (tag = hash of the Dockerfile,
the helper package, the chosen patches and the base reference), the ``docker run`` argv with
the ``vllm serve`` flags, the hardened unit and the verifier's manifest. Pure functions of the
host data, tested without a host.
"""

from __future__ import annotations

import json
from pathlib import Path

from rigkit import host_paths
from rigkit.hostdata import Rig, Service
from rigkit.hostdata.cluster import Cluster
from rigkit.hostdata.vllm import IMAGE_SOURCE, VllmOptions, available_patches, options_of
from rigkit.render import containers, ray
from rigkit.render.containers import ImageIdentity

MANIFEST = host_paths.manifest_path("vllm")
CONTEXT_ROOT = host_paths.image_context_dir("vllm")
IMAGE_REPO = "rigkit/vllm"
#: What vllm_host.py build adds beyond the context (in the tag: an image built before it
#: changed is built again): the base image's ID as a label, which a cluster's nodes compare.
BUILD_SCHEME = "build 2: org.rigkit.vllm.base-id"


def image_identity(opts: VllmOptions, source: Path = IMAGE_SOURCE) -> ImageIdentity:
    """The image of a vLLM service: its base, rigkit's helper package and the chosen patches
    (``patches/<NN>-<name>/``), hashed with the patch list into the tag."""
    known = (
        available_patches()
        if source == IMAGE_SOURCE
        else {
            d.name.split("-", 1)[1]: d for d in sorted((source / "patches").iterdir()) if (d / "patch.json").is_file()
        }
    )
    files: list[tuple[str, Path]] = [("Dockerfile", source / "Dockerfile")]
    files += [(f"rigkit_vllm_patches/{p.name}", p) for p in sorted((source / "rigkit_vllm_patches").glob("*.py"))]
    for name in opts.patches:
        d = known[name]
        files += [(f"patches/{d.name}/{p.name}", p) for p in sorted(d.iterdir()) if p.is_file()]
    return ImageIdentity.of(
        IMAGE_REPO,
        opts.base_image,
        files,
        scheme=BUILD_SCHEME,
        build_args=[("PATCHES", ",".join(opts.patches))],
        context_root=CONTEXT_ROOT,
        dirs=["patches"],  # the Dockerfile copies patches/, whichever are chosen, none included
    )


def patches_of(identity: ImageIdentity) -> tuple[str, ...]:
    """The patches an image of :func:`image_identity` applies."""
    patches = dict(identity.build_args).get("PATCHES", "")
    return tuple(p for p in patches.split(",") if p)


def key_path(service: Service) -> str:
    return service.names.key_file


def container_name(service: Service) -> str:
    return service.names.container


def serve_args(service: Service, cluster: Cluster | None = None) -> list[str]:
    """``vllm serve`` arguments (after the image's entrypoint): the model, then the flags
    (with Ray as the executor across the ``cluster`` it heads)."""
    opts = options_of(service)
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
    """The ``docker run`` argv of a service's container (rigkit.render.containers: no secret in
    it); ``cluster``: the Ray cluster it heads."""
    opts = options_of(service)
    return containers.docker_run(
        service,
        container=container_name(service),
        image=image,
        command=serve_args(service, cluster),
        gpus=gpus,
        stop_timeout=opts.stop_timeout,
        key_file=key_path(service),
        mounts=opts.draft_paths,
        env=opts.env,
        docker_args=ray.vllm_docker_args(cluster, cluster) if cluster is not None else (),
    )


def render_unit(
    service: Service, image: str, gpus: int, cluster: Cluster | None = None, ready: list[str] | None = None
) -> str:
    """The hardened unit; with ``cluster`` (the Ray cluster it heads), ``ready`` is the
    readiness check's argv, run before every start (a boot included)."""
    opts = options_of(service)
    return containers.render_unit(
        service,
        title="vLLM",
        image=image,
        run=command_line(service, image, gpus, cluster),
        container=container_name(service),
        stop_timeout=opts.stop_timeout,
        start_timeout=opts.ready_timeout + 60 + (cluster.join_timeout if cluster else 0),
        ray_unit=ray.node_unit_name(cluster) if cluster else None,
        ready=ready,
        drop_page_cache=opts.drop_page_cache,
    )


def services_manifest(rig: Rig, images: dict[str, str]) -> str:
    """What the host tool reads: enabled vLLM services, their units, containers, images,
    ports, key files and models; ``ready_timeout`` sizes the readiness wait."""
    return containers.services_manifest(
        rig,
        "vllm",
        "vLLM",
        images,
        lambda s: {"ready_timeout": options_of(s).ready_timeout, "mtp": options_of(s).mtp},
    )
