"""
A Ray cluster across inventory hosts (host data ``cluster``, :mod:`rigkit.hostdata.cluster`):
validated across every host before any host changes, then on each node the Ray user, Ray
itself (from a wheelhouse where the nodes cannot reach an index), the role unit, and on the
head the readiness unit, run after anything changed.

    pyinfra inventories/INVENTORY.py deploys/ray_cluster.py
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, pip, server, systemd
from pyinfra.operations.util import any_changed

from rigkit.hostdata.cluster import Cluster, parse_cluster, validate_cluster
from rigkit.hostdata.gpus import parse_gpus
from rigkit.render import ray as render

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REMOTE_WHEELS = "/var/cache/rigkit/ray-wheels"


def cluster_nodes() -> tuple[Cluster, dict[str, Cluster], int] | None:
    """This host's cluster entry, every node's (head first) and the GPUs they bring, after
    validating the whole inventory; None for a host outside any cluster."""
    data = {h.name: h.data.dict() for h in inventory}
    validate_cluster(data)
    raw = host.data.get("cluster")
    if raw is None:
        return None
    mine = parse_cluster(host.name, raw)
    nodes = {n: parse_cluster(n, data[n]["cluster"]) for n in mine.nodes}
    gpus = sum(parse_gpus(n, data[n].get("gpus")).count for n in mine.nodes)
    return mine, nodes, gpus


@deploy("Ray cluster node")
def ray_cluster():
    found = cluster_nodes()
    if found is None:
        return
    mine, nodes, gpus = found
    head = nodes[mine.head]
    is_head = host.name == mine.head
    changed = []
    if mine.wheelhouse is not None:
        venv = str(Path(mine.ray).parent.parent)
        apt.packages(
            name="Python virtualenvs", packages=["python3-venv"], update=True, cache_time=86400, no_recommends=True
        )
        wheels = sorted(Path(mine.wheelhouse).glob("*.whl"))
        for wheel in wheels:
            files.put(name=f"Wheel {wheel.name}", src=str(wheel), dest=f"{REMOTE_WHEELS}/{wheel.name}", mode="644")
        pip.venv(name=f"Ray virtualenv {venv}", path=venv, python="python3")
        changed.append(
            pip.packages(
                name=f"Ray {mine.ray_version} from the wheelhouse",
                packages=[f"ray=={mine.ray_version}"],
                virtualenv=venv,
                extra_install_args=f"--no-index --find-links {REMOTE_WHEELS}",
            )
        )
    server.user(
        name=f"System user {render.USER}",
        user=render.USER,
        system=True,
        shell="/usr/sbin/nologin",
        home=f"/var/lib/{render.USER}",
        create_home=False,
    )
    for script in (render.WAIT_HEAD, render.READY):
        changed.append(
            files.put(
                name=f"Script {script}",
                src=str(SCRIPTS / Path(script).name),
                dest=script,
                mode="755",
                create_remote_dir=True,
            )
        )
    unit = render.node_unit_name(mine)
    changed.append(
        files.put(
            name=f"Unit {unit}",
            src=StringIO(render.render_node_unit(mine, head, is_head)),
            dest=f"/etc/systemd/system/{unit}",
            mode="644",
        )
    )
    if is_head:
        changed.append(
            files.put(
                name=f"Unit {render.ready_unit_name(mine)}",
                src=StringIO(render.render_ready_unit(head, nodes, gpus)),
                dest=f"/etc/systemd/system/{render.ready_unit_name(mine)}",
                mode="644",
            )
        )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*changed))
    start = systemd.service(name=f"Start {unit}", service=unit, running=True, enabled=True)
    systemd.service(
        name=f"Restart {unit}",
        service=unit,
        restarted=True,
        _if=[any_changed(*changed), lambda: not start.did_change()],
    )
    if is_head:
        # Workers join in the same operation on their hosts; the check waits for them.
        systemd.service(
            name=f"Ray cluster {mine.name}: every node joined",
            service=render.ready_unit_name(mine),
            restarted=True,
            _if=any_changed(start, *changed),
        )
