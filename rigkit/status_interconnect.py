"""``rigkit status`` for the interconnect: every node that declares one measured at once
(``link_check.py``, the deploy's own check: link, speed, MTU end to end, RDMA, throughput),
one line per host, and each failed check a problem."""

from __future__ import annotations

from typing import Any

import gevent

from rigkit.facts.interconnect import LinkCheck
from rigkit.hostdata import Rig
from rigkit.render.interconnect import check_argv, summary


def facts(state: Any, hosts: list[Any], rigs: dict[str, Rig]) -> dict[str, dict]:
    """Per host (pyinfra hosts, connected) with an interconnect: its measurement, all hosts
    at once (each serves its peers' throughput test while it measures its own)."""
    running = {}
    for host in hosts:
        link = rigs[host.name].interconnect
        if link is not None:
            running[host.name] = state.pool.spawn(host.get_fact, LinkCheck, argv=check_argv(link))
    gevent.joinall(list(running.values()))
    return {
        name: g.value if g.successful() else {"ok": False, "problems": [str(g.exception)]}
        for name, g in running.items()
    }


def lines(report: dict | None) -> list[str]:
    return [] if report is None else ["  " + summary(report)]


def drift(report: dict | None) -> list[str]:
    return [] if report is None else list(report.get("problems") or [])
