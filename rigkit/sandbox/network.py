"""Addresses and links: each sandbox gets a /24 of the benchmarking range on a bridge of its
own, each host a network namespace with a veth on that bridge; and waiting for ports."""

from __future__ import annotations

import ipaddress
import socket
import time

from rigkit.sandbox.state import SandboxError, run

# Benchmarking range (RFC 2544): never a real network, never a private range.
ADDRESS_POOL = ipaddress.IPv4Network("198.18.0.0/15")


def used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = run(["ip", "-4", "-o", "addr", "show"]).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def allocate_subnet(tag: str) -> ipaddress.IPv4Network:
    """The first /24 of the pool that no interface on this machine uses."""
    used = used_networks()
    # Start from a slot derived from the tag so two instances rarely probe the same /24.
    subnets = list(ADDRESS_POOL.subnets(new_prefix=24))
    start = int(tag, 16) % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(n) for n in used):
            return subnet
    raise SandboxError(f"no free /24 left in {ADDRESS_POOL} for the sandbox bridge")


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def netns_list() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line]


def wait_port(address: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def ssh_ready(address: str, timeout: float) -> bool:
    """True once sshd answers with its banner (a bare TCP accept is not enough)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=1) as conn:
                conn.settimeout(2)
                if conn.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False
