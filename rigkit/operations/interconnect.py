"""
Configure the interconnect (host data ``interconnect``) from a bare host, without touching
the management connection pyinfra is using:

- the port is found by name, PCI address or MAC (:class:`rigkit.facts.interconnect.InterconnectHost`);
  a port that carries the management connection (the address the SSH session came in on, or
  the default route), an address of the link's network on another port, or a management
  address inside the link's network is refused before anything changes;
- the host's own configuration is written for the next boot (netplan or systemd-networkd:
  :mod:`rigkit.render.interconnect`), and only *loaded* (``netplan generate``, ``networkctl
  reload``, ``nmcli connection reload``), never applied to every link (``netplan apply``
  reconfigures every interface, the management one included);
- the link itself is brought to the declared state now with ``ip`` on that one port: its
  name, MTU, its one address, up.

Nothing to do when the files and the port already are as declared.
"""

from __future__ import annotations

import ipaddress
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, OperationError, QuoteString, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from rigkit.facts import per_run
from rigkit.facts.interconnect import InterconnectHost, LinkCheck
from rigkit.hostdata.interconnect import Interconnect
from rigkit.render.interconnect import ALL_FILES, NETPLAN_FILE, check_argv, choose_renderer, render_files, summary

logger = logging.getLogger("pyinfra")


class InterconnectRefused(OperationError):
    """The interconnect cannot be configured on this host as declared (nothing was changed)."""


@dataclass
class Plan:
    """What configuring the link takes on one host, from its facts."""

    port: str
    renderer: str
    writes: dict[str, str] = field(default_factory=dict)
    removes: list[str] = field(default_factory=list)
    rename: bool = False
    stale_addresses: list[str] = field(default_factory=list)
    live_ok: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.writes or self.removes or not self.live_ok)


def _find_port(link: Interconnect, links: list[dict]) -> dict:
    if link.pci is not None:
        found = [p for p in links if p.get("pci") == link.pci]
        what = f"PCI address {link.pci}"
    elif link.mac is not None:
        found = [p for p in links if p.get("mac") == link.mac]
        what = f"MAC {link.mac}"
    else:
        found = [p for p in links if p["name"] == link.interface]
        what = f"the name {link.interface}"
    if len(found) != 1:
        names = ", ".join(
            f"{p['name']} ({p.get('pci') or 'no PCI'}, {p.get('mac')})" for p in links if p["name"] != "lo"
        )
        raise InterconnectRefused(
            f"interconnect: {'no' if not found else 'more than one'} port with {what} on this host "
            f"(ports: {names or 'none'}); nothing was changed"
        )
    return found[0]


def _global_addresses(port: dict) -> list[str]:
    return [a["address"] for a in port.get("addresses", []) if a.get("global")]


def management_links(facts: dict) -> set[str]:
    """The ports that carry the management connection: the one holding the address the SSH
    session came in on, and those of the default route."""
    names = set(facts.get("default_route") or [])
    server = facts.get("ssh_server")
    for port in facts["links"]:
        if server and any(str(ipaddress.ip_interface(a).ip) == server for a in _global_addresses(port)):
            names.add(port["name"])
    return names


def plan(link: Interconnect, facts: dict) -> Plan:
    """What to change on a host (facts: :class:`InterconnectHost`) for ``link``; raises
    :class:`InterconnectRefused` (naming why) where configuring it could cut the management
    connection or clash with another port."""
    links = facts["links"]
    port = _find_port(link, links)
    name = port["name"]
    managed = management_links(facts)
    if name in managed:
        raise InterconnectRefused(
            f"interconnect: {name} carries the management connection (the SSH session or the default "
            "route); name the cluster's own port; nothing was changed"
        )
    for who in ("ssh_server", "ssh_client"):
        address = facts.get(who)
        if address and ipaddress.ip_address(address) in link.network:
            raise InterconnectRefused(
                f"interconnect: the management connection's {address} is inside the interconnect's network "
                f"{link.network}; choose another network for the link; nothing was changed"
            )
    for other in links:
        if other is port:
            continue
        if other["name"] == link.interface:
            raise InterconnectRefused(
                f"interconnect: another port is already named {link.interface}; nothing was changed"
            )
        for address in _global_addresses(other):
            if ipaddress.ip_interface(address).network.overlaps(link.network):
                raise InterconnectRefused(
                    f"interconnect: {other['name']} already has {address}, in the interconnect's network "
                    f"{link.network}; nothing was changed"
                )
    renderer = choose_renderer(link, bool(facts.get("netplan")))
    wanted = render_files(link, renderer, port.get("mac") if link.pci or link.mac else None)
    on_host = facts.get("files") or {}
    addresses = _global_addresses(port)
    result = Plan(
        port=name,
        renderer=renderer,
        writes={p: c for p, c in wanted.items() if on_host.get(p) != c},
        removes=[p for p in ALL_FILES if p not in wanted and on_host.get(p) is not None],
        rename=name != link.interface,
        stale_addresses=[a for a in addresses if a != link.address],
        live_ok=name == link.interface and port["mtu"] == link.mtu and addresses == [link.address] and port["up"],
    )
    if renderer == "networkd" and not facts.get("networkd_enabled"):
        result.warnings.append(
            f"interconnect: {link.interface} is configured now; systemd-networkd is not enabled on this host, so "
            "it comes back at boot once systemd-networkd is enabled (rigkit does not enable it: it would also "
            "take over the links other .network files match)"
        )
    return result


def _write(path: str, content: str, mode: str) -> list:
    staged = f"{path}.rigkit-new"
    return [
        StringCommand("install", "-d", "-m", "755", QuoteString(posixpath.dirname(path))),
        FileUploadCommand(StringIO(content), staged),
        StringCommand("chmod", mode, QuoteString(staged), "&&", "mv", "-f", QuoteString(staged), QuoteString(path)),
    ]


def commands(link: Interconnect, p: Plan, facts: dict) -> list:
    """The commands of a plan, in order: files, the port's name, its MTU and address, up,
    then the host's network tools told to load the files."""
    cmds: list = []
    for path, content in p.writes.items():
        # netplan warns about (and future versions refuse) files others can read.
        cmds += _write(path, content, "600" if path == NETPLAN_FILE else "644")
    for path in p.removes:
        cmds.append(StringCommand("rm", "-f", QuoteString(path)))
    dev = QuoteString(link.interface)
    if p.rename:
        old = QuoteString(p.port)
        cmds.append(StringCommand("ip", "link", "set", "dev", old, "down"))
        cmds.append(StringCommand("ip", "link", "set", "dev", old, "name", dev))
    cmds.append(StringCommand("ip", "link", "set", "dev", dev, "mtu", str(link.mtu)))
    for address in p.stale_addresses:
        cmds.append(StringCommand("ip", "addr", "del", QuoteString(address), "dev", dev))
    cmds.append(StringCommand("ip", "addr", "replace", QuoteString(link.address), "dev", dev))
    cmds.append(StringCommand("ip", "link", "set", "dev", dev, "up"))
    if p.writes or p.removes:
        if p.renderer == "netplan":
            cmds.append(StringCommand("netplan", "generate"))
            if facts.get("networkmanager_active"):
                cmds.append(StringCommand("nmcli", "connection", "reload"))
        if facts.get("networkd_active"):
            cmds.append(StringCommand("networkctl", "reload"))
    return cmds


@operation()
def configure(link: Interconnect):
    """
    Bring the interconnect port to ``link`` (its name, MTU and one address, up) now, and
    write the host's own network configuration for it (netplan or systemd-networkd) for the
    next boot, touching no other port.

    + link: the host's validated ``interconnect`` (:func:`rigkit.hostdata.interconnect.parse_interconnect`)

    .. code:: python

        interconnect.configure(
            name="Interconnect enp1s0f0np0",
            link=parse_interconnect("spark-1", {"interface": "enp1s0f0np0",
                                                "address": "192.168.100.11/24",
                                                "peers": ["192.168.100.12"]}),
        )
    """
    facts = host.get_fact(InterconnectHost)
    p = plan(link, facts)
    if not p.changes:
        host.noop(f"interconnect {link.interface} is configured ({link.address}, MTU {link.mtu}, {p.renderer})")
        return
    for warning in p.warnings:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    yield from commands(link, p, facts)


def reports(state: State, group: str) -> dict[str, dict]:
    """Node -> its measurement report, filled in this run as :func:`measure` runs on each node."""
    return per_run.for_run(state).setdefault("interconnect_reports", {}).setdefault(group, {})


def _measure(state: State, host: Host, group: str, argv: list[str]) -> bool:
    report = host.get_fact(LinkCheck, argv=argv)  # measured now, with every node measuring at once
    reports(state, group)[host.name] = report
    line = summary(report)
    if report.get("ok"):
        host.log_styled(line, log_func=logger.info)
    else:
        host.log_styled(line, fg="red", log_func=logger.error)
    return True


def failures(group: str, nodes: Sequence[str], found: dict[str, dict]) -> list[str]:
    """Every problem the nodes' measurements found (a node that did not measure is one)."""
    problems = []
    for node in nodes:
        report = found.get(node)
        if report is None:
            problems.append(f"{node}: its interconnect was not measured")
        else:
            problems += [f"{node}: {p}" for p in report.get("problems") or []]
    return problems


def _trusted(state: State, host: Host, group: str, nodes: Sequence[str]) -> bool:
    problems = failures(group, nodes, reports(state, group))
    if problems:
        host.log_styled(
            f"Refused: the interconnect of {group} is not trusted, nothing starts: {'; '.join(problems)}",
            fg="red",
            log_func=logger.error,
        )
        return False
    return True


@operation(is_idempotent=False)
def measure(link: Interconnect, group: str):
    """
    Measure the interconnect now (``link_check.py``: link up, negotiated speed, MTU end to end,
    RDMA devices, throughput to each peer) and record the report for :func:`trusted`. Runs on
    every node of ``group`` at once (each serves its peers' throughput test); changes nothing.

    + link: the host's validated ``interconnect``
    + group: what the nodes share (the cluster's name): the reports :func:`trusted` compares

    .. code:: python

        interconnect.measure(name="Measure the interconnect", link=rig.interconnect, group="qwen122b")
    """
    yield FunctionCommand(_measure, (group, check_argv(link)), {})


@operation(is_idempotent=False)
def trusted(group: str, nodes: Sequence[str]):
    """
    Fail on every node of ``group`` unless every node's measurement passed; the error names
    each node, its link and both figures (measured and expected), so nothing after it starts.

    + group: the name :func:`measure` recorded under
    + nodes: the inventory hosts whose measurements must all pass

    .. code:: python

        interconnect.trusted(name="Interconnect trusted", group="qwen122b", nodes=["spark-1", "spark-2"])
    """
    yield FunctionCommand(_trusted, (group, list(nodes)), {})
