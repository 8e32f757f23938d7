"""The sandbox's "cable" between hosts, beside the management bridge: what a cluster's
interconnect is plugged into, bare (no address: the deploy configures it).

- :func:`cable`: a veth pair with one end in each of two hosts' namespaces (two Sparks and
  their direct cable);
- :func:`switch`: more hosts, each with a veth whose outer end is a port of a bridge of its
  own (no address on this machine: nothing of the sandbox's interconnect is routed here).

Both at MTU 9000 by default, like the Spark's ConnectX-7; :func:`port` names the outer end of
a host's switch port, for tests that set its MTU or throttle it (tc) as a bad cable would.
"""

from __future__ import annotations

from collections.abc import Sequence

from rigkit.sandbox.state import Sandbox, SandboxHost, run

INTERFACE = "ic0"


def switch_name(sb: Sandbox) -> str:
    return f"rkic-{sb.tag}"


def port(sb: Sandbox, host: SandboxHost) -> str:
    """The outer (switch-side) end of ``host``'s interconnect port."""
    return f"rk{sb.tag}c{host.index}"


def cable(a: SandboxHost, b: SandboxHost, mtu: int = 9000, name: str = INTERFACE) -> None:
    """``name`` in ``a``'s and ``b``'s namespaces, the two ends of one veth; replaced if present."""
    for h in (a, b):
        run(["ip", "-n", h.netns, "link", "delete", name], check=False)
    run(["ip", "-n", a.netns, "link", "add", name, "type", "veth", "peer", "name", name, "netns", b.netns])
    for h in (a, b):
        run(["ip", "-n", h.netns, "link", "set", name, "mtu", str(mtu)])


def switch(sb: Sandbox, hosts: Sequence[SandboxHost], mtu: int = 9000, name: str = INTERFACE) -> None:
    """``name`` in every host's namespace, each plugged into one bridge; replaced if present."""
    bridge = switch_name(sb)
    run(["ip", "link", "delete", bridge], check=False)
    run(["ip", "link", "add", bridge, "mtu", str(mtu), "type", "bridge"])
    for h in hosts:
        outer = port(sb, h)
        run(["ip", "link", "delete", outer], check=False)
        run(["ip", "-n", h.netns, "link", "delete", name], check=False)
        run(["ip", "link", "add", outer, "mtu", str(mtu), "type", "veth", "peer", "name", name, "netns", h.netns])
        run(["ip", "-n", h.netns, "link", "set", name, "mtu", str(mtu)])
        run(["ip", "link", "set", outer, "master", bridge, "up"])
    run(["ip", "link", "set", bridge, "up"])


def remove_switch(sb: Sandbox, hosts: Sequence[SandboxHost]) -> None:
    for h in hosts:
        run(["ip", "link", "delete", port(sb, h)], check=False)
    run(["ip", "link", "delete", switch_name(sb)], check=False)
