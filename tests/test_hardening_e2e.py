"""
Host data cannot become code, on a live sandbox host that is serving (sandbox-1 after the
shared first deploy): hostile inventories are refused before any change; systemd runs
exactly the argv rigkit meant (round trip through systemd's own parser, property-based);
the unit's exposure score; a unit that fails to start is rolled back with its key and build
while the old flags keep serving; no secret in units, ps, the journal or pyinfra's output.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutated_inventory import write_inventory
from pyinfra_run import run_pyinfra, ssh

from rigkit.render.systemd import exec_line

pytestmark = pytest.mark.e2e

UNIT = "rigkit-llama-tiny.service"
# What must not move when a deploy is refused: unit files, the running service (pid and start
# time), users, build links, rigkit's config, /root.
SNAPSHOT = (
    "cat /etc/systemd/system/rigkit-* | md5sum; "
    f"systemctl show -p MainPID,ExecMainStartTimestamp {UNIT}; getent passwd | md5sum; "
    "readlink /opt/rigkit/llama.cpp/current /opt/rigkit/llama.cpp/previous; "
    "find /etc/rigkit -type f | sort | xargs md5sum; ls -a /root | md5sum"
)

#: A vLLM service beside sandbox-1's llama.cpp one (refused before any host change: no image is built).
VLLM_SIDE = {"name": "side", "engine": "vllm", "model": "/srv/models/side", "port": 8001}

HOSTILE = {  # mutation of sandbox-1's service (or llama_cpp) -> the key the error names
    "newline ExecStartPre": (
        {"extra_args": ["--no-warmup", "\nExecStartPre=+/usr/bin/touch", "/root/pwned"]},
        "services[0].extra_args[1]",
    ),
    "alias User=root": ({"alias": "tiny\nUser=root\nX-a="}, "services[0].alias"),
    "host newline": ({"host": "0.0.0.0\nUser=root"}, "services[0].host"),
    "model newline": ({"model": "/srv/models/tiny-qwen/x.gguf\nUser=root"}, "services[0].model"),
    "name trailing newline": ({"name": "tiny\n"}, "services[0].name"),
    "key flag =": ({"extra_args": ["--api-key=sekrit"]}, "services[0].extra_args[0]"),
    "key file flag": ({"extra_args": ["--api-key-file", "/tmp/k"]}, "services[0].extra_args[0]"),
    "command substitution": ({"extra_args": ["$(touch /root/pwned)"]}, "services[0].extra_args[0]"),
    "dotdot model": ({"model": "/srv/models/../../root/x.gguf"}, "services[0].model"),
    "open without key": ({"host": "0.0.0.0", "allow_unauthenticated": False, "api_key_file": None}, "services[0].host"),
    "llama root newline": ({"@llama_cpp": {"root": "/opt/x\nUser=root"}}, "llama_cpp.root"),
    "ref trailing newline": ({"@llama_cpp": {"ref": "b11312\n"}}, "llama_cpp.ref"),
    "git url option": ({"@llama_cpp": {"git_url": "--upload-pack=touch /root/pwned"}}, "llama_cpp.git_url"),
    "cmake substitution": ({"@llama_cpp": {"cmake_flags": ["-DX=$(id)"]}}, "llama_cpp.cmake_flags[0]"),
    # Round two (issue 20): what the engine's own parser would have taken.
    "smuggled --host": ({"extra_args": ["--no-warmup", "--host", "127.0.0.2"]}, "services[0].extra_args[1]"),
    "smuggled --port=": ({"extra_args": ["--port=9999"]}, "services[0].extra_args[0]"),
    "key flag as a value": ({"extra_args": ["-b", "--api-key", "k"]}, "services[0].extra_args[1]"),
    "cmake project include": (
        {"@llama_cpp": {"cmake_flags": ["-DCMAKE_PROJECT_INCLUDE=/srv/models/tiny-qwen/x.cmake"]}},
        "llama_cpp.cmake_flags[0]",
    ),
    "system dest": ({"@models": [{"upload": "/tmp", "dest": "/etc"}]}, "models[1].dest"),
    "model under /var/run": ({"model": "/var/run/x.gguf"}, "services[0].model"),
    "http keyring": ({"@data": {"nvidia": {"repo_url": "http://mirror.lan/cuda/repos"}}}, "nvidia.repo_url"),
    # Issue 21: what the base image's vLLM version does not have.
    "parser the base lacks": (
        {"@services": [dict(VLLM_SIDE, base_image="vllm/vllm-openai:v0.19.1", reasoning_parser="deepseek_v4")]},
        "services[1].reasoning_parser",
    ),
    "patch without an edit for the base": (
        {"@services": [dict(VLLM_SIDE, base_image="vllm/vllm-openai:v0.21.0", patches=["inc-hybrid-fp8"])]},
        "services[1].patches[0]",
    ),
}


def test_hostile_inventories_change_nothing_on_a_serving_host(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    before = ssh(sb, host, SNAPSHOT)
    for label, (mutation, key) in HOSTILE.items():
        inv = write_inventory(tmp_path, mutation)
        run = run_pyinfra(str(inv), "deploys/rig.py", "--limit", "sandbox-1", env=env)
        output = run.stdout + run.stderr
        assert run.returncode != 0, label
        assert f"host sandbox-1: {key}: expected" in output, (label, output[-2000:])
        assert "Traceback" not in output, label
    assert ssh(sb, host, SNAPSHOT) == before
    assert ssh(sb, host, "test -e /root/pwned && echo yes || echo no") == "no"


def test_a_tampered_lock_changes_nothing_on_a_serving_host(sandbox_hosts, first_deploy, tmp_path):
    """A lock whose file path climbs out of the model's dest is refused when it is read, before
    any host changes (the root fetcher would have written it)."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    lock = tmp_path / "mutated.lock.yaml"
    entry = {
        "repo": "org/tiny",
        "revision": "main",
        "include": ["*.gguf"],
        "sha": "0" * 40,
        "files": [{"path": "../../../etc/cron.d/rigkit-pwned", "size": 10, "sha256": "0" * 64}],
    }
    lock.write_text(json.dumps({"version": 1, "models": {"org/tiny@main:*.gguf": entry}}))  # JSON is YAML
    mutation = {
        "@data": {"model_lock": str(lock)},
        "@models": [{"name": "evil", "repo": "org/tiny", "include": ["*.gguf"], "dest": "/srv/models/evil"}],
    }
    before = ssh(sb, host, SNAPSHOT)
    run = run_pyinfra(str(write_inventory(tmp_path, mutation)), "deploys/rig.py", "--limit", "sandbox-1", env=env)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output, output[-2000:]
    assert "host sandbox-1:" in output and "../../../etc/cron.d/rigkit-pwned" in output, output[-2000:]
    assert ssh(sb, host, SNAPSHOT) == before
    assert ssh(sb, host, "ls /etc/cron.d/rigkit-pwned /srv/models/evil 2>&1 | grep -c 'No such'") == "2"


WORD = st.text(st.characters(blacklist_categories=("Cc", "Cs"), max_codepoint=0x2FF), max_size=12)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(argvs=st.lists(st.lists(WORD, min_size=1, max_size=6), min_size=40, max_size=40))
def test_systemd_runs_exactly_the_argv_rigkit_meant(sandbox_hosts, argvs):
    """Round trip through systemd itself: one oneshot unit, one ExecStart= per argv (rendered
    by the one escaping function), each writing the argv it received as JSON."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[1]
    dump = "import json,sys; open(sys.argv[1],'w').write(json.dumps(sys.argv[2:]))"
    lines = [
        f"ExecStart={exec_line(['/usr/bin/python3', '-c', dump, f'/run/rt/{i}.json', *argv])}"
        for i, argv in enumerate(argvs)
    ]
    unit = "[Service]\nType=oneshot\nRuntimeDirectory=rt\nRuntimeDirectoryPreserve=yes\n" + "\n".join(lines) + "\n"
    sb.ssh(
        host,
        f"rm -rf /run/rt; cat > /etc/systemd/system/rigkit-roundtrip.service <<'RIGKIT_EOF'\n{unit}RIGKIT_EOF\n"
        "systemctl daemon-reload && systemctl start rigkit-roundtrip.service",
    )
    got = json.loads(
        ssh(
            sb,
            host,
            "python3 -c \"import json; print(json.dumps([json.load(open(f'/run/rt/{i}.json')) "
            f'for i in range({len(argvs)})]))"',
        )
    )
    assert got == argvs


def test_unit_exposure_is_at_most_3(sandbox_hosts, first_deploy):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    out = ssh(sb, host, f"systemd-analyze security --no-pager {UNIT} | tail -1")
    score = float(re.search(r"exposure level for \S+: (\d+\.\d+)", out).group(1))
    print(f"\n{UNIT}: {out}")
    assert score <= 3.0, out


def test_a_unit_that_fails_to_start_is_rolled_back_with_the_old_flags_serving(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    unit_before = ssh(sb, host, f"md5sum /etc/systemd/system/{UNIT}")
    # A real option whose value llama-server refuses while parsing argv: it exits at start.
    bad = "/nonexistent/rigkit-test-template.jinja"
    inv = write_inventory(tmp_path, {"extra_args": ["--no-warmup", "--chat-template-file", bad]})
    run = run_pyinfra(str(inv), "deploys/rig.py", "--limit", "sandbox-1", env=env)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "rolled back" in output, output[-3000:]
    assert "did not stay up" in output
    assert ssh(sb, host, f"md5sum /etc/systemd/system/{UNIT}") == unit_before
    assert ssh(sb, host, f"systemctl is-active {UNIT}") == "active"
    assert bad not in ssh(sb, host, f"systemctl show -p ExecStart --value {UNIT}")
    # The next deploy of the good inventory has nothing to put back.
    again = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", env=first_deploy[1])
    assert again.returncode == 0, again.stderr[-3000:]


def test_no_secret_in_units_processes_journal_or_output(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    secret = "rk-" + secrets.token_hex(16)
    key_file = tmp_path / "verbose.key"
    key_file.write_text(secret + "\n")
    derived = [
        secret,
        hashlib.sha1((secret + "\n").encode()).hexdigest(),
        hashlib.sha256((secret + "\n").encode()).hexdigest(),
        hashlib.md5((secret + "\n").encode()).hexdigest(),
    ]
    env = {"RIGKIT_SANDBOX_API_KEY_FILE": str(key_file)}
    rotated = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", "-vvv", env=env)
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    assert "Serve llama.cpp | API key of tiny (0400, llama-tiny only)" in rotated.changed
    noop = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", "--debug", env=env)
    assert noop.returncode == 0 and noop.changed == {}, noop.changed
    on_host = ssh(sb, host, "cat /etc/systemd/system/rigkit-*; ps -eo args; journalctl --no-pager -o cat")
    for value in derived:
        for where, text in (
            ("-vvv", rotated.stdout + rotated.stderr),
            ("--debug", noop.stdout + noop.stderr),
            ("host", on_host),
        ):
            assert value not in text, f"{value[:6]}... in {where}"
    # Back to the suite's key, so later tests find the service as the first deploy left it.
    back = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", env=first_deploy[1])
    assert back.returncode == 0, back.stderr[-3000:]
