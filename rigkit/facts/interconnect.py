"""What a host's network looks like to the interconnect operation: its ports (name, MAC, PCI
address, MTU, state, addresses, RDMA devices), whether it has netplan, which links carry the
management connection (the address the SSH session came in on, the default route), and
rigkit's interconnect files as they are. Read-only: sysfs, /proc and the files."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

from rigkit.render.interconnect import ALL_FILES

# Run on the host by python3 (every host rigkit deploys to has it): one JSON document.
_READER = r"""
import json, os, re, subprocess, sys
net = "/sys/class/net"
def read(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return None
links = []
# Names, MACs, MTUs and states from netlink (the host's own network namespace, which a
# container's sysfs may not show); the PCI function and RDMA devices from sysfs.
for l in json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout or "[]"):
    name = l["ifname"]
    d = os.path.join(net, name)
    dev = os.path.realpath(os.path.join(d, "device")) if os.path.exists(os.path.join(d, "device")) else ""
    ib = os.path.join(d, "device", "infiniband")
    links.append({
        "name": name, "mac": l.get("address"),
        "pci": next((p for p in reversed(dev.split("/")) if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", p)), None),
        "mtu": int(l.get("mtu") or 0), "operstate": (l.get("operstate") or "").lower(),
        "up": "UP" in (l.get("flags") or []),
        "rdma": sorted(os.listdir(ib)) if os.path.isdir(ib) else [],
    })
addrs = {}
out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
for line in out.splitlines():
    f = line.split()
    if len(f) > 3 and f[2] in ("inet", "inet6"):
        addrs.setdefault(f[1], []).append({"address": f[3], "global": "scope" in f and f[f.index("scope") + 1] == "global"})
for l in links:
    l["addresses"] = addrs.get(l["name"], [])
default = []
for line in (read("/proc/net/route") or "").splitlines()[1:]:
    f = line.split()
    if len(f) > 2 and f[1] == "00000000":
        default.append(f[0])
ssh = (os.environ.get("SSH_CONNECTION") or "").split()
files = {p: read(p) for p in sys.argv[1:]}
print(json.dumps({"links": links, "default_route": default, "ssh_server": ssh[2] if len(ssh) == 4 else None,
    "ssh_client": ssh[0] if len(ssh) == 4 else None, "files": {p: (c + "\n" if c is not None else None) for p, c in files.items()},
    "netplan": os.path.isdir("/etc/netplan") and any(os.access(os.path.join(p, "netplan"), os.X_OK) for p in ("/usr/sbin", "/usr/bin", "/sbin")),
    "networkd_active": subprocess.run(["systemctl", "is-active", "--quiet", "systemd-networkd"]).returncode == 0,
    "networkd_enabled": subprocess.run(["systemctl", "is-enabled", "--quiet", "systemd-networkd"]).returncode == 0,
    "networkmanager_active": subprocess.run(["systemctl", "is-active", "--quiet", "NetworkManager"]).returncode == 0}))
"""


class InterconnectHost(FactBase[dict]):
    """The host's ports and management links, and rigkit's interconnect files.

    .. code:: python

        {"links": [{"name": "enp1s0f0np0", "mac": "aa:bb:cc:dd:ee:01", "pci": "0000:01:00.0",
                    "mtu": 9000, "operstate": "up", "up": True, "rdma": ["mlx5_0"],
                    "addresses": [{"address": "192.168.100.11/24", "global": True}]}],
         "default_route": ["enP7s7"], "ssh_server": "10.0.0.5", "ssh_client": "10.0.0.2",
         "files": {"/etc/netplan/60-rigkit-interconnect.yaml": None}, "netplan": True,
         "networkd_active": False, "networkd_enabled": False, "networkmanager_active": True}
    """

    def command(self) -> StringCommand:
        return StringCommand("python3", "-c", QuoteString(_READER), *(QuoteString(p) for p in ALL_FILES))

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output))


class LinkCheck(FactBase[dict]):
    """The interconnect measured now (``link_check.py``, run with :func:`rigkit.render.interconnect.check_argv`);
    every node of the link runs it at once (each serves its peers' throughput test).

    .. code:: python

        {"interface": "enp1s0f0np0", "operstate": "up", "speed_gbps": 200.0, "mtu": 9000,
         "rdma": [{"name": "mlx5_0", "states": ["4: ACTIVE"]}],
         "peers": {"192.168.100.12": {"mtu_ok": True, "gbps": 31.2}},
         "link_gbps": 200.0, "expected_gbps": 25.0, "problems": [], "ok": True}
    """

    def command(self, argv: list[str]) -> StringCommand:
        return StringCommand(*(QuoteString(a) for a in argv), "2>/dev/null", "||", "true")

    def process(self, output: list[str]) -> dict:
        try:
            report = json.loads("\n".join(output))
        except ValueError:
            report = None
        if not isinstance(report, dict):
            return {"ok": False, "problems": ["link_check.py gave no report"]}
        return report
