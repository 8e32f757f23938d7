"""rigkit sandbox: prerequisites, addresses, idempotent up, stale leftovers, clean down."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rigkit import sandbox
from rigkit.sandbox import cgroups, network, prerequisites, processes


@pytest.fixture
def own_instance(tmp_path, monkeypatch):
    """A sandbox instance of its own (state dir -> own tag, bridge, subnet)."""
    state = Path("/var/lib/rigkit") / f"sandbox-lifecycle-{os.getpid()}"
    monkeypatch.setenv("RIGKIT_SANDBOX_DIR", str(state))
    yield state
    if os.geteuid() == 0:
        sandbox.down()
    subprocess.run(["rm", "-rf", str(state)])


def leftovers(tag: str, state: Path) -> list[str]:
    found = []
    found += [f"netns {n}" for n in network.netns_list() if n.startswith(f"rk-{tag}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if f"rk{tag}" in line or f"rkbr-{tag}" in line
    ]
    found += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/mounts").read_text().splitlines()
        if str(state) in line.split()[1]
    ]
    found += [f"cgroup {c}" for c in cgroups.cgroup_dirs(tag) if c.exists()]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [f"process {line.strip()}" for line in ps.splitlines() if str(state) in line]
    return found


# --- unit tests (no root needed) -----------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def saved_sandbox(state: Path) -> sandbox.Sandbox:
    """An inventory.json as `up` writes it (no host booted): what the inventory reads."""
    state.mkdir(parents=True, exist_ok=True)
    sb = sandbox.Sandbox(
        tag="0000",
        subnet="198.18.0.0/24",
        gateway="198.18.0.1",
        ssh_key=str(state / "id_ed25519"),
        known_hosts=str(state / "known_hosts"),
        hosts=[sandbox.SandboxHost("sandbox-1", 1, "198.18.0.11", "n", "v")],
    )
    sb.save(state / "inventory.json")
    return sb


def sandbox_inventory(monkeypatch, state: Path, build_cache: str | None) -> dict:
    """inventories/sandbox.py's data for sandbox-1 with RIGKIT_SANDBOX_BUILD_CACHE set so."""
    import runpy

    monkeypatch.setenv("RIGKIT_SANDBOX_DIR", str(state))
    if build_cache is None:
        monkeypatch.delenv("RIGKIT_SANDBOX_BUILD_CACHE", raising=False)
    else:
        monkeypatch.setenv("RIGKIT_SANDBOX_BUILD_CACHE", build_cache)
    return dict(runpy.run_path(str(REPO / "inventories/sandbox.py"))["sandbox"])["sandbox-1"]


def test_demo_deploys_with_the_sandboxs_build_cache_and_its_token(tmp_path, monkeypatch):
    from rigkit.hostdata import parse_rig

    state = tmp_path / "state"
    saved_sandbox(state)
    data = sandbox_inventory(monkeypatch, state, "sandbox")
    llama = parse_rig("sandbox-1", data).llama_cpp
    assert llama.build_cache == "http://198.18.0.1:8091"
    assert llama.build_cache_token_file == str(state / "build-cache.token")
    # The Makefile's demo target is what asks for it.
    makefile = (REPO / "Makefile").read_text()
    assert "env RIGKIT_SANDBOX_BUILD_CACHE=sandbox $(VENV)/bin/pyinfra -y inventories/sandbox.py" in makefile


def test_sandbox_inventory_uses_a_build_cache_only_when_asked(tmp_path, monkeypatch):
    """The tests deploy without RIGKIT_SANDBOX_BUILD_CACHE: no cache, every host compiles."""
    from rigkit.hostdata import parse_rig

    saved_sandbox(tmp_path)
    plain = parse_rig("sandbox-1", sandbox_inventory(monkeypatch, tmp_path, None)).llama_cpp
    assert (plain.build_cache, plain.build_cache_token_file) == (None, None)
    other = parse_rig("sandbox-1", sandbox_inventory(monkeypatch, tmp_path, "http://198.18.0.1:8093")).llama_cpp
    assert (other.build_cache, other.build_cache_token_file) == ("http://198.18.0.1:8093", None)


def test_build_cache_token_is_private_and_kept_until_down(tmp_path):
    from rigkit.sandbox.services import ensure_build_cache_token

    path = ensure_build_cache_token(tmp_path)
    token = path.read_text()
    assert path == tmp_path / "build-cache.token" and len(token.strip()) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_build_cache_token(tmp_path).read_text() == token, "a second up keeps the token"


def test_down_keeps_a_build_cache_with_entries_and_drops_an_empty_one(tmp_path, monkeypatch):
    from rigkit.sandbox.services import build_cache_dir, remove_build_cache_if_empty

    monkeypatch.setenv("RIGKIT_CACHE", str(tmp_path))
    for tag in ("aaaa", "bbbb"):
        for sub in ("entries", "staging", "refused"):
            (build_cache_dir(tag) / sub).mkdir(parents=True)
    assert build_cache_dir("aaaa") == tmp_path / "build-cache" / "aaaa"
    (build_cache_dir("aaaa") / "entries" / ("0" * 64)).mkdir()
    remove_build_cache_if_empty("aaaa")
    remove_build_cache_if_empty("bbbb")
    assert (build_cache_dir("aaaa") / "entries" / ("0" * 64)).is_dir()
    assert not build_cache_dir("bbbb").exists()


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxError, match=r"needs root .* `sudo rigkit sandbox"):
        sandbox.check_prerequisites()


def test_missing_tools_name_the_packages_and_the_fix(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        prerequisites, "which", lambda cmd: None if cmd in ("debootstrap", "systemd-nspawn") else "/bin/x"
    )
    with pytest.raises(sandbox.SandboxError) as err:
        sandbox.check_prerequisites()
    assert "debootstrap" in str(err.value) and "systemd-container" in str(err.value)
    assert "apt-get install -y debootstrap systemd-container" in str(err.value)


def test_subnet_skips_used_networks(monkeypatch):
    used = [ipaddress.ip_network(f"198.18.{i}.0/24") for i in range(256)]
    monkeypatch.setattr(network, "used_networks", lambda: used)
    assert sandbox.allocate_subnet("0000") == ipaddress.ip_network("198.19.0.0/24")


def test_no_free_address_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(network, "used_networks", lambda: [ipaddress.ip_network("198.18.0.0/15")])
    with pytest.raises(sandbox.SandboxError, match="no free /24 left in 198.18.0.0/15"):
        sandbox.allocate_subnet("abcd")


def test_host_count_is_validated():
    with pytest.raises(sandbox.SandboxError, match="--hosts must be at least 1"):
        sandbox.up(hosts=0)


def test_cli_reports_errors_without_a_traceback(monkeypatch, capsys):
    from rigkit.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["sandbox", "down"]) == 1
    err = capsys.readouterr().err
    assert "rigkit sandbox down: rigkit sandbox needs root" in err and "Traceback" not in err


def test_inventory_without_sandbox_says_how_to_start_one(tmp_path):
    with pytest.raises(sandbox.SandboxError, match="sudo rigkit sandbox up"):
        sandbox.pyinfra_hosts(tmp_path)


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_up_is_idempotent_and_down_leaves_nothing(own_instance):
    tag = sandbox.instance_tag()
    sb = sandbox.up(hosts=1)
    pid = sb.hosts[0].pid
    again = sandbox.up(hosts=1)
    assert [h.pid for h in again.hosts] == [pid], "a second up must keep the running host"
    grown = sandbox.up(hosts=2)
    assert [h.name for h in grown.hosts] == ["sandbox-1", "sandbox-2"]
    assert grown.hosts[0].pid == pid
    info = sandbox.status()
    assert [h["ssh"] for h in info["hosts"]] == [True, True]
    assert leftovers(tag, own_instance), "sanity: the sandbox made namespaces and mounts"
    # The build cache on the gateway: anyone reaches it, only the token's holder may publish.
    assert info["services"]["build-cache"]["running"] and info["build_cache"] == grown.build_cache_url
    assert cache_request(grown.build_cache_url, "POST", "claim", {"holder": "x"}) == 401
    token = (own_instance / "build-cache.token").read_text().strip()
    assert cache_request(grown.build_cache_url, "POST", "claim", {"holder": "x"}, token) == 201
    assert cache_request(grown.build_cache_url, "GET", "manifest.json") == 404

    sandbox.down()
    assert leftovers(tag, own_instance) == []
    assert not processes.alive(pid)
    assert sandbox.status()["hosts"] == []
    # Nothing was published: no build cache directory stays behind, and no token.
    assert not (sandbox.cache_dir() / "build-cache" / tag).exists()
    assert not (own_instance / "build-cache.token").exists()


def cache_request(url: str, method: str, rest: str, doc: dict | None = None, token: str | None = None) -> int:
    """One request to a `rigkit cache serve` for an unused key: its HTTP status."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/v1/{'0' * 64}/{rest}",
        method=method,
        data=None if doc is None else json.dumps(doc).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.e2e
def test_up_recovers_from_a_killed_run(own_instance):
    """A session that died leaves namespaces, mounts and cgroups behind (pitfall 10)."""
    tag = sandbox.instance_tag()
    sb = sandbox.up(hosts=1)
    os.kill(sb.hosts[0].pid, signal.SIGKILL)
    time.sleep(0.5)
    processes.reap(sb.hosts[0].pid)
    assert any(f.startswith("netns") for f in leftovers(tag, own_instance))
    fresh = sandbox.up(hosts=1)
    assert fresh.hosts[0].pid != sb.hosts[0].pid
    assert sandbox.status()["hosts"][0]["ssh"] is True
    sandbox.down()
    assert leftovers(tag, own_instance) == []


BOOT_UNIT = """[Unit]
Description=enabled at boot, as a deployed service is
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def _booted(sb: sandbox.Sandbox, host: sandbox.SandboxHost) -> str:
    """The host's systemd state once booting finished (SSH itself checked on the way)."""
    return sb.ssh(host, "systemctl is-system-running --wait", check=False, timeout=60)


@pytest.mark.e2e
def test_reboot_keeps_the_disk_and_boots_systemd_again(own_instance):
    sb = sandbox.up(hosts=1, sources=False)
    host = sb.hosts[0]
    assert _booted(sb, host) == "running"
    sb.ssh(
        host,
        "echo written-before > /root/survives && echo gone-after > /run/volatile"
        f" && printf %s '{BOOT_UNIT}' > /etc/systemd/system/rk-boot.service"
        " && systemctl enable --now rk-boot.service",
    )
    old_pid = host.pid

    started = time.monotonic()
    rebooted = sandbox.reboot(host.name)
    took = time.monotonic() - started
    assert rebooted.pid != old_pid and not processes.alive(old_pid)
    sb = sandbox.Sandbox.load(own_instance / "inventory.json")
    host = sb.host(host.name)
    assert host.pid == rebooted.pid, "the inventory records the new boot"
    # Same host keys (strict checking with the known_hosts written at `up`), a new boot.
    assert _booted(sb, host) == "running"
    assert sb.ssh(host, "cat /root/survives") == "written-before", "the disk survives"
    assert sb.ssh(host, "cat /run/volatile 2>/dev/null || echo none") == "none", "a real boot: /run is new"
    assert sb.ssh(host, "systemctl is-active rk-boot.service") == "active", "enabled units start at boot"
    assert took < 30, f"reboot took {took:.1f}s"

    # A host that died keeps its disk too: `up` boots it again on it.
    os.kill(host.pid, signal.SIGKILL)
    time.sleep(0.5)
    processes.reap(host.pid)
    again = sandbox.up(hosts=1, sources=False)
    assert again.hosts[0].pid != host.pid
    assert _booted(again, again.hosts[0]) == "running"
    assert again.ssh(again.hosts[0], "cat /root/survives") == "written-before"
    assert again.ssh(again.hosts[0], "systemctl is-active rk-boot.service") == "active"


def test_reboot_names_the_hosts_there_are():
    sb = sandbox.Sandbox(
        tag="0000",
        subnet="198.18.0.0/24",
        gateway="198.18.0.1",
        ssh_key="k",
        known_hosts="kh",
        hosts=[sandbox.SandboxHost("sandbox-1", 1, "198.18.0.11", "n", "v")],
    )
    with pytest.raises(sandbox.SandboxError, match=r"no host 'sandbox-9' in this sandbox \(hosts: sandbox-1\)"):
        sb.host("sandbox-9")


@pytest.mark.e2e
def test_failed_up_rolls_back(own_instance):
    tag = sandbox.instance_tag()
    with pytest.raises(sandbox.SandboxError, match=r"did not answer SSH .* --boot-timeout"):
        sandbox.up(hosts=1, boot_timeout=0.01)
    assert leftovers(tag, own_instance) == []


@pytest.mark.e2e
def test_cli_up_status_down(own_instance):
    rigkit = [sys.executable, "-m", "rigkit.cli"]
    up = subprocess.run(rigkit + ["sandbox", "up", "--hosts", "1"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("sandbox-1\t198.1")
    st = subprocess.run(rigkit + ["sandbox", "status"], capture_output=True, text=True)
    assert "sandbox-1" in st.stdout and "\tup" in st.stdout
    rb = subprocess.run(rigkit + ["sandbox", "reboot", "sandbox-1"], capture_output=True, text=True)
    assert rb.returncode == 0 and rb.stdout.startswith("sandbox-1\t198.1"), rb.stderr
    assert "sandbox-1\t198.1" in subprocess.run(rigkit + ["sandbox", "status"], capture_output=True, text=True).stdout
    down = subprocess.run(rigkit + ["sandbox", "down"], capture_output=True, text=True)
    assert down.returncode == 0 and "removed 1 host" in down.stderr
