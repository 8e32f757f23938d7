"""Host data ``interconnect`` (hostile and legitimate values), its netplan and networkd files,
and the plan that configures it from a host's facts (refusing anything that could cut the
management connection)."""

from __future__ import annotations

import copy

import pytest
from test_cluster import spark_pair

from rigkit.hostdata import parse_rig
from rigkit.hostdata.interconnect import parse_interconnect
from rigkit.hostdata.rig import check_clusters
from rigkit.hostdata.schema import HostDataError
from rigkit.operations import interconnect as ops
from rigkit.render import interconnect as render

LINK = {"interface": "enp1s0f0np0", "address": "192.168.100.11/24", "peers": ["192.168.100.12"]}


def link(**kw):
    return parse_interconnect("spark-1", {**LINK, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"interface": "enP2p1s0f1np1"},
        {"interface": "ib0.8001"},
        {"interface": "eth_1-a"},
        {"pci": "0000:01:00.0", "interface": "cx7a"},
        {"pci": "0002:01:1F.7", "interface": "cx7a"},  # sysfs spells it lower-case: normalised
        {"mac": "AA:bb:cc:dd:ee:01"},
        {"address": "192.168.100.11/31", "peers": ["192.168.100.10"]},
        {"address": "fd00:100::11/64", "peers": ["fd00:100::12", "fd00:100::13"]},
        {"peers": ["192.168.100.12", "192.168.100.13"], "mtu": 1500},
        {"mtu": 9216, "link_gbps": 200, "expected_gbps": 25.5, "renderer": "networkd", "test_seconds": 10},
    ],
)
def test_legitimate_links(kw):
    got = link(**kw)
    assert got.interface == kw.get("interface", LINK["interface"])
    if "pci" in kw:
        assert got.pci == kw["pci"].lower()
    if "mac" in kw:
        assert got.mac == "aa:bb:cc:dd:ee:01"


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"interface": "-enp1s0"}, "interconnect.interface"),  # read as an option
        ({"interface": ".hidden"}, "interconnect.interface"),
        ({"interface": "enp1s0f0np0x12345"}, "interconnect.interface"),  # 16 bytes: IFNAMSIZ
        ({"interface": "eth0:1"}, "interconnect.interface"),  # an alias label, no interface
        ({"interface": "eth0 up"}, "interconnect.interface"),
        ({"interface": "a/b"}, "interconnect.interface"),
        ({"interface": "enp1s0\n[Network]"}, "interconnect.interface"),
        ({"interface": "ënp1s0"}, "interconnect.interface"),
        ({"interface": "lo"}, "interconnect.interface"),
        ({"interface": "all"}, "interconnect.interface"),
        ({"interface": "$(reboot)"}, "interconnect.interface"),
        ({"pci": "0000:01:00.8"}, "interconnect.pci"),  # functions are 0-7
        ({"pci": "0000:01:20.0"}, "interconnect.pci"),  # devices are 0-31
        ({"pci": "01:00.0"}, "interconnect.pci"),
        ({"pci": "0000:01:00.0/../x"}, "interconnect.pci"),
        ({"pci": "0000:01:00.0", "mac": "aa:bb:cc:dd:ee:01"}, "interconnect"),
        ({"mac": "01:00:5e:00:00:01"}, "interconnect.mac"),  # multicast
        ({"mac": "00:00:00:00:00:00"}, "interconnect.mac"),
        ({"mac": "aa-bb-cc-dd-ee-01"}, "interconnect.mac"),
        ({"mac": "aa:bb:cc:dd:ee:01\n"}, "interconnect.mac"),
        ({"address": "192.168.100.11"}, "interconnect.address"),  # no prefix
        ({"address": "192.168.100.11/32"}, "interconnect.address"),
        ({"address": "192.168.100.11/024"}, "interconnect.address"),
        ({"address": "192.168.100.0/24"}, "interconnect.address"),  # the network
        ({"address": "192.168.100.255/24", "peers": ["192.168.100.12"]}, "interconnect.address"),
        ({"address": "127.0.0.2/8", "peers": ["127.0.0.3"]}, "interconnect.address"),
        ({"address": "169.254.0.2/16", "peers": ["169.254.0.3"]}, "interconnect.address"),
        ({"address": "fe80::1/64", "peers": ["fe80::2"]}, "interconnect.address"),
        ({"address": "fd00::1/48", "peers": ["fd00::2"]}, "interconnect.address"),
        ({"address": "192.168.100.11/24 dev lo"}, "interconnect.address"),
        ({"peers": []}, "interconnect.peers"),
        ({"peers": ["192.168.101.12"]}, "interconnect.peers[0]"),  # outside the link's network
        ({"peers": ["192.168.100.11"]}, "interconnect.peers[0]"),  # itself
        ({"peers": ["192.168.100.12", "192.168.100.12"]}, "interconnect.peers[1]"),
        ({"peers": ["192.168.100.255"]}, "interconnect.peers[0]"),
        ({"peers": ["192.168.100.12/24"]}, "interconnect.peers[0]"),
        ({"peers": ["8.8.8.8"]}, "interconnect.peers[0]"),
        ({"peers": "192.168.100.12"}, "interconnect.peers"),
        ({"mtu": 576}, "interconnect.mtu"),
        ({"mtu": 65536}, "interconnect.mtu"),
        ({"mtu": "9000"}, "interconnect.mtu"),
        ({"expected_gbps": 0}, "interconnect.expected_gbps"),
        ({"link_gbps": -200}, "interconnect.link_gbps"),
        ({"renderer": "ifupdown"}, "interconnect.renderer"),
        ({"test_port": 22}, "interconnect.test_port"),
        ({"test_seconds": 600}, "interconnect.test_seconds"),
        ({"gateway": "192.168.100.1"}, "interconnect.gateway"),
    ],
)
def test_hostile_links_are_refused_naming_the_key(kw, key):
    with pytest.raises(HostDataError) as info:
        link(**kw)
    assert info.value.key == key


def clustered_pair() -> dict[str, dict]:
    data = spark_pair()
    data["spark-1"]["interconnect"] = dict(LINK)
    data["spark-2"]["interconnect"] = {**LINK, "address": "192.168.100.12/24", "peers": ["192.168.100.11"]}
    return data


def test_interconnect_agrees_with_the_cluster():
    data = clustered_pair()
    check_clusters(data)
    assert parse_rig("spark-1", data["spark-1"]).interconnect == link()

    wrong_name = copy.deepcopy(data)
    wrong_name["spark-2"]["interconnect"]["interface"] = "enp1s0f1np1"
    with pytest.raises(HostDataError, match=r"host spark-2: cluster.interconnect: expected the interconnect's"):
        check_clusters(wrong_name)
    wrong_address = copy.deepcopy(data)
    wrong_address["spark-2"]["interconnect"].update(address="192.168.100.13/24")
    with pytest.raises(HostDataError, match=r"cluster.address: expected the interconnect's address \(192.168.100.13"):
        check_clusters(wrong_address)
    missing_peer = copy.deepcopy(data)
    missing_peer["spark-1"]["interconnect"]["peers"] = ["192.168.100.13"]
    with pytest.raises(HostDataError, match=r"spark-1: interconnect.peers: expected every other node's address"):
        check_clusters(missing_peer)


def test_netplan_file():
    assert render.render_netplan(link(mtu=9000), None) == (
        "# Managed by rigkit (host data interconnect): edits are overwritten by the next deploy.\n"
        "network:\n  version: 2\n  ethernets:\n    rigkit-interconnect:\n"
        '      match:\n        name: "enp1s0f0np0"\n'
        '      mtu: 9000\n      addresses: ["192.168.100.11/24"]\n'
        "      dhcp4: false\n      dhcp6: false\n      accept-ra: false\n      link-local: []\n      optional: true\n"
    )
    by_pci = render.render_netplan(link(pci="0000:01:00.0", interface="cx7a"), "aa:bb:cc:dd:ee:01")
    assert '      match:\n        macaddress: "aa:bb:cc:dd:ee:01"\n      set-name: "cx7a"\n' in by_pci


def test_networkd_files():
    files = render.render_networkd(link(mtu=9000))
    assert list(files) == [render.NETWORKD_NETWORK]
    network = files[render.NETWORKD_NETWORK]
    assert "[Match]\nName=enp1s0f0np0\n" in network
    assert "[Link]\nMTUBytes=9000\nRequiredForOnline=no\n" in network
    assert "Address=192.168.100.11/24\nDHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n" in network
    by_pci = render.render_networkd(link(pci="0000:01:00.0", interface="cx7a"))
    assert by_pci[render.NETWORKD_LINK].endswith("[Match]\nPath=pci-0000:01:00.0\n\n[Link]\nName=cx7a\nMTUBytes=9000\n")
    by_mac = render.render_networkd(link(mac="aa:bb:cc:dd:ee:01"))
    assert "[Match]\nMACAddress=aa:bb:cc:dd:ee:01\n" in by_mac[render.NETWORKD_LINK]


def test_renderer_is_netplan_where_the_host_has_it():
    assert render.choose_renderer(link(), has_netplan=True) == "netplan"
    assert render.choose_renderer(link(), has_netplan=False) == "networkd"
    assert render.choose_renderer(link(renderer="networkd"), has_netplan=True) == "networkd"


def port(name, address=None, **kw):
    return {
        "name": name,
        "mac": kw.pop("mac", "aa:bb:cc:dd:ee:01"),
        "pci": kw.pop("pci", None),
        "mtu": kw.pop("mtu", 1500),
        "operstate": "up",
        "up": kw.pop("up", True),
        "rdma": [],
        "addresses": [{"address": address, "global": True}] if address else [],
    }


def facts(*ports, **kw):
    return {
        "links": [port("lo"), port("enP7s7", "10.0.0.5/24", mac="aa:bb:cc:dd:ee:99"), *ports],
        "default_route": ["enP7s7"],
        "ssh_server": "10.0.0.5",
        "ssh_client": "10.0.0.2",
        "files": {p: None for p in render.ALL_FILES},
        "netplan": True,
        "networkd_active": False,
        "networkd_enabled": False,
        "networkmanager_active": True,
        **kw,
    }


def test_plan_from_bare_then_nothing():
    bare = facts(port("enp1s0f0np0"))
    p = ops.plan(link(), bare)
    assert p.renderer == "netplan" and p.changes and not p.rename
    assert list(p.writes) == [render.NETPLAN_FILE]
    cmds = [str(getattr(c, "bits", c)) for c in ops.commands(link(), p, bare)]
    assert any("netplan', 'generate'" in c for c in cmds) and not any("apply" in c for c in cmds)
    done = facts(
        port("enp1s0f0np0", "192.168.100.11/24", mtu=9000),
        files={render.NETPLAN_FILE: p.writes[render.NETPLAN_FILE], render.NETWORKD_NETWORK: None},
    )
    assert not ops.plan(link(), done).changes  # idempotent


def test_plan_by_pci_renames_the_port_and_matches_its_mac():
    f = facts(port("enp1s0f0np0", pci="0000:01:00.0", mac="aa:bb:cc:dd:ee:01"), netplan=False)
    p = ops.plan(link(pci="0000:01:00.0", interface="cx7a"), f)
    assert p.rename and p.port == "enp1s0f0np0" and p.renderer == "networkd"
    assert set(p.writes) == {render.NETWORKD_LINK, render.NETWORKD_NETWORK}
    assert p.warnings  # networkd not enabled: configured now, not at boot


def test_stale_address_and_other_renderer_files_are_replaced():
    f = facts(
        port("enp1s0f0np0", "192.168.50.1/24", mtu=9000),
        files={render.NETPLAN_FILE: "old", render.NETWORKD_NETWORK: "old", render.NETWORKD_LINK: None},
    )
    p = ops.plan(link(), f)
    assert p.stale_addresses == ["192.168.50.1/24"] and p.removes == [render.NETWORKD_NETWORK]


@pytest.mark.parametrize(
    "f, message",
    [
        (facts(), "no port with the name enp1s0f0np0"),
        (facts(port("enp1s0f0np0"), default_route=["enp1s0f0np0"]), "carries the management connection"),
        (facts(port("enp1s0f0np0", "10.0.0.5/24"), default_route=[]), "carries the management connection"),
        (facts(port("enp1s0f0np0"), ssh_client="192.168.100.2"), "inside the interconnect's network"),
        (facts(port("enp1s0f0np0"), port("eth9", "192.168.100.50/25")), "eth9 already has 192.168.100.50/25"),
    ],
)
def test_plan_refuses_what_could_cut_the_management_connection(f, message):
    with pytest.raises(ops.InterconnectRefused, match=message):
        ops.plan(link(), f)


def test_plan_refuses_a_pci_address_the_host_lacks():
    with pytest.raises(ops.InterconnectRefused, match=r"no port with PCI address 0000:02:00.0 .*enp1s0f0np0"):
        ops.plan(link(pci="0000:02:00.0"), facts(port("enp1s0f0np0", pci="0000:01:00.0")))
