"""
deploys/nvidia.py on real sandbox hosts against a STAND-IN of NVIDIA's repositories
(tests/standins/nvidia_repo.py: same layout, package names and dependency structure, a test
signing key, an nvidia-smi stand-in printing the RTX 3090 rig's recording). NVIDIA's own
repository cannot be reached from here; what the sandbox's Debian bookworm cannot show
(Ubuntu paths, sbsa) is unit-tested in test_nvidia.py.

Own sandbox instance (RIGKIT_SANDBOX_DIR=/var/lib/rigkit/sandbox-nvidia), two hosts, no
llama.cpp. The tests run in order and build on each other's host state.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pyinfra_run import PYINFRA, REPO, dry_run_seed_rig, run_pyinfra
from standins import nvidia_repo

from rigkit import sandbox
from rigkit.sandbox.processes import alive

pytestmark = pytest.mark.e2e

STATE = Path(os.environ.get("RIGKIT_TEST_NVIDIA_SANDBOX_DIR", "/var/lib/rigkit/sandbox-nvidia"))
INVENTORY = "tests/standins/nvidia_inventory.py"
RIG = [
    line
    for line in (Path(__file__).parent / "recordings/nvidia/rtx3090x6-query-gpu.csv").read_text().splitlines()
    if line.strip()
]
UUIDS = [line.split(",")[1].strip() for line in RIG]
DRIVER_PACKAGES = {
    "nvidia-open",
    "nvidia-driver-cuda",
    "nvidia-kernel-open-dkms",
    "libnvidia-compute",
    "nvidia-persistenced",
}


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = str(STATE)
    server = None
    try:
        sb = sandbox.up(hosts=2, sources=False)
        port = _free_port(sb.gateway)
        standin = nvidia_repo.build(tmp_path_factory.mktemp("nvidia-standin"), f"http://{sb.gateway}:{port}")
        server = nvidia_repo.serve(standin.www, sb.gateway, port)
        for host in sb.hosts:
            # apt goes through apt-cacher-ng; the stand-in is reached directly.
            sb.ssh(
                host,
                f"echo 'Acquire::http::Proxy::{sb.gateway} \"DIRECT\";' > /etc/apt/apt.conf.d/02rigkit-nvidia-standin",
            )
        yield sb, standin
    finally:
        if server is not None:
            server.shutdown()
        sandbox.down()
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


def deploy(standin, host: str, **nvidia):
    data = {host: standin.host_data(**nvidia)}
    return run_pyinfra(
        INVENTORY, "deploys/nvidia.py", "--limit", host, env={"RIGKIT_TEST_NVIDIA": json.dumps(data)}, timeout=900
    )


def output(run) -> str:
    return run.stdout + run.stderr


def changed(run) -> set[str]:
    """Names of the operations that changed something, without the deploy's prefix."""
    return {name.split(" | ")[-1] for name in run.changed}


def held(sb, host) -> set[str]:
    return set(sb.ssh(host, "apt-mark showhold").split())


def installed(sb, host, package: str) -> str:
    return sb.ssh(
        host, f"dpkg-query -W -f='${{db:Status-Status}} ${{Version}}' {package} 2>/dev/null || true", check=False
    )


SEEDS = {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350}


def test_first_install_pins_holds_and_reports_reboot(env):
    sb, standin = env
    h1 = sb.hosts[0]
    run = deploy(standin, h1.name, **SEEDS)
    assert run.returncode == 0, output(run)[-4000:]
    assert not run.errors
    assert any(name.startswith("NVIDIA driver branch 580") for name in changed(run)), run.changed
    # cuda-keyring's source line for debian12/x86_64, contrib on.
    assert sb.ssh(h1, "cat /etc/apt/sources.list.d/cuda-debian12-x86_64.list") == (
        f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {standin.repo_url}/debian12/x86_64/ /"
    )
    assert (
        sb.ssh(
            h1,
            "grep -hE '^(deb |Components:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources "
            "2>/dev/null | grep -c contrib",
        )
        != "0"
    )
    # Branch pinned by the pinning package, the driver's packages held, the toolkit not.
    assert installed(sb, h1, "nvidia-driver-pinning-580") == "installed 580.95.05-1"
    assert installed(sb, h1, "nvidia-open") == "installed 580.95.05-1"
    assert "Pin: version 580.*" in sb.ssh(h1, "cat /etc/apt/preferences.d/nvidia-driver-pinning-580")
    holds = held(sb, h1)
    assert DRIVER_PACKAGES | {"nvidia-driver-pinning-580"} <= holds, holds
    assert "cuda-toolkit-13-0" not in holds and "cuda-keyring" not in holds
    # An upgrade (what unattended-upgrades does) leaves held packages alone.
    sb.ssh(
        h1,
        "DEBIAN_FRONTEND=noninteractive apt-get -y -o APT::Get::Always-Include-Phased-Updates=1 upgrade",
        timeout=300,
    )
    assert installed(sb, h1, "nvidia-open").endswith("580.95.05-1")
    assert installed(sb, h1, "cuda-toolkit-13-0") == "installed 13.0.88-1"
    assert sb.ssh(h1, "readlink -f /usr/local/cuda") == "/usr/local/cuda-13.0"
    assert installed(sb, h1, f"linux-headers-{os.uname().release}").startswith("installed ")
    assert "blacklist nouveau" in sb.ssh(h1, "cat /etc/modprobe.d/rigkit-blacklist-nouveau.conf")
    assert sb.ssh(h1, "systemctl is-enabled nvidia-persistenced") == "enabled"
    # No module loaded yet (the host has not rebooted): loudly pending, power left for later.
    text = output(run)
    assert "REBOOT PENDING" in text and "power limits not applied yet" in text
    assert sb.ssh(h1, "test -e /etc/systemd/system/rigkit-nvidia-power.service && echo yes || echo no") == "no"


def _boot_loaded(sb, host, version: str) -> None:
    """What a reboot would do on a GPU host: the installed module is the loaded one (the
    sandbox has none, so a tmpfs stands in for /sys/module), power limits are gone."""
    sb.ssh(
        host,
        "mountpoint -q /sys/module || mount -t tmpfs -o mode=755 rigkit-standin /sys/module; "
        f"mkdir -p /sys/module/nvidia && echo {version} > /sys/module/nvidia/version; "
        "rm -rf /dev/shm/nvidia-standin",
    )


def test_after_reboot_power_unit_by_uuid_then_noop(env):
    sb, standin = env
    h1 = sb.hosts[0]
    _boot_loaded(sb, h1, "580.95.05")
    run = deploy(standin, h1.name, **SEEDS)
    assert run.returncode == 0, output(run)[-4000:]
    assert "NVIDIA reboot pending" not in output(run) and "REBOOT PENDING" not in output(run)
    unit = sb.ssh(h1, "cat /etc/systemd/system/rigkit-nvidia-power.service")
    starts = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert starts == [f"ExecStart=/usr/bin/nvidia-smi -i {uuid} -pl 350" for uuid in UUIDS]
    assert "After=nvidia-persistenced.service" in unit and "Type=oneshot" in unit
    assert sb.ssh(h1, "systemctl is-active rigkit-nvidia-power.service nvidia-persistenced").split() == ["active"] * 2
    assert sb.ssh(h1, "systemctl is-enabled rigkit-nvidia-power.service") == "enabled"
    limits = sb.ssh(h1, "nvidia-smi --query-gpu=uuid,power.limit --format=csv,noheader,nounits").splitlines()
    assert limits == [f"{uuid}, 350.00" for uuid in UUIDS]

    again = deploy(standin, h1.name, **SEEDS)
    assert again.returncode == 0, output(again)[-4000:]
    assert again.changed == {}, again.changed


def test_power_limit_out_of_range_refused_before_any_change(env):
    sb, standin = env
    h1 = sb.hosts[0]
    before = sb.ssh(
        h1,
        "sha256sum /etc/systemd/system/rigkit-nvidia-power.service; apt-mark showhold | sort | md5sum; "
        "ls -l --time-style=+%s /var/lib/dpkg/status",
    )
    run = deploy(standin, h1.name, **{**SEEDS, "power_limit_w": 450})
    assert run.returncode != 0
    text = output(run)
    assert "450 W is outside GPU 0's range (NVIDIA GeForce RTX 3090: 100-400 W)" in text
    assert "nothing was changed" in text
    assert (
        sb.ssh(
            h1,
            "sha256sum /etc/systemd/system/rigkit-nvidia-power.service; apt-mark showhold | sort | md5sum; "
            "ls -l --time-style=+%s /var/lib/dpkg/status",
        )
        == before
    )
    # A per-GPU list of the wrong length fails validation, before any host contact changes anything.
    short = deploy(standin, h1.name, **{**SEEDS, "power_limit_w": [300, 300]})
    assert short.returncode != 0 and "nvidia.power_limit_w: expected 6 values" in output(short)


def test_changed_power_limit_is_reapplied(env):
    sb, standin = env
    h1 = sb.hosts[0]
    per_gpu = [300, 350, 350, 350, 350, 250]
    run = deploy(standin, h1.name, **{**SEEDS, "power_limit_w": per_gpu})
    assert run.returncode == 0, output(run)[-4000:]
    assert any(name.startswith("Re-apply power limits") for name in changed(run)), run.changed
    limits = sb.ssh(h1, "nvidia-smi --query-gpu=uuid,power.limit --format=csv,noheader,nounits").splitlines()
    assert limits == [f"{uuid}, {watts:.2f}" for uuid, watts in zip(UUIDS, per_gpu)]


def test_branch_change_upgrades_then_mismatch_is_reboot_pending(env):
    sb, standin = env
    h1 = sb.hosts[0]
    # From 580 installed and loaded (what the tests before leave; alone, made here).
    if installed(sb, h1, "nvidia-driver-pinning-580") != "installed 580.95.05-1":
        first = deploy(standin, h1.name, **SEEDS)
        assert first.returncode == 0, output(first)[-4000:]
    _boot_loaded(sb, h1, "580.95.05")
    run = deploy(standin, h1.name, **{**SEEDS, "driver_branch": "590"})
    assert run.returncode == 0, output(run)[-4000:]
    assert installed(sb, h1, "nvidia-driver-pinning-590") == "installed 590.48.01-1"
    assert installed(sb, h1, "nvidia-driver-pinning-580") == ""  # replaced: they conflict
    assert installed(sb, h1, "nvidia-open") == "installed 590.48.01-1"
    assert DRIVER_PACKAGES | {"nvidia-driver-pinning-590"} <= held(sb, h1)
    assert "REBOOT PENDING" in output(run)
    # The loaded module is still 580: the userspace mismatch is a fact, reported, not a crash.
    assert "Driver/library version mismatch" in sb.ssh(h1, "nvidia-smi -L", check=False)
    again = deploy(standin, h1.name, **{**SEEDS, "driver_branch": "590"})
    assert again.returncode == 0, output(again)[-4000:]
    assert "reboot pending: the loaded kernel module is 580.95.05, the installed userspace 590.48.01" in output(again)
    assert again.changed == {}, again.changed


def test_reboot_true_reboots_onto_the_changed_driver_and_checks_the_gpus(env):
    """Back to 580 with reboot: true: the deploy reboots the host (here the nspawn host ends,
    and the sandbox boots it again on its disk, as firmware would), reconnects and checks that
    nvidia-smi sees the 6 GPUs."""
    sb, standin = env
    h1 = sb.hosts[0]
    data = {h1.name: standin.host_data(**{**SEEDS, "reboot": True})}
    proc = subprocess.Popen(
        [PYINFRA, "-y", "--json", "--limit", h1.name, INVENTORY, "deploys/nvidia.py"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RIGKIT_TEST_NVIDIA": json.dumps(data)},
    )
    rebooted = False
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if not rebooted and not alive(h1.pid, "systemd-nspawn"):
            sandbox.reboot(h1.name)
            # pyinfra confirms a reboot by a smaller /proc/uptime; a container shows the build
            # machine's, so the new boot's is laid over it (as lxcfs does for containers).
            sb.ssh(h1, "echo '3.00 3.00' > /run/rigkit-uptime && mount --bind /run/rigkit-uptime /proc/uptime")
            rebooted = True
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=60)
    assert rebooted, "the deploy did not reboot the host"
    assert proc.returncode == 0, (stdout + stderr)[-4000:]
    ops = {op["name"].split(" | ")[-1]: op for op in json.loads(stdout)["results"]["operations"]}
    assert ops["Reboot onto the new NVIDIA driver"]["success"]
    assert ops["nvidia-smi sees the GPUs after the reboot"]["success"]
    assert "REBOOT PENDING" not in stdout + stderr
    assert installed(sb, h1, "nvidia-open") == "installed 580.95.05-1"
    assert installed(sb, h1, "nvidia-driver-pinning-580") == "installed 580.95.05-1"
    assert sb.ssh(h1, "nvidia-smi -L | grep -c '^GPU '") == "6"


def test_dgx_os_left_alone(env):
    sb, standin = env
    h2 = sb.hosts[1]
    sb.ssh(
        h2,
        'printf \'DGX_NAME="DGX Spark"\\nDGX_PRETTY_NAME="NVIDIA DGX Spark"\\nDGX_SWBUILD_VERSION="7.2.3"\\n\' '
        "> /etc/dgx-release",
    )
    try:
        run = deploy(standin, h2.name, driver_branch="580", cuda_toolkit="13.0")
        assert run.returncode == 0, output(run)[-4000:]
        assert (
            "DGX OS (NVIDIA DGX Spark 7.2.3): its driver and CUDA toolkit are DGX OS's; rigkit leaves them alone"
            in output(run)
        )
        assert not any("driver branch" in name or "CUDA" in name for name in changed(run)), run.changed
        assert sb.ssh(h2, "ls /etc/apt/sources.list.d/ | grep -c cuda || true") == "0"
        assert sb.ssh(h2, "dpkg-query -W 'nvidia-*' 'cuda-*' 2>/dev/null | wc -l") == "0"
    finally:
        sb.ssh(h2, "rm -f /etc/dgx-release")


def test_secure_boot_without_key_stops_before_installing(env):
    sb, standin = env
    h2 = sb.hosts[1]
    # A mokutil stand-in: this host "boots" with Secure Boot on and has no DKMS signing key.
    sb.ssh(
        h2,
        "printf '#!/bin/sh\\necho SecureBoot enabled\\n' > /usr/local/bin/mokutil && chmod 755 /usr/local/bin/mokutil",
    )
    try:
        before = sb.ssh(h2, "ls -l --time-style=+%s /var/lib/dpkg/status; ls /etc/apt/sources.list.d | md5sum")
        run = deploy(standin, h2.name, **SEEDS)
        assert run.returncode != 0
        assert "Secure Boot is on and there is no module signing key" in output(run)
        assert sb.ssh(h2, "ls -l --time-style=+%s /var/lib/dpkg/status; ls /etc/apt/sources.list.d | md5sum") == before
    finally:
        sb.ssh(h2, "rm -f /usr/local/bin/mokutil")


def test_container_toolkit_configures_docker(env):
    sb, standin = env
    h2 = sb.hosts[1]
    # A docker STAND-IN (Docker cannot run inside these nspawn hosts): `docker info` reads
    # /etc/docker/daemon.json's runtimes as the real daemon reports them after a restart.
    sb.ssh(
        h2,
        "cat > /usr/local/bin/docker <<'EOF'\n#!/usr/bin/python3\nimport json, os, sys\n"
        "p = '/etc/docker/daemon.json'\nc = json.load(open(p)) if os.path.exists(p) else {}\n"
        "print(json.dumps({'io.containerd.runc.v2': {}, 'runc': {}, **c.get('runtimes', {})}))\nEOF\n"
        "chmod 755 /usr/local/bin/docker; printf '[Service]\\nExecStart=/bin/sleep infinity\\n' "
        "> /etc/systemd/system/docker.service; systemctl daemon-reload; systemctl start docker",
    )
    run = deploy(standin, h2.name, container_toolkit=True)
    assert run.returncode == 0, output(run)[-4000:]
    assert installed(sb, h2, "nvidia-container-toolkit") == "installed 1.18.0-1"
    assert sb.ssh(h2, "cat /etc/apt/sources.list.d/nvidia-container-toolkit.list") == (
        f"deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] {standin.container_repo_url}/$(ARCH) /"
    )
    assert "nvidia" in json.loads(sb.ssh(h2, "docker info --format '{{json .Runtimes}}'"))
    again = deploy(standin, h2.name, container_toolkit=True)
    assert again.returncode == 0 and again.changed == {}, (again.changed, output(again)[-2000:])


def test_seed_rig_plans_the_nvidia_step_first(env, tmp_path):
    """inventories/rig.py (6x RTX 3090, nvidia branch 580, 350 W) through deploys/rig.py --dry on a
    sandbox host: the NVIDIA step is planned before the models and the build; nothing changes."""

    sb, _ = env
    h2 = sb.hosts[1]
    marker = "ls -l --time-style=+%s /var/lib/dpkg/status /etc/apt/sources.list.d /etc/systemd/system | md5sum"
    before = sb.ssh(h2, marker)
    run = dry_run_seed_rig(sb, h2, tmp_path)
    assert run.returncode == 0, output(run)[-3000:]
    plan = [op["name"] for op in json.loads(run.stdout)["plan"]]
    nvidia = "NVIDIA driver, CUDA toolkit, container toolkit | "
    for name in ("NVIDIA driver branch 580 (nvidia-driver-pinning-580 + nvidia-open, held)", "CUDA toolkit 13.0"):
        assert nvidia + name in plan, plan
    first_build = next(i for i, name in enumerate(plan) if name.startswith("Build llama.cpp"))
    assert max(i for i, name in enumerate(plan) if name.startswith(nvidia)) < first_build
    assert sb.ssh(h2, marker) == before
