"""A real Ray cluster across two sandbox hosts (their own instance,
/var/lib/rigkit/sandbox-ray), deployed by deploys/ray_cluster.py with the unit command
lines rigkit renders. The sandbox hosts cannot run the vLLM container (no GPU, no registry)
nor reach PyPI, so Ray is installed on them from its wheel (cp311 manylinux, downloaded
once on this machine into /var/cache/rigkit/wheels/ray, uploaded and installed with
``pip install --no-index --find-links``) into the virtualenv the units run. No vLLM here:
the cluster, the worker's wait for the head, the head's readiness check, rejoining after a
kill and a no-op re-run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyinfra_run import run_pyinfra

from rigkit import sandbox
from rigkit.render import ray as render

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root for nspawn hosts")]
STATE = "/var/lib/rigkit/sandbox-ray"
RAY_VERSION = "2.40.0"
WHEELS = Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit")) / "wheels" / "ray"
CLUSTER = "e2e"
PORT = 6380
UNIT = f"rigkit-ray-{CLUSTER}.service"
INVENTORY = """
import json, os
from rigkit.sandbox import pyinfra_hosts
_extra = json.loads(os.environ["RIGKIT_RAY_E2E"])
hosts = [(name, {**d, **_extra[name]}) for name, d in pyinfra_hosts()]
"""
PY = "/opt/rigkit/ray/bin/python"


def ensure_wheelhouse() -> Path:
    if not list(WHEELS.glob(f"ray-{RAY_VERSION}-cp311-*manylinux*x86_64.whl")):
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"ray=={RAY_VERSION}", "--only-binary=:all:", "-d", str(WHEELS)],
            check=True,
        )
    return WHEELS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    wheels = ensure_wheelhouse()
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = STATE
    try:
        sb = sandbox.up(hosts=2)
        head, worker = sb.hosts
        nodes = [head.name, worker.name]
        extra = {
            h.name: {
                "gpus": {"count": 0},
                "cluster": {
                    "name": CLUSTER,
                    "nodes": nodes,
                    "interconnect": "host0",
                    "address": h.address,
                    "ray_port": PORT,
                    "join_timeout": 120,
                    "wheelhouse": str(wheels),
                    "ray_version": RAY_VERSION,
                },
            }
            for h in sb.hosts
        }
        inventory = tmp_path_factory.mktemp("ray") / "ray_inventory.py"
        inventory.write_text(INVENTORY)
        env = {"RIGKIT_RAY_E2E": json.dumps(extra)}
        first = run_pyinfra(str(inventory), "deploys/ray_cluster.py", env=env)
        assert first.returncode == 0, first.stderr[-5000:] + first.stdout[-3000:]
        yield sb, head, worker, str(inventory), env
    finally:
        sandbox.down()
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


def as_ray(sb, host, script: str, check: bool = True) -> subprocess.CompletedProcess:
    """A Python driver on ``host`` as the Ray user (whose /tmp/ray session it joins)."""
    cmd = f"cd /var/lib/rigkit-ray && runuser -u rigkit-ray -- env RAY_USAGE_STATS_ENABLED=0 {PY} -c {shlex.quote(script)}"
    proc = subprocess.run(
        [
            "ssh",
            "-i",
            sb.ssh_key,
            "-o",
            f"UserKnownHostsFile={sb.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"root@{host.address}",
            cmd,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ready(sb, head, worker, timeout: int) -> subprocess.CompletedProcess:
    argv = [
        "runuser",
        "-u",
        "rigkit-ray",
        "--",
        "env",
        "RAY_USAGE_STATS_ENABLED=0",
        PY,
        render.READY,
        "--address",
        f"{head.address}:{PORT}",
        "--timeout",
        str(timeout),
        "--gpus",
        "0",
        "--node",
        f"{head.name}={head.address}",
        "--node",
        f"{worker.name}={worker.address}",
    ]
    return subprocess.run(
        [
            "ssh",
            "-i",
            sb.ssh_key,
            "-o",
            f"UserKnownHostsFile={sb.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"root@{head.address}",
            "cd /var/lib/rigkit-ray && " + shlex.join(argv),
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )


NODES = """
import json, ray
ray.init(address="HEAD", logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"ip": n["NodeManagerAddress"], "alive": n["Alive"], "cpu": n["Resources"].get("CPU", 0)}
                  for n in ray.nodes()]))
"""

# A task that needs the worker's own node resource ("node:<its address>") runs there.
ON_WORKER = """
import ray, socket
ray.init(address="HEAD", logging_level="ERROR", log_to_driver=False)
@ray.remote(resources={"node:WORKER": 0.01})
def where():
    return socket.gethostname()
print(ray.get(where.remote(), timeout=120))
"""


def alive_nodes(sb, head) -> dict[str, float]:
    """Address -> CPUs of the nodes Ray reports alive."""
    out = as_ray(sb, head, NODES.replace("HEAD", f"{head.address}:{PORT}")).stdout.strip().splitlines()[-1]
    return {n["ip"]: n["cpu"] for n in json.loads(out) if n["alive"]}


def test_cluster_reports_both_nodes_with_cpus(cluster):
    sb, head, worker, _, _ = cluster
    out = json.loads(as_ray(sb, head, NODES.replace("HEAD", f"{head.address}:{PORT}")).stdout.strip().splitlines()[-1])
    alive = {n["ip"]: n["cpu"] for n in out if n["alive"]}
    assert set(alive) == {head.address, worker.address}, out
    assert all(cpu >= 1 for cpu in alive.values()), out
    units = sb.ssh(worker, f"systemctl cat {UNIT}")
    assert "NCCL_SOCKET_IFNAME=host0" in units and "RemoveIPC=no" in units
    assert f"--address {head.address}:{PORT}" in units


def test_task_pinned_to_worker_runs_there(cluster):
    sb, head, worker, _, _ = cluster
    out = as_ray(
        sb, head, ON_WORKER.replace("HEAD", f"{head.address}:{PORT}").replace("WORKER", worker.address)
    ).stdout.strip()
    assert out.splitlines()[-1] == sb.ssh(worker, "hostname")


def test_readiness_names_a_missing_worker(cluster):
    sb, head, worker, _, _ = cluster
    sb.ssh(worker, f"systemctl stop {UNIT}")
    try:
        # Ray marks the stopped node dead (its raylet says goodbye); only then is it missing.
        deadline = time.monotonic() + 60
        while worker.address in alive_nodes(sb, head):
            assert time.monotonic() < deadline, "Ray still reports the stopped worker alive"
            time.sleep(1)
        proc = ready(sb, head, worker, timeout=10)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"missing node(s): {worker.name} ({worker.address})" in proc.stderr
        assert head.name not in proc.stderr.split("missing node(s):")[1]
    finally:
        sb.ssh(worker, f"systemctl start {UNIT}")
    back = ready(sb, head, worker, timeout=120)
    assert back.returncode == 0, back.stderr[-3000:]


def test_killed_worker_rejoins(cluster):
    sb, head, worker, _, _ = cluster
    before = sb.ssh(worker, f"systemctl show -p NRestarts --value {UNIT}")
    sb.ssh(worker, f"systemctl kill {UNIT}")
    deadline = time.monotonic() + 60
    while sb.ssh(worker, f"systemctl show -p NRestarts --value {UNIT}") == before:
        assert time.monotonic() < deadline, "the killed worker was not restarted"
        time.sleep(1)
    proc = ready(sb, head, worker, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 nodes alive" in proc.stdout


def test_second_deploy_changes_nothing(cluster):
    _, _, _, inventory, env = cluster
    again = run_pyinfra(inventory, "deploys/ray_cluster.py", env=env)
    assert again.returncode == 0, again.stderr[-5000:]
    assert again.changed == {}, again.changed
