"""deploys/spark.py's preflight against a sandbox host (Debian, x86_64, no GPU, no Docker):
it lists exactly what is missing, all at once, and changes nothing."""

from __future__ import annotations

import json
import os
import runpy

import pytest
from pyinfra_run import REPO, run_pyinfra

from rigkit import sandbox
from rigkit.spark import IMAGE_GB

pytestmark = pytest.mark.e2e
STATE = "/var/lib/rigkit/sandbox-vllm"
INVENTORY = """
import json, os
from rigkit.sandbox import pyinfra_hosts
_data = json.loads(os.environ["RIGKIT_SPARK_E2E"])
hosts = [(name, {**d, **_data}) for name, d in pyinfra_hosts()]
"""


@pytest.fixture(scope="module")
def bare_host():
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = STATE
    try:
        yield sandbox.up(hosts=1, sources=False)
    finally:
        sandbox.down()
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


def test_preflight_lists_everything_missing_and_changes_nothing(bare_host, tmp_path):
    _, data = runpy.run_path(str(REPO / "inventories/spark.py"))["spark"][0]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    service = dict(data["services"][0], model="/srv/models/qwen122b-int4-autoround")
    host_data = {
        "gpus": data["gpus"],
        "services": [service],
        "models": [{"upload": str(model), "dest": "/srv/models/qwen122b-int4-autoround"}],
    }
    (tmp_path / "inventory.py").write_text(INVENTORY)
    before = bare_host.ssh(bare_host.hosts[0], "ls /etc/systemd/system /srv 2>&1; getent passwd | wc -l")
    # The sandbox's root lives on this machine's disk, so whether it has an image's worth free
    # depends on the machine: read it the way the preflight does and expect the line only then.
    free_gb = int(bare_host.ssh(bare_host.hosts[0], "df -P -B1G /var/lib | awk 'NR==2{print $4}'").strip())
    expected = [
        "DGX OS: /etc/dgx-release not found (OS debian-12); this deploy is for a DGX Spark as shipped",
        "architecture: aarch64 expected, got x86_64",
        "GPU: nvidia-smi not found or no GPU listed (a GB10 expected; DGX OS ships the driver)",
        "Docker: the docker command is not installed",
    ]
    if free_gb < IMAGE_GB:
        expected.append(f"disk: {IMAGE_GB} GB free needed under Docker's data root, {free_gb} GB free")
    run = run_pyinfra(
        str(tmp_path / "inventory.py"),
        "deploys/spark.py",
        env={"RIGKIT_SPARK_E2E": json.dumps(host_data), "RIGKIT_SANDBOX_DIR": STATE},
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert (
        f"host sandbox-1: not ready for the Spark deploy ({len(expected)} problem(s)); nothing was changed:\n"
        + "".join(f"  - {line}\n" for line in expected)
    ) in out, out[-3000:]
    assert bare_host.ssh(bare_host.hosts[0], "ls /etc/systemd/system /srv 2>&1; getent passwd | wc -l") == before
