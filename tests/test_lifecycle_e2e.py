"""
A host's life on sandbox-1 after the shared first deploy: a renamed service and a dropped
key converge; two deploys at once take turns through the host lock; a hung server (SIGSTOP)
is restarted by its watchdog; `rigkit status` exit codes for healthy, unhealthy, drifted,
invalid and unreachable. Each test leaves the host serving as the first deploy left it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest
from mutated_inventory import write_inventory
from pyinfra_run import REPO, run_pyinfra, ssh

pytestmark = pytest.mark.e2e


def deploy(first_deploy, tmp_path, mutation: dict | None = None, *extra: str, env: dict | None = None):
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path), **(env or {}))
    inv = write_inventory(tmp_path, mutation) if mutation is not None else "inventories/sandbox.py"
    return run_pyinfra(str(inv), "deploys/rig.py", "--limit", "sandbox-1", *extra, env=env)


def test_renamed_service_and_dropped_key_converge(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    plan = deploy(first_deploy, tmp_path, {"name": "tiny2"}, "--dry")
    assert "Serve llama.cpp | Remove rigkit-llama-tiny.service (no longer in the inventory)" in {
        op["name"] for op in __import__("json").loads(plan.stdout)["plan"]
    }
    run = deploy(first_deploy, tmp_path, {"name": "tiny2"})
    assert run.returncode == 0, run.stderr[-3000:]
    units = ssh(sb, host, "ls /etc/systemd/system | grep rigkit- | sort").split()
    assert "rigkit-llama-tiny.service" not in units and "rigkit-llama-tiny2.service" in units
    assert "rigkit-watchdog-tiny.timer" not in units
    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny2") == "active"
    assert ssh(sb, host, "id llama-tiny >/dev/null 2>&1 && echo yes || echo no") == "no"
    assert ssh(sb, host, "ls /etc/rigkit/llama").split() == ["services.json", "tiny2.key", "tiny2.key.version"]
    # Back to the suite's service, then without a key: the key file goes.
    no_key = deploy(
        first_deploy,
        tmp_path,
        {"api_key_file": None, "allow_unauthenticated": True},
        env={"RIGKIT_SANDBOX_API_KEY_FILE": ""},
    )
    assert no_key.returncode == 0, no_key.stderr[-3000:]
    assert ssh(sb, host, "ls /etc/rigkit/llama").split() == ["services.json"]
    assert "rigkit-llama-tiny2.service" not in ssh(sb, host, "ls /etc/systemd/system")
    back = deploy(first_deploy, tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]
    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny") == "active"


def test_two_deploys_at_once_take_turns(sandbox_hosts, first_deploy, tmp_path):
    """Both need a build (new flags): one builds, the other waits for the host lock and finds
    it built; the host ends consistent and serving."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    mutation = {"@llama_cpp": {"cmake_flags": ["-DLLAMA_BUILD_EXAMPLES=OFF"]}}
    runs = []
    threads = [threading.Thread(target=lambda: runs.append(deploy(first_deploy, tmp_path, mutation))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(1)
    for t in threads:
        t.join()
    for run in runs:
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-3000:]
        assert "Traceback" not in output
    # One built; the other waited for the host lock and found it built (or planned no build).
    history = ssh(sb, host, "cat /opt/rigkit/llama.cpp/builds.log").splitlines()
    key = ssh(sb, host, "readlink /opt/rigkit/llama.cpp/current").split("/")[-1]
    assert len([line for line in history if f" {key} built in " in line]) == 1, history
    assert not ssh(sb, host, "ls -a /opt/rigkit/llama.cpp/builds | grep -e partial -e failed || true")
    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny") == "active"
    back = deploy(first_deploy, tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]


def test_watchdog_restarts_a_hung_server(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    fast = deploy(first_deploy, tmp_path, {"watchdog_interval": 5, "watchdog_failures": 2})
    assert fast.returncode == 0, fast.stderr[-3000:]
    assert set(fast.changed) <= {
        "Serve llama.cpp | Watchdog rigkit-watchdog-tiny.service",
        "Serve llama.cpp | Watchdog timer of tiny",
        "Serve llama.cpp | Reload systemd units",
        "Serve llama.cpp | Start the watchdog of tiny",
    }, fast.changed  # no service restart
    pid = ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny")
    ssh(sb, host, f"kill -STOP {pid}")  # alive, port open, never answers
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny")
        if now not in (pid, "0"):
            break
        time.sleep(2)
    assert now not in (pid, "0"), "the watchdog did not restart the hung server in 90 s"
    journal = ssh(sb, host, "journalctl -u rigkit-watchdog-tiny --no-pager -o cat")
    assert "restarting rigkit-llama-tiny.service after 2 failed probes" in journal
    status = subprocess.run(
        [sys.executable, "-m", "rigkit.cli", "status", "--json", "inventories/sandbox.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(__import__("os").environ, **first_deploy[1]),
    )
    dog = __import__("json").loads(status.stdout)["sandbox-1"]["services"][0]["watchdog"]
    assert dog["timer"] == "active" and dog["restarts"] >= 1
    back = deploy(first_deploy, tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]


def status(inventory: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rigkit.cli", "status", inventory],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(__import__("os").environ, **env),
    )


def test_status_exit_codes(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    limit = {"@hosts": ["sandbox-1"]}
    healthy = status(str(write_inventory(tmp_path, limit, "same")), env)
    assert healthy.returncode == 0 and "DRIFT" not in healthy.stdout, healthy.stdout + healthy.stderr
    drifted = status(str(write_inventory(tmp_path, {**limit, "@llama_cpp": {"ref": "b9976"}}, "drifted")), env)
    assert drifted.returncode == 1 and "pinned b9976" in drifted.stdout, drifted.stdout
    invalid = status(str(write_inventory(tmp_path, {**limit, "@llama_cpp": {"ref": "master"}}, "invalid")), env)
    assert invalid.returncode == 2 and "llama_cpp.ref: expected" in invalid.stderr, invalid.stderr
    unreachable = tmp_path / "gone.py"
    unreachable.write_text(
        "gone = [('127.0.0.1', {'ssh_port': 9, 'ssh_connect_retries': 0, 'ssh_timeout': 2, "
        "'llama_cpp': {'ref': 'b11312', 'cuda': False}})]\n"
    )
    assert status(str(unreachable), env).returncode == 3
    ssh(sb, host, "systemctl stop rigkit-watchdog-tiny.timer rigkit-llama-tiny")
    try:
        down = status(str(write_inventory(tmp_path, limit, "same")), env)
        assert down.returncode == 1 and "tiny: inactive, not healthy" in down.stdout, down.stdout
    finally:
        ssh(sb, host, "systemctl start rigkit-llama-tiny rigkit-watchdog-tiny.timer")


def test_noop_run_does_not_rehash_a_large_uploaded_model(sandbox_hosts, first_deploy, tmp_path):
    """300 MB uploaded once; the next run decides from size and mtime alone. Proof that it
    hashes nothing: the host's copy is overwritten with other bytes of the same size and
    mtime, and the no-op run does not notice (only --reverify would)."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "weights.bin", "wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    mutation = {"@models": [{"upload": str(big), "dest": "/srv/models/big"}]}
    first = deploy(first_deploy, tmp_path, mutation)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Models | Model files of big in /srv/models/big" in first.changed
    local = hashlib.sha256((big / "weights.bin").read_bytes()).hexdigest()
    assert ssh(sb, host, "sha256sum /srv/models/big/weights.bin").split()[0] == local
    ssh(
        sb,
        host,
        "f=/srv/models/big/weights.bin; t=$(stat -c %y $f); "
        'dd if=/dev/zero of=$f bs=1M count=1 conv=notrunc status=none; touch -d "$t" $f',
    )
    again = deploy(first_deploy, tmp_path, mutation)
    assert again.returncode == 0 and again.changed == {}, again.changed
    ssh(sb, host, "rm -rf /srv/models/big")
    back = deploy(first_deploy, tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]
