"""
Preflight of a DGX Spark (GB10, compute capability 12.1, aarch64, unified memory) before its
vLLM service: every problem found at once, before any host changes. DGX OS's driver is
never touched: a driver problem is reported, not fixed.
"""

from __future__ import annotations

import logging

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from rigkit.facts.vllm import SparkPreflight
from rigkit.hostdata import HubModel, Rig

logger = logging.getLogger("pyinfra")

IMAGE_GB = 40  # a vLLM CUDA image and its patched layer
GOOD_DRIVER_BRANCH = 580
# vLLM users report CUDA-graph capture deadlocks on GB10 with the 590 branch.
DEADLOCK_BRANCHES = {590}


def model_bytes(rig: Rig) -> int:
    """Bytes of the host's locked Hub models (what the disk must hold)."""
    total = 0
    for model in rig.models:
        if isinstance(model, HubModel) and model.ref.key in rig.locks:
            total += sum(f.size for f in rig.lock_for(model).files)
    return total


def problems(facts: dict, rig: Rig, user: str = "root") -> tuple[list[str], list[str]]:
    """(errors, warnings) of a Spark from :class:`SparkPreflight`'s facts."""
    errors: list[str] = []
    warnings: list[str] = []
    if not facts.get("dgx_release"):
        errors.append(
            f"DGX OS: /etc/dgx-release not found (OS {facts.get('os') or 'unknown'}); this deploy "
            "is for a DGX Spark as shipped"
        )
    if facts.get("arch") != "aarch64":
        errors.append(f"architecture: aarch64 expected, got {facts.get('arch') or 'unknown'}")
    gpu = facts.get("gpu", "")
    if not gpu:
        errors.append("GPU: nvidia-smi not found or no GPU listed (a GB10 expected; DGX OS ships the driver)")
    else:
        name, _, rest = (p.strip() for p in gpu.partition(","))
        cap, _, driver = (p.strip() for p in rest.partition(","))
        if "GB10" not in name:
            errors.append(f"GPU: a GB10 expected, got {name}")
        if cap != "12.1":
            errors.append(f"GPU: compute capability 12.1 expected, got {cap or 'unknown'}")
        branch = int(driver.split(".")[0]) if driver.split(".")[0].isdigit() else None
        if branch in DEADLOCK_BRANCHES:
            warnings.append(
                f"driver {driver}: vLLM users report CUDA-graph capture deadlocks on GB10 with the "
                f"{branch} branch; {GOOD_DRIVER_BRANCH}.x is known good (rigkit does not change "
                "DGX OS's driver)"
            )
        elif branch is None or branch < GOOD_DRIVER_BRANCH:
            errors.append(f"driver: branch {GOOD_DRIVER_BRANCH} or newer expected, got {driver or 'unknown'}")
    if not facts.get("docker"):
        errors.append("Docker: the docker command is not installed")
    else:
        if facts.get("docker_access") != "ok":
            errors.append(
                f"Docker: the deploy user ({user}) cannot use Docker (add it to the docker group, or deploy as root)"
            )
        elif "nvidia" not in facts.get("runtimes", "").split(","):
            errors.append(
                "Docker: no nvidia runtime (install nvidia-container-toolkit and run "
                "nvidia-ctk runtime configure --runtime=docker)"
            )
    need_models = model_bytes(rig) / 1e9
    for key, what, need in (
        ("disk_docker", "Docker's data root", IMAGE_GB),
        ("disk_models", "the model directory", need_models),
    ):
        free = facts.get(key)
        if free and free.isdigit() and int(free) < need:
            errors.append(f"disk: {need:.0f} GB free needed under {what}, {free} GB free")
    return errors, warnings


@deploy("DGX Spark preflight")
def preflight(rig: Rig):
    model_root = next((m.dest for m in rig.models), "/srv/models")
    facts = host.get_fact(SparkPreflight, model_root=model_root)
    errors, warnings = problems(facts, rig, user=host.data.get("ssh_user") or "root")
    for warning in warnings:
        logger.warning(f"host {rig.host}: {warning}")
    if errors:
        raise PyinfraError(
            f"host {rig.host}: not ready for the Spark deploy ({len(errors)} problem(s)); nothing "
            "was changed:\n  - " + "\n  - ".join(errors)
        )
