"""The first end-to-end test: a small deploy on 2 real hosts, twice."""

from __future__ import annotations

import urllib.request

import pytest
from pyinfra_run import run_pyinfra, ssh

pytestmark = pytest.mark.e2e


def test_sample_deploy_on_two_hosts_then_noop(sandbox_hosts):
    sb = sandbox_hosts
    assert len(sb.hosts) == 2

    first = run_pyinfra("inventories/sandbox.py", "deploys/sample.py")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not first.errors
    names = {h.name for h in sb.hosts}
    # Both hosts were actually changed, in parallel in one run.
    assert set(first.changed["Install rigkit-hello.service"]) == names
    assert set(first.changed["Install curl"]) == names

    for host in sb.hosts:
        assert ssh(sb, host, "systemctl is-active rigkit-hello.service") == "active"
        assert ssh(sb, host, "systemctl is-enabled rigkit-hello.service") == "enabled"
        assert ssh(sb, host, "dpkg-query -W -f='${Status}' curl") == "install ok installed"
        page = urllib.request.urlopen(f"http://{host.address}:8080/", timeout=10).read().decode()
        assert f"Hello from {host.name}" in page

    started = {h.name: ssh(sb, h, "systemctl show -p ActiveEnterTimestampMonotonic rigkit-hello") for h in sb.hosts}

    second = run_pyinfra("inventories/sandbox.py", "deploys/sample.py")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == {}, f"second run changed: {second.changed}"
    assert second.results["totals"]["success"] == 0
    assert second.results["totals"]["no_change"] == second.results["totals"]["hosts"] > 0
    for host in sb.hosts:
        # Not restarted either.
        after = ssh(sb, host, "systemctl show -p ActiveEnterTimestampMonotonic rigkit-hello")
        assert after == started[host.name]
