"""
Host data ``interconnect``: the direct link between a cluster's nodes (the DGX Spark's
ConnectX-7 port and its cable), configured by rigkit from a bare host and measured before
anything trusts it::

    "interconnect": {"interface": "enp1s0f0np0", "address": "192.168.100.11/24",
                     "peers": ["192.168.100.12"], "mtu": 9000,
                     "link_gbps": 200, "expected_gbps": 25}

``interface`` is the name the port has (NCCL, Gloo and the checks use it). Where the port's
name differs between OS images, ``pci`` (``0000:01:00.0``) or ``mac`` says which port it is,
and rigkit gives that port the name ``interface``. ``address`` is this node's address with
its prefix; ``peers`` the other nodes' addresses on the link (in that network): the MTU
ping and the throughput test go to them and nowhere else. ``link_gbps`` is the negotiated
speed the port must report (unset: not checked), ``expected_gbps`` the throughput the
bounded test between the nodes must reach (unset: measured and shown, not judged).
``renderer`` is ``auto`` (netplan where the host has netplan, as DGX OS and Ubuntu do;
systemd-networkd elsewhere), ``netplan`` or ``networkd``.

Every value is matched whole against what its consumer accepts (the kernel's interface
names, sysfs's PCI and MAC spellings, netplan's and networkd's address syntax) before any
host changes; :func:`check_with_cluster` ties it to the host's ``cluster`` entry.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from rigkit.hostdata.schema import HostDataError, build, check_address, check_pattern

# What the kernel takes as an interface name (dev_valid_name: 1-15 bytes, no '/', ':' or
# whitespace), narrowed to what netplan's YAML keys, networkd's Name= and argv words keep as
# they are: ASCII letters, digits, '_', '.', '-', never a leading '-' (an option) or '.'.
INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}", re.ASCII)
#: Names the kernel or sysctl reserve (net.ipv4.conf.all / .default), and loopback.
RESERVED_INTERFACES = frozenset({"lo", "all", "default"})
# A PCI address as sysfs spells it: domain:bus:device.function, lower-case hex.
PCI = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", re.ASCII)
MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)
ADDRESS_WITH_PREFIX = re.compile(r"[0-9A-Fa-f.:]{2,39}/[0-9]{1,3}", re.ASCII)
PEER = re.compile(r"[0-9A-Fa-f.:]{2,39}", re.ASCII)
RENDERERS = ("auto", "netplan", "networkd")
#: The IPv6 minimum up to the jumbo frames a ConnectX-7 (and most switches) carry.
MTU_RANGE = (1280, 9216)
DEFAULT_MTU = 9000
#: The bounded throughput test: its port on the interconnect address, and its length.
DEFAULT_TEST_PORT = 29517
TEST_SECONDS_RANGE = (1, 10)


@dataclass(frozen=True)
class Interconnect:
    interface: str
    address: str
    peers: tuple[str, ...]
    pci: str | None = None
    mac: str | None = None
    mtu: int = DEFAULT_MTU
    link_gbps: float | None = None
    expected_gbps: float | None = None
    renderer: str = "auto"
    test_port: int = DEFAULT_TEST_PORT
    test_seconds: int = 3

    @property
    def ip(self) -> str:
        """This node's address on the link, without the prefix."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(self.address).network

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


def _check_host_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str, key: str, value: str) -> None:
    """An address one node can use toward another on a direct link."""
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        raise HostDataError(host, key, "a unicast address another node can reach (no loopback, link-local)", value)


def parse_interconnect(host: str, raw: Any) -> Interconnect:
    """One host's ``interconnect`` entry, checked whole; raises :class:`HostDataError`."""
    link = build(Interconnect, raw, host, "interconnect")
    check_pattern(
        link.interface,
        INTERFACE,
        host,
        "interconnect.interface",
        "a network interface name (1-15 of letters, digits, _ . -; not starting with - or .)",
    )
    if link.interface in RESERVED_INTERFACES:
        raise HostDataError(
            host, "interconnect.interface", "an interface name other than lo, all, default", link.interface
        )
    if link.pci is not None and link.mac is not None:
        raise HostDataError(host, "interconnect", "pci or mac (which port is the interconnect), not both")
    if link.pci is not None:
        pci = link.pci.lower()
        m = PCI.fullmatch(pci)
        if not m or int(m.group(3), 16) > 0x1F:
            raise HostDataError(host, "interconnect.pci", "a PCI address as sysfs writes it (0000:01:00.0)", link.pci)
        link = dataclasses.replace(link, pci=pci)
    if link.mac is not None:
        mac = link.mac.lower()
        if not MAC.fullmatch(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise HostDataError(host, "interconnect.mac", "a unicast MAC address (aa:bb:cc:dd:ee:ff)", link.mac)
        link = dataclasses.replace(link, mac=mac)

    expected_address = "this node's address with its prefix on the link (192.168.100.11/24)"
    check_pattern(link.address, ADDRESS_WITH_PREFIX, host, "interconnect.address", expected_address)
    ip_text, prefix_text = link.address.split("/")
    ip = ipaddress.ip_address(check_address(ip_text, host, "interconnect.address", expected_address))
    max_prefix = 31 if ip.version == 4 else 127
    min_prefix = 8 if ip.version == 4 else 64
    if not min_prefix <= int(prefix_text) <= max_prefix or prefix_text != str(int(prefix_text)):
        raise HostDataError(
            host,
            "interconnect.address",
            f"a prefix from /{min_prefix} to /{max_prefix} after the address",
            link.address,
        )
    _check_host_address(ip, host, "interconnect.address", link.address)
    iface = ipaddress.ip_interface(f"{ip}/{prefix_text}")
    network = iface.network
    if ip.version == 4 and network.prefixlen < 31 and ip in (network.network_address, network.broadcast_address):
        raise HostDataError(
            host, "interconnect.address", "a host address (not the network's or its broadcast)", link.address
        )
    link = dataclasses.replace(link, address=str(iface))

    if not link.peers:
        raise HostDataError(host, "interconnect.peers", "the other nodes' addresses on the link", [])
    peers = []
    for i, peer in enumerate(link.peers):
        key = f"interconnect.peers[{i}]"
        check_pattern(peer, PEER, host, key, "a peer's address on the link, without a prefix")
        p = ipaddress.ip_address(check_address(peer, host, key, "a peer's address on the link"))
        _check_host_address(p, host, key, peer)
        if p not in network or p == ip:
            raise HostDataError(host, key, f"another node's address in this link's network {network}", peer)
        if p.version == 4 and network.prefixlen < 31 and p in (network.network_address, network.broadcast_address):
            raise HostDataError(host, key, "a host address (not the network's or its broadcast)", peer)
        if str(p) in peers:
            raise HostDataError(host, key, "each peer once", peer)
        peers.append(str(p))
    link = dataclasses.replace(link, peers=tuple(peers))

    if not MTU_RANGE[0] <= link.mtu <= MTU_RANGE[1]:
        raise HostDataError(host, "interconnect.mtu", f"an MTU from {MTU_RANGE[0]} to {MTU_RANGE[1]}", link.mtu)
    for key in ("link_gbps", "expected_gbps"):
        value = getattr(link, key)
        if value is not None and not 0.001 <= value <= 1600:
            raise HostDataError(host, f"interconnect.{key}", "a rate in Gb/s from 0.001 to 1600", value)
    if link.renderer not in RENDERERS:
        raise HostDataError(host, "interconnect.renderer", " or ".join(RENDERERS), link.renderer)
    if not 1024 <= link.test_port <= 65535:
        raise HostDataError(host, "interconnect.test_port", "a port from 1024 to 65535", link.test_port)
    if not TEST_SECONDS_RANGE[0] <= link.test_seconds <= TEST_SECONDS_RANGE[1]:
        raise HostDataError(
            host,
            "interconnect.test_seconds",
            f"{TEST_SECONDS_RANGE[0]} to {TEST_SECONDS_RANGE[1]} seconds",
            link.test_seconds,
        )
    return link


def check_with_cluster(host: str, link: Interconnect, interface: str, address: str, others: dict[str, str]) -> None:
    """The host's ``cluster`` entry uses this link: its ``interconnect`` is the link's name, its
    ``address`` the link's address, and every other node's address (``others``: node ->
    address) is a declared peer, so every node measures its link to every other before Ray
    trusts it."""
    if interface != link.interface:
        raise HostDataError(host, "cluster.interconnect", f"the interconnect's interface ({link.interface})", interface)
    if address != link.ip:
        raise HostDataError(host, "cluster.address", f"the interconnect's address ({link.ip})", address)
    for node, other in others.items():
        if other not in link.peers:
            raise HostDataError(
                host, "interconnect.peers", f"every other node's address, {node}'s {other} included", list(link.peers)
            )
