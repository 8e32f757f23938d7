"""
deploys/rig.py on real sandbox hosts, CPU-only: llama.cpp built from the local git mirror
(a stand-in for GitHub: the real llama.cpp source from PyPI's llama-cpp-python sdist, tagged
with its real build number), a tiny generated 2-shard model (a stand-in for a Hub model),
a verified llama-server unit.
"""

from __future__ import annotations

import json
import re
import secrets
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyinfra_run import REPO, dry_run_seed_rig, run_pyinfra, ssh

pytestmark = pytest.mark.e2e


def chat(address: str, key: str | None, body: dict) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"http://{address}:8000/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_rig_deploy_serves_verified_model(sandbox_hosts, first_deploy, api_key):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    run, _ = first_deploy
    assert "Serve llama.cpp | Verify services (health, chat, tool-call replay)" in run.changed

    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny.service") == "active"
    assert ssh(sb, host, "systemctl is-enabled rigkit-llama-tiny.service") == "enabled"
    version = ssh(sb, host, "/opt/rigkit/llama.cpp/current/bin/llama-server --version 2>&1")
    # b11312 prints "version: 0.5.0-dev (build 11312, commit ...)", older builds "version: N (sha)".
    assert re.search(r"version: (11312 \(|.*\(build 11312,)", version), version
    build = json.loads(ssh(sb, host, "cat /opt/rigkit/llama.cpp/current/build.json"))
    assert build["build"] == 11312 and build["ref"] == "b11312" and build["verified_at"]

    # From the build machine, with and without the key.
    status, body = chat(host.address, api_key[0], {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert status == 200 and body["choices"]
    assert chat(host.address, None, {"messages": [{"role": "user", "content": "x"}]})[0] == 401
    # The seed-001 crash: a replayed tool call whose arguments are a JSON string.
    status, _ = chat(
        host.address,
        api_key[0],
        {
            "max_tokens": 4,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "user", "content": "call f"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
        },
    )
    assert status == 200
    metrics = urllib.request.urlopen(
        urllib.request.Request(
            f"http://{host.address}:8000/metrics", headers={"Authorization": f"Bearer {api_key[0]}"}
        ),
        timeout=10,
    ).read()
    assert b"llamacpp:" in metrics

    opencode = json.loads(ssh(sb, host, "cat /etc/rigkit/opencode.json"))
    entry = opencode["provider"]["llama-cpp-tiny"]
    assert entry["models"]["tiny-qwen"]["contextLength"] == 2048


def test_service_runs_as_its_own_user_and_the_key_stays_secret(sandbox_hosts, first_deploy, api_key):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    run, _ = first_deploy
    assert ssh(sb, host, "ps -o user= -C llama-server") == "llama-tiny"
    assert ssh(sb, host, "stat -c '%a %U' /etc/rigkit/llama/tiny.key") == "400 llama-tiny"
    secret = api_key[0]
    places = {
        "unit": ssh(sb, host, "systemctl cat rigkit-llama-tiny.service"),
        "ps": ssh(sb, host, "ps -eo args"),
        "journal": ssh(sb, host, "journalctl --no-pager -o cat"),
        "pyinfra stdout": run.stdout,
        "pyinfra stderr": run.stderr,
    }
    assert "--api-key-file /etc/rigkit/llama/tiny.key" in places["ps"]
    for where, text in places.items():
        assert secret not in text, f"the API key leaked into {where}"


def test_second_run_changes_nothing_and_restarts_nothing(sandbox_hosts, first_deploy):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    _, env = first_deploy
    pid = ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny")
    since = ssh(sb, host, "systemctl show -p ActiveEnterTimestampMonotonic --value rigkit-llama-tiny")
    again = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.changed == {}, f"second run changed: {again.changed}"
    assert again.results["totals"]["success"] == 0
    assert ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny") == pid
    assert ssh(sb, host, "systemctl show -p ActiveEnterTimestampMonotonic --value rigkit-llama-tiny") == since
    # The llama.cpp-only deploy (README: bump the ref and run it) plans the same: nothing.
    only = run_pyinfra("inventories/sandbox.py", "deploys/llama_cpp.py", "--limit", "sandbox-1", env=env)
    assert only.returncode == 0, only.stderr[-3000:]
    assert only.changed == {}, f"deploys/llama_cpp.py changed: {only.changed}"
    assert ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny") == pid


def test_second_host_builds_from_the_shared_ccache(sandbox_hosts, first_deploy):
    """Both hosts in one run: sandbox-1 is a no-op, sandbox-2 builds (ccache hits) and serves."""
    sb = sandbox_hosts
    _, env = first_deploy
    both = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", env=env)
    assert both.returncode == 0, both.stderr[-5000:]
    build_op = "Build llama.cpp | Build llama.cpp b11312"
    assert both.changed[build_op] == ["sandbox-2"]
    assert ssh(sb, sb.hosts[1], "systemctl is-active rigkit-llama-tiny.service") == "active"


BAD_INPUTS = {
    "unknown key": ("services[0]['ctx_size'] = 4096", "services[0].ctx_size: expected one of the known keys"),
    "tensor split length": (
        "services[0]['tensor_split'] = [1, 1]; data['gpus'] = {'count': 1}",
        "services[0].tensor_split: expected 1 values",
    ),
    "port clash": (
        "services.append({**services[0], 'name': 'twin'})",
        "services[1].port: expected a port no other enabled service uses",
    ),
    "not the first shard": (
        "services[0]['model'] = '/srv/models/tiny-qwen/tiny-qwen-00002-of-00002.gguf'",
        "services[0].model: expected the first shard",
    ),
    "moving ref": (
        "data['llama_cpp'] = {**data['llama_cpp'], 'ref': 'master'}",
        "llama_cpp.ref: expected a pinned build tag",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_any_host_changes(sandbox_hosts, tmp_path, case):
    mutation, message = BAD_INPUTS[case]
    inventory = tmp_path / "bad.py"
    inventory.write_text(
        textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("sandbox_inv", {str(REPO / "inventories/sandbox.py")!r})
        inv = importlib.util.module_from_spec(spec); spec.loader.exec_module(inv)
        hosts = []
        for name, data in inv.sandbox:
            data = dict(data)
            services = data["services"] = [dict(s) for s in data["services"]]
            if name == "sandbox-2":
                {mutation}
            hosts.append((name, data))
        sandbox = hosts
    """)
    )
    sb = sandbox_hosts
    marker = "stat -c %Y /etc/hostname; ls /etc/systemd/system | sort | md5sum"
    before = [ssh(sb, h, marker) for h in sb.hosts]
    run = run_pyinfra(str(inventory), "deploys/rig.py")
    assert run.returncode != 0
    assert f"host sandbox-2: {message}" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    # Nothing ran on either host, the valid one included.
    assert run.results is None or run.results["totals"]["success"] == 0
    assert [ssh(sb, h, marker) for h in sb.hosts] == before


def test_seed_inventory_dry_run_prints_a_plan(sandbox_hosts, tmp_path):
    """inventories/rig.py (the seeds' 6x3090 rig) planned against a sandbox host, --dry; its
    models locked against a stand-in Hub (the real one cannot be reached from here)."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[1]
    marker = "ls /etc/systemd/system /srv 2>&1 | sort | md5sum"
    before = ssh(sb, host, marker)
    run = dry_run_seed_rig(sb, host, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    plan = {op["name"] for op in json.loads(run.stdout)["plan"]}
    for name in (
        "Build llama.cpp | Build llama.cpp b8137",
        # One router service holds both seed models.
        "Serve llama.cpp | Unit rigkit-llama-qwen.service",
        "Serve llama.cpp | Model preset of qwen",
        "Serve llama.cpp | Switch llama.cpp to b8137",
        "Serve llama.cpp | Enable rigkit-llama-qwen.service",
    ):
        assert name in plan, name
    assert not any("qwen122b.service" in name or "qwen397b.service" in name for name in plan), plan
    for model in ("qwen122b-q6", "qwen397b-tq1"):
        assert any(name.startswith(f"Models | Model {model} (unsloth/") for name in plan), plan
    assert ssh(sb, host, marker) == before


KEY_CHANGED = {
    "Serve llama.cpp | API key of tiny (0400, llama-tiny only)",
    "Serve llama.cpp | Restart rigkit-llama-tiny.service",
    "Serve llama.cpp | Verify services (health, chat, tool-call replay)",
}
CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


def rotate_key(sb, host, key_file):
    """Deploy sandbox-1 with a new API key in ``key_file``: (the run, the new key, the old pid)."""
    secret = "rk-" + secrets.token_hex(16)
    key_file.write_text(secret + "\n")
    pid = ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny")
    run = run_pyinfra(
        "inventories/sandbox.py",
        "deploys/rig.py",
        "--limit",
        "sandbox-1",
        env={"RIGKIT_SANDBOX_API_KEY_FILE": str(key_file)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run, secret, pid


def test_a_changed_key_restarts_the_service_and_verifies(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    old_key = first_deploy[1]["RIGKIT_SANDBOX_API_KEY_FILE"]
    run, new_secret, pid = rotate_key(sb, host, tmp_path / "rotated.key")
    assert set(run.changed) == KEY_CHANGED, run.changed
    assert ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny") != pid
    assert chat(host.address, new_secret, CHAT)[0] == 200
    assert chat(host.address, Path(old_key).read_text().strip(), CHAT)[0] == 401
    assert new_secret not in run.stdout + run.stderr


def test_enabling_a_running_service_does_not_stand_in_for_its_restart(sandbox_hosts, first_deploy, tmp_path):
    """The unit was disabled by hand but still runs: the run enables it again, and a changed
    key must still restart it (enabling is not starting)."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    ssh(sb, host, "systemctl disable rigkit-llama-tiny")
    run, new_secret, pid = rotate_key(sb, host, tmp_path / "again.key")
    assert set(run.changed) == KEY_CHANGED | {"Serve llama.cpp | Enable rigkit-llama-tiny.service"}, run.changed
    assert ssh(sb, host, "systemctl is-enabled rigkit-llama-tiny") == "enabled"
    assert ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny") != pid
    assert chat(host.address, new_secret, CHAT)[0] == 200


def test_rigkit_status_reports_build_services_and_models(sandbox_hosts, first_deploy):
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "rigkit.cli", "status", "inventories/sandbox.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = run.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("sandbox-1: "))
    assert "llama.cpp b11312 (" in lines[first] and "verified 20" in lines[first]
    service = lines[first + 1].split()
    assert service[:4] == ["tiny", ":8000", "active", "healthy"]
    assert "model present" in lines[first + 1]
