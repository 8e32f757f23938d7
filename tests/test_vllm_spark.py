"""DGX Spark preflight from recorded facts: a sandbox-like host (no GPU, no Docker) gets every
missing piece listed at once; a good Spark passes; the 590 driver branch warns."""

from __future__ import annotations

import runpy
from pathlib import Path

from rigkit import spark
from rigkit.hostdata import parse_rig

REPO = Path(__file__).resolve().parents[1]


def rig():
    name, data = runpy.run_path(str(REPO / "inventories/spark.py"))["spark"][0]
    return parse_rig(name, {k: data[k] for k in ("gpus", "services", "models")})


def test_bare_debian_host_lists_everything_missing():
    facts = {"os": "debian-12", "dgx": "", "arch": "x86_64", "disk_docker": "50", "disk_models": "50"}
    errors, warnings = spark.problems(facts, rig())
    assert (
        errors
        == [
            "DGX OS: /etc/dgx-release not found (OS debian-12); this deploy is for a DGX Spark as shipped",
            "architecture: aarch64 expected, got x86_64",
            "GPU: nvidia-smi not found or no GPU listed (a GB10 expected; DGX OS ships the driver)",
            "Docker: the docker command is not installed",
        ]
        and warnings == []
    )


def test_good_spark_and_driver_branches():
    good = {
        "os": "ubuntu-24.04",
        "dgx_release": "1",
        "arch": "aarch64",
        "gpu": "NVIDIA GB10, 12.1, 580.95.05",
        "docker": "1",
        "docker_access": "ok",
        "runtimes": "io.containerd.runc.v2,nvidia,runc,",
        "disk_docker": "3000",
        "disk_models": "3000",
    }
    assert spark.problems(good, rig()) == ([], [])
    errors, warnings = spark.problems(dict(good, gpu="NVIDIA GB10, 12.1, 590.44.01"), rig())
    assert errors == [] and "CUDA-graph capture deadlocks" in warnings[0]
    errors, _ = spark.problems(
        dict(
            good, runtimes="runc,", docker_access="ok", disk_docker="10", gpu="NVIDIA H100 80GB HBM3, 9.0, 580.159.04"
        ),
        rig(),
        user="ubuntu",
    )
    assert errors == [
        "GPU: a GB10 expected, got NVIDIA H100 80GB HBM3",
        "GPU: compute capability 12.1 expected, got 9.0",
        "Docker: no nvidia runtime (install nvidia-container-toolkit and run nvidia-ctk runtime "
        "configure --runtime=docker)",
        "disk: 40 GB free needed under Docker's data root, 10 GB free",
    ]
    errors, _ = spark.problems(dict(good, docker_access=""), rig(), user="ubuntu")
    assert errors == [
        "Docker: the deploy user (ubuntu) cannot use Docker (add it to the docker group, or deploy as root)"
    ]
