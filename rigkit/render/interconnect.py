"""
What rigkit writes for the interconnect (host data ``interconnect``), the host's own way:

- **netplan** where the host has it (``netplan`` installed and ``/etc/netplan``: DGX OS and
  Ubuntu): one file, ``/etc/netplan/60-rigkit-interconnect.yaml``, rendered by whatever
  renderer the host's netplan uses (NetworkManager on DGX OS desktop images, networkd on
  servers), so the management link stays with the tool that already runs it;
- **systemd-networkd** elsewhere: ``/etc/systemd/network/10-rigkit-interconnect.network``
  and, when the port is chosen by PCI address or MAC, a ``.link`` file that names it.

Both say the same: the port (by name, or by MAC or PCI path with the name rigkit gives it),
the MTU, the one static address, no DHCP, no router advertisements, no link-local address,
and not required for the host to be "online" (an unplugged cable never holds up the boot).
Values come validated from :mod:`rigkit.hostdata.interconnect`; netplan's YAML is written
with JSON quoting (YAML reads a JSON string as the same string).
"""

from __future__ import annotations

import json

from rigkit.hostdata.interconnect import Interconnect
from rigkit.render.systemd import escape

NETPLAN_FILE = "/etc/netplan/60-rigkit-interconnect.yaml"
NETWORKD_NETWORK = "/etc/systemd/network/10-rigkit-interconnect.network"
NETWORKD_LINK = "/etc/systemd/network/10-rigkit-interconnect.link"
#: Every file rigkit may write for the interconnect (a renderer's files replace the other's).
ALL_FILES = (NETPLAN_FILE, NETWORKD_NETWORK, NETWORKD_LINK)
HEADER = "# Managed by rigkit (host data interconnect): edits are overwritten by the next deploy.\n"


def choose_renderer(link: Interconnect, has_netplan: bool) -> str:
    """``netplan`` where the host has netplan (unless host data says otherwise), else ``networkd``."""
    if link.renderer != "auto":
        return link.renderer
    return "netplan" if has_netplan else "networkd"


def render_netplan(link: Interconnect, mac: str | None) -> str:
    """The netplan file; ``mac`` is the port's MAC where the port is chosen by PCI address or
    MAC (netplan matches no PCI path: the deploy reads the MAC of the PCI function)."""
    q = json.dumps
    lines = [HEADER.rstrip("\n"), "network:", "  version: 2", "  ethernets:", "    rigkit-interconnect:"]
    if mac is not None:
        lines += ["      match:", f"        macaddress: {q(mac)}", f"      set-name: {q(link.interface)}"]
    else:
        lines += ["      match:", f"        name: {q(link.interface)}"]
    lines += [
        f"      mtu: {link.mtu}",
        f"      addresses: [{q(link.address)}]",
        "      dhcp4: false",
        "      dhcp6: false",
        "      accept-ra: false",
        "      link-local: []",
        "      optional: true",
    ]
    return "\n".join(lines) + "\n"


def render_networkd(link: Interconnect) -> dict[str, str]:
    """The networkd files: path -> content (the ``.link`` only where PCI or MAC picks the port)."""
    files = {}
    if link.pci is not None or link.mac is not None:
        match = f"MACAddress={link.mac}" if link.mac is not None else f"Path=pci-{link.pci}"
        files[NETWORKD_LINK] = (
            f"{HEADER}[Match]\n{match}\n\n[Link]\nName={escape(link.interface)}\nMTUBytes={link.mtu}\n"
        )
    files[NETWORKD_NETWORK] = (
        f"{HEADER}[Match]\nName={escape(link.interface)}\n\n"
        f"[Link]\nMTUBytes={link.mtu}\nRequiredForOnline=no\n\n"
        f"[Network]\nAddress={link.address}\nDHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n"
        "ConfigureWithoutCarrier=yes\n"
    )
    return files


def render_files(link: Interconnect, renderer: str, mac: str | None) -> dict[str, str]:
    """Every file of ``renderer`` for the link: path -> content."""
    if renderer == "netplan":
        return {NETPLAN_FILE: render_netplan(link, mac)}
    return render_networkd(link)


SCRIPT = "/usr/local/lib/rigkit/link_check.py"


def check_argv(link: Interconnect) -> list[str]:
    """The measurement of the link (``link_check.py``) with the host data's figures; always
    with the throughput test (judged where ``expected_gbps`` is declared)."""
    argv = ["/usr/bin/python3", SCRIPT, "--interface", link.interface, "--address", link.ip, "--mtu", str(link.mtu)]
    for peer in link.peers:
        argv += ["--peer", peer]
    if link.link_gbps is not None:
        argv += ["--link-gbps", f"{link.link_gbps:g}"]
    if link.expected_gbps is not None:
        argv += ["--expected-gbps", f"{link.expected_gbps:g}"]
    return argv + ["--measure", "--port", str(link.test_port), "--seconds", str(link.test_seconds)]


def summary(report: dict) -> str:
    """One line of a measurement report (``link_check.py``'s JSON)."""
    iface = report.get("interface", "?")
    if not report.get("operstate"):
        return f"interconnect {iface}: " + "; ".join(report.get("problems") or ["not measured"])
    parts = [f"link {report['operstate']}"]
    speed = report.get("speed_gbps")
    expected = report.get("link_gbps")
    parts.append(f"{speed:g} Gb/s negotiated" if speed else "speed unknown")
    if expected:
        parts[-1] += f" (expected {expected:g})"
    parts.append(f"MTU {report.get('mtu')}")
    rdma = ", ".join(d["name"] for d in report.get("rdma") or []) or "none"
    parts.append(f"RDMA {rdma}")
    for peer, seen in (report.get("peers") or {}).items():
        rate = seen.get("gbps")
        text = f"to {peer}: full-size ping {'ok' if seen.get('mtu_ok') else 'FAILED'}"
        text += f", {rate:g} Gb/s" if rate is not None else ", no throughput"
        if report.get("expected_gbps"):
            text += f" (expected {report['expected_gbps']:g})"
        parts.append(text)
    verdict = "ok" if report.get("ok") else "FAILED: " + "; ".join(report.get("problems") or [])
    return f"interconnect {iface}: " + ", ".join(parts) + f"; {verdict}"
