"""
The interconnect in a deploy (host data ``interconnect``): configured from a bare host, then
measured on every node at once and trusted only when every node's measurement passed, before
anything else of the deploy changes a host (no model, image or Ray unit is touched on a link
that is too slow or whose MTU does not hold end to end).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.operations import files

from rigkit.hostdata import Rig
from rigkit.operations import interconnect as ops
from rigkit.render import interconnect as render

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def linked_nodes(rig: Rig) -> list[str]:
    """The hosts whose measurements this host's trust waits for: the cluster's nodes that
    declare an interconnect (this host alone outside a cluster)."""
    if rig.cluster is None:
        return [rig.host]
    return [n for n in rig.cluster.nodes if host.inventory.get_host(n).data.get("interconnect") is not None]


def bring_up(rig: Rig) -> None:
    """Configure, measure and trust this host's interconnect (nothing where none is declared)."""
    link = rig.interconnect
    if link is None:
        return
    group = rig.cluster.name if rig.cluster is not None else rig.host
    ops.configure(name=f"Interconnect {link.interface} ({link.address}, MTU {link.mtu})", link=link)
    files.put(
        name=f"Script {render.SCRIPT}",
        src=str(SCRIPTS / Path(render.SCRIPT).name),
        dest=render.SCRIPT,
        mode="755",
        create_remote_dir=True,
    )
    ops.measure(name=f"Measure interconnect {link.interface}", link=link, group=group)
    ops.trusted(name=f"Interconnect of {group} trusted on every node", group=group, nodes=linked_nodes(rig))
