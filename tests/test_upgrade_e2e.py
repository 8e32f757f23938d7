"""
Rebuilding at a new llama.cpp build while serving (issue 5), on a real sandbox host.

The local git mirror (the stand-in for GitHub) holds two real llama.cpp versions with their
real build numbers, b9976 and b11312, plus commits these tests add on top of b11312: one that
does not compile and one that compiles but whose server exits at start.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyinfra_run import run_pyinfra, ssh

from rigkit import sandbox
from rigkit.sandbox import offline
from rigkit.sandbox.health import HealthPoller

pytestmark = pytest.mark.e2e

HOST = "sandbox-2"


def mirror() -> Path:
    return sandbox.cache_dir() / "mirrors" / "llama.cpp.git"


def deploy(ref: str, deploy_file: str = "deploys/rig.py"):
    return run_pyinfra("inventories/sandbox.py", deploy_file, "--limit", HOST, env={"RIGKIT_LLAMA_REF": ref})


def current(sb, host) -> dict:
    return json.loads(ssh(sb, host, "cat /opt/rigkit/llama.cpp/current/build.json"))


def serving(sb, host) -> tuple[str, str]:
    return (
        ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny"),
        ssh(sb, host, "systemctl is-active rigkit-llama-tiny"),
    )


@pytest.fixture(scope="module")
def host(sandbox_hosts):
    host = next(h for h in sandbox_hosts.hosts if h.name == HOST)
    start = deploy("b9976")
    assert start.returncode == 0, start.stderr[-5000:]
    assert current(sandbox_hosts, host)["build"] == 9976
    # Earlier tests may have built b11312 here: forget it, so the upgrade really builds.
    ssh(sandbox_hosts, host, "rm -rf /opt/rigkit/llama.cpp/builds/b11312-* /opt/rigkit/llama.cpp/previous")
    return host


def test_upgrade_while_serving_then_noop(sandbox_hosts, host):
    sb = sandbox_hosts
    with HealthPoller(f"http://{host.address}:8000/health") as poller:
        upgrade = deploy("b11312")
    assert upgrade.returncode == 0, upgrade.stderr[-5000:]
    assert "Build llama.cpp | Build llama.cpp b11312" in upgrade.changed  # built while b9976 served
    info = current(sb, host)
    assert info["build"] == 11312 and info["verified_at"]
    version = ssh(sb, host, "/opt/rigkit/llama.cpp/current/bin/llama-server --version 2>&1")
    assert re.search(r"version: (11312 \(|.*\(build 11312,)", version), version
    assert json.loads(ssh(sb, host, "cat /opt/rigkit/llama.cpp/previous/build.json"))["build"] == 9976
    # The old build kept serving while the new one compiled: most polls answered 200.
    assert poller.healthy_fraction > 0.5, f"only {poller.healthy_fraction:.0%} of polls were healthy"
    assert poller.samples[-1][1], "serving at the end"
    print(
        f"\nupgrade b9976 -> b11312: longest /health outage {poller.longest_outage():.2f}s "
        f"over {len(poller.samples)} polls"
    )

    third = deploy("b11312")
    assert third.returncode == 0 and third.changed == {}, third.changed


def test_explicit_rollback_and_forward_again(sandbox_hosts, host):
    sb = sandbox_hosts
    back = deploy("b11312", "deploys/rollback.py")
    assert back.returncode == 0, back.stderr[-5000:]
    assert current(sb, host)["build"] == 9976
    assert serving(sb, host)[1] == "active"
    forward = deploy("b11312")
    assert forward.returncode == 0, forward.stderr[-5000:]
    assert current(sb, host)["build"] == 11312
    assert "Build llama.cpp | Build llama.cpp b11312" not in forward.changed  # kept, not rebuilt


def test_commit_that_does_not_compile_changes_nothing(sandbox_hosts, host):
    sb = sandbox_hosts
    sha = offline.add_llama_commit(
        mirror(),
        "b11312",
        lambda tree: (tree / "tools/server/main.cpp").write_text(
            (tree / "tools/server/main.cpp").read_text() + '\n#error "rigkit test: does not compile"\n'
        ),
        "rigkit test: does not compile",
    )
    before_current, before_serving = current(sb, host), serving(sb, host)
    builds_before = ssh(sb, host, "ls /opt/rigkit/llama.cpp/builds")
    run = deploy(sha[:12])
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "did not build; the running build is untouched" in output
    assert "rigkit test: does not compile" in output  # the compiler's error tail
    assert current(sb, host) == before_current
    assert serving(sb, host) == before_serving
    assert ssh(sb, host, "ls /opt/rigkit/llama.cpp/builds") == builds_before


def test_server_that_cannot_start_is_rolled_back(sandbox_hosts, host):
    sb = sandbox_hosts
    sha = offline.add_llama_commit(
        mirror(),
        "b11312",
        lambda tree: (tree / "tools/server/main.cpp").write_text(
            (tree / "tools/server/main.cpp")
            .read_text()
            .replace(
                "return llama_server(argc, argv);",
                "(void) argc; (void) argv; return 3;  // rigkit test: exits at start",
            )
        ),
        "rigkit test: server exits at start",
    )
    run = deploy(sha[:12])
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "rolled back" in output and "the previous build is serving and verified" in output
    assert "did not stay up" in output
    info = current(sb, host)
    assert info["build"] == 11312 and info["ref"] == "b11312" and info["verified_at"]
    assert serving(sb, host)[1] == "active"
    status = urllib.request.urlopen(f"http://{host.address}:8000/health", timeout=10).status
    assert status == 200
    # Back on the pin, nothing to do.
    again = deploy("b11312")
    assert again.returncode == 0 and again.changed == {}, again.changed
