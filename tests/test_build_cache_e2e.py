"""
The fleet's build cache (issue 27) on real sandbox hosts: a real ``rigkit cache serve`` on the
sandbox bridge, real llama.cpp builds (the shared ccache keeps the one compile short), and
llama_host.py on every host deciding to compile or to fetch.

FLEET hosts (sandbox-1 and -2 from the session, the others booted here, then removed again)
deploy the same pin and flags in one pyinfra run: exactly one compiles (counted from each
host's builds.log), publishes, and every other fetches the same bytes, verified. Then a byte
of the cached llama-server is changed on the cache's disk: a serving host that needs the build
refuses it, compiles instead while its old build keeps serving, and puts a good copy back.
Last, `make demo`'s settings (the sandbox's own build cache, with its token): one host
publishes the default build there and a host that never built it fetches it.

The pin's flags carry one extra option (FLAGS) that no other test uses, so no host already
has this build and the cache decides everything.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from pyinfra_run import REPO, run_pyinfra, ssh

from rigkit import sandbox
from rigkit.sandbox.health import HealthPoller

pytestmark = pytest.mark.e2e

#: Hosts in the fleet, the issue's eight: each extra nspawn host is cheap, but each installs
#: the build packages (apt, through the sandbox's cache) on these 2 CPUs.
FLEET = 8
FLAGS = "-DLLAMA_BUILD_EXAMPLES=OFF"
FLAGS2 = "-DCMAKE_BUILD_TYPE=Release"  # what the build passes anyway: a new key, the same compile
CACHE_PORT = 8093
ROOT = "/opt/rigkit/llama.cpp"
PROGRESS = re.compile(r"^\[sandbox-\d+\] \[rigkit\] llama\.cpp b11312 \(\w+\): \d+% compiled \(\d+s\)$", re.M)


@pytest.fixture(scope="module")
def fleet(sandbox_hosts, tmp_path_factory):
    sb = sandbox.up(hosts=FLEET)
    cache_dir = tmp_path_factory.mktemp("build-cache")
    server = subprocess.Popen(
        [sys.executable, "-m", "rigkit.cli", "cache", "serve", str(cache_dir), "--host", sb.gateway]
        + ["--port", str(CACHE_PORT)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://{sb.gateway}:{CACHE_PORT}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/v1/{'0' * 64}/manifest.json", timeout=1)
        except urllib.error.HTTPError:
            break  # 404: it answers
        except OSError:
            time.sleep(0.1)
    env = {"RIGKIT_SANDBOX_BUILD_CACHE": url, "RIGKIT_SANDBOX_CMAKE_FLAGS": FLAGS}
    try:
        yield sb, env, cache_dir
    finally:
        server.terminate()
        server.wait(timeout=10)
        sandbox.up(hosts=2)  # the session's two hosts again, for the modules after this one


def builds_log(sb, host) -> list[str]:
    return ssh(sb, host, f"cat {ROOT}/builds.log 2>/dev/null || true").splitlines()


def server_sha(sb, host) -> str:
    return ssh(sb, host, f"sha256sum {ROOT}/current/bin/llama-server").split()[0]


def new_lines(before: dict, sb) -> dict[str, list[str]]:
    return {h.name: builds_log(sb, h)[len(before[h.name]) :] for h in sb.hosts}


@pytest.fixture(scope="module")
def deployed(fleet):
    """The whole fleet deployed in one run: (the run, each host's new builds.log lines)."""
    sb, env, _ = fleet
    before = {h.name: builds_log(sb, h) for h in sb.hosts}
    run = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", env=env)
    assert run.returncode == 0, run.stderr[-5000:]
    return run, new_lines(before, sb)


def test_fleet_deploys_with_one_compile(fleet, deployed):
    sb, env, cache_dir = fleet
    run, events = deployed
    compiled = [h for h, lines in events.items() if any(" built in " in line for line in lines)]
    fetched = [h for h, lines in events.items() if any(" fetched from http://" in line for line in lines)]
    assert len(compiled) == 1, events
    assert sorted(fetched) == sorted(set(events) - set(compiled)), events
    assert any(" published to http://" in line for line in events[compiled[0]])

    # Every host runs the same bytes, switched to and verified like a compiled build.
    shas = {h.name: server_sha(sb, h) for h in sb.hosts}
    assert len(set(shas.values())) == 1, shas
    entry = next((cache_dir / "entries").iterdir())
    manifest = json.loads((entry / "manifest.json").read_text())
    (binary,) = [f for f in manifest["files"] if f["name"] == "bin/llama-server"]
    assert binary["sha256"] == next(iter(shas.values()))
    for h in sb.hosts:
        info = json.loads(ssh(sb, h, f"cat {ROOT}/current/build.json"))
        assert FLAGS in info["flags"] and info["verified_at"], (h.name, info)
        assert ("fetched" in info) == (h.name in fetched)
        assert ssh(sb, h, "systemctl is-active rigkit-llama-tiny") == "active"

    # The compile's progress, in pyinfra's default output: a few lines, not the compiler's.
    progress = PROGRESS.findall(run.stderr)
    assert progress and all(line.startswith(f"[{compiled[0]}] ") for line in progress), run.stderr[-3000:]
    assert "Building CXX object" not in run.stderr
    print(f"\n{FLEET} hosts: compiled on {compiled[0]}, fetched by {len(fetched)}; progress lines: {progress}")

    again = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", env=env)
    assert again.returncode == 0 and again.changed == {}, again.changed


def test_tampered_entry_is_refused_compiled_instead_while_serving(fleet, deployed):
    sb, env, cache_dir = fleet
    builder, host = sb.hosts[1], sb.hosts[0]
    # A second build identity (one more flag, the same compile): sandbox-2 builds and publishes it.
    env2 = {**env, "RIGKIT_SANDBOX_CMAKE_FLAGS": f"{FLAGS} {FLAGS2}"}
    fleet_entries = {p.name for p in (cache_dir / "entries").iterdir()}
    first = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", builder.name, env=env2)
    assert first.returncode == 0, first.stderr[-5000:]
    good = server_sha(sb, builder)
    (key,) = {p.name for p in (cache_dir / "entries").iterdir()} - fleet_entries
    binary = cache_dir / "entries" / key / "bin/llama-server"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size
    binary.write_bytes(bytes(data))
    tampered = hashlib.sha256(data).hexdigest()

    # sandbox-1 serves the fleet's build and now needs the second one: the cache's copy is wrong.
    before = builds_log(sb, host)
    with HealthPoller(f"http://{host.address}:8000/health") as poller:
        run = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", host.name, env=env2)
    assert run.returncode == 0, run.stderr[-5000:]
    lines = builds_log(sb, host)[len(before) :]
    assert any(" cache entry refused: bin/llama-server: " in line and "sha256" in line for line in lines), lines
    assert any(" built in " in line for line in lines), lines
    assert "REFUSED the build cache's copy" in run.stderr
    # The tampered bytes never ran: what serves is the compiled build, the same bytes as sandbox-2's.
    assert server_sha(sb, host) == good != tampered
    assert FLAGS2 in json.loads(ssh(sb, host, f"cat {ROOT}/current/build.json"))["flags"]
    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny") == "active"
    # The old build served while the new one compiled; only the restart onto it was an outage.
    assert poller.healthy_fraction > 0.5 and poller.samples[-1][1], poller.healthy_fraction
    # The bad entry was moved aside and this host's build took its place.
    assert len(list((cache_dir / "refused").iterdir())) == 1
    manifest = json.loads((cache_dir / "entries" / key / "manifest.json").read_text())
    assert {f["sha256"] for f in manifest["files"] if f["name"] == "bin/llama-server"} == {good}
    print(f"\ntampered entry refused; longest /health outage {poller.longest_outage():.2f}s")


def test_demo_publishes_to_the_sandboxs_cache_and_a_fresh_host_fetches(fleet):
    """`make demo`'s deploy (RIGKIT_SANDBOX_BUILD_CACHE=sandbox, the sandbox's own cache and
    its token): the first host to need the build compiles and publishes it there; a host
    that never built it (as after `make sandbox-down`, the next demo's fresh sandbox-1)
    fetches and verifies it instead of compiling."""
    from rigkit.sandbox.services import build_cache_dir

    sb = fleet[0]
    publisher, fresh = sb.hosts[2], sb.hosts[3]  # booted by the fleet fixture: no default build
    env = {"RIGKIT_SANDBOX_BUILD_CACHE": "sandbox"}  # what the Makefile's demo target sets
    # This instance's cache (only this test deploys with it) may hold the build from an earlier
    # session: start it empty, so the first host compiles.
    for entry in (build_cache_dir(sb.tag) / "entries").iterdir():
        shutil.rmtree(entry)

    before = {h.name: builds_log(sb, h) for h in sb.hosts}
    first = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", publisher.name, env=env)
    assert first.returncode == 0, first.stderr[-5000:]
    lines = new_lines(before, sb)[publisher.name]
    assert any(" built in " in line for line in lines), lines
    assert any(f" published to {sb.build_cache_url} " in line for line in lines), lines
    assert ssh(sb, publisher, "stat -c %a:%U /etc/rigkit/llama/build-cache.token") == "400:root"

    second = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", fresh.name, env=env)
    assert second.returncode == 0, second.stderr[-5000:]
    lines = new_lines(before, sb)[fresh.name]
    assert any(f" fetched from {sb.build_cache_url} " in line for line in lines), lines
    assert not any(" built in " in line for line in lines), lines
    assert server_sha(sb, fresh) == server_sha(sb, publisher)
    assert ssh(sb, fresh, "systemctl is-active rigkit-llama-tiny") == "active"
    token = (sandbox.state_dir() / "build-cache.token").read_text().strip()
    assert token not in first.stdout + first.stderr + second.stdout + second.stderr
