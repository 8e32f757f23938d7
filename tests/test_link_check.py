"""The interconnect measurement (rigkit/scripts/link_check.py) against recorded sysfs trees
(a Spark's ConnectX-7 port, a veth, a port without carrier), its real ping and throughput
test on loopback, its one-line summary, and the trust decision across nodes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from rigkit.hostdata.interconnect import parse_interconnect
from rigkit.operations.interconnect import failures
from rigkit.render.interconnect import check_argv, summary

SCRIPT = Path(__file__).resolve().parents[1] / "rigkit" / "scripts" / "link_check.py"
spec = importlib.util.spec_from_file_location("link_check", SCRIPT)
assert spec and spec.loader
link_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(link_check)

root = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP needs root")

# A DGX Spark's CX7 port as sysfs shows it (speed in Mb/s), with its RDMA device.
SPARK_CX7 = {
    "enp1s0f0np0/operstate": "up",
    "enp1s0f0np0/carrier": "1",
    "enp1s0f0np0/speed": "200000",
    "enp1s0f0np0/mtu": "9000",
    "enp1s0f0np0/device/infiniband/rocep1s0f0/ports/1/state": "4: ACTIVE",
}
NO_CARRIER = {"enp1s0f0np0/operstate": "down", "enp1s0f0np0/carrier": "0", "enp1s0f0np0/mtu": "1500"}


def sysfs(tmp_path: Path, files: dict[str, str], monkeypatch) -> None:
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content + "\n")
    monkeypatch.setattr(link_check, "NET", str(tmp_path))
    monkeypatch.setattr(link_check, "link_state", lambda iface: None)  # the recorded sysfs only


def run(monkeypatch, *extra: str, ping=True, gbps=30.0):
    monkeypatch.setattr(link_check, "ping_df", lambda iface, peer, mtu: ping)
    monkeypatch.setattr(link_check, "throughput", lambda *a: gbps)
    monkeypatch.setattr(link_check, "Listener", _NoListener)
    args = ["--interface", "enp1s0f0np0", "--address", "192.168.100.11", "--peer", "192.168.100.12", *extra]
    return link_check.check(link_check.parse(args))


class _NoListener:
    def __init__(self, *a):
        pass

    def start(self):
        pass

    def join(self, timeout):
        pass


def test_spark_port_passes(tmp_path, monkeypatch):
    sysfs(tmp_path, SPARK_CX7, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", "--link-gbps", "200", "--expected-gbps", "25")
    assert report["ok"], report["problems"]
    assert report["speed_gbps"] == 200 and report["rdma"] == [{"name": "rocep1s0f0", "states": ["4: ACTIVE"]}]
    assert summary(report) == (
        "interconnect enp1s0f0np0: link up, 200 Gb/s negotiated (expected 200), MTU 9000, RDMA rocep1s0f0, "
        "to 192.168.100.12: full-size ping ok, 30 Gb/s (expected 25); ok"
    )


def test_slow_link_names_the_link_and_both_figures(tmp_path, monkeypatch):
    sysfs(tmp_path, SPARK_CX7, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", "--expected-gbps", "25", gbps=13.2)
    assert report["problems"] == ["interconnect enp1s0f0np0 to 192.168.100.12: 13.2 Gb/s measured, 25 Gb/s expected"]


def test_negotiated_speed_below_expected(tmp_path, monkeypatch):
    sysfs(tmp_path, {**SPARK_CX7, "enp1s0f0np0/speed": "100000"}, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", "--link-gbps", "200")
    assert report["problems"] == ["interconnect enp1s0f0np0: negotiated 100 Gb/s, expected 200 Gb/s"]


def test_mtu_short_end_and_no_carrier(tmp_path, monkeypatch):
    sysfs(tmp_path, SPARK_CX7, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", ping=False)
    assert "no answer to a 9000-byte do-not-fragment ping" in report["problems"][0]
    sysfs(tmp_path, NO_CARRIER, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", ping=False)
    assert report["problems"][:2] == [
        "interconnect enp1s0f0np0: link down (carrier 0), expected up",
        "interconnect enp1s0f0np0: MTU 1500, expected 9000",
    ]
    assert "FAILED" in summary(report)


def test_missing_interface(tmp_path, monkeypatch):
    sysfs(tmp_path, {}, monkeypatch)
    report = run(monkeypatch, "--mtu", "9000", ping=False)
    assert report["problems"][0] == "interconnect enp1s0f0np0: no such interface"


@root
def test_real_ping_and_throughput_on_loopback():
    # The real sockets (raw ICMP with DF, SO_BINDTODEVICE, the listener), bounded, to 127.0.0.1 only.
    assert link_check.ping_df("lo", "127.0.0.1", 9000)
    args = ["--interface", "lo", "--address", "127.0.0.1", "--peer", "127.0.0.1", "--mtu", "9000"]
    report = link_check.check(link_check.parse([*args, "--measure", "--seconds", "1", "--port", "29518"]))
    assert report["peers"]["127.0.0.1"]["mtu_ok"] is True
    assert report["peers"]["127.0.0.1"]["gbps"] > 0.01


def test_argv_carries_the_declared_figures_only():
    link = parse_interconnect(
        "spark-1",
        {
            "interface": "enp1s0f0np0",
            "address": "192.168.100.11/24",
            "peers": ["192.168.100.12", "192.168.100.13"],
            "link_gbps": 200,
            "expected_gbps": 25,
        },
    )
    argv = check_argv(link)
    assert argv[:2] == ["/usr/bin/python3", "/usr/local/lib/rigkit/link_check.py"]
    assert argv[argv.index("--peer") + 1] == "192.168.100.12" and argv.count("--peer") == 2
    assert argv[argv.index("--expected-gbps") + 1] == "25" and argv[argv.index("--address") + 1] == "192.168.100.11"


def test_trust_needs_every_node():
    ok = {"ok": True, "problems": []}
    slow = {"ok": False, "problems": ["interconnect ic0 to 198.18.9.2: 0.01 Gb/s measured, 1 Gb/s expected"]}
    assert failures("e2e", ["a", "b"], {"a": ok, "b": ok}) == []
    assert failures("e2e", ["a", "b"], {"a": ok, "b": slow}) == [
        "b: interconnect ic0 to 198.18.9.2: 0.01 Gb/s measured, 1 Gb/s expected"
    ]
    assert failures("e2e", ["a", "b"], {"a": ok}) == ["b: its interconnect was not measured"]
