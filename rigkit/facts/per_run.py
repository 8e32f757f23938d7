"""
Facts read once per host and run. pyinfra 3 asks the host again in every operation that
asks for a fact; the facts rigkit batches (the files a step renders, the states of a step's
units) answer for many operations, so :func:`read` keeps the answer until an operation
that changes what it describes calls :func:`forget`.
"""

from __future__ import annotations

from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from pyinfra.api import FactBase

T = TypeVar("T")
_READ: WeakKeyDictionary[Any, dict[tuple, Any]] = WeakKeyDictionary()


def read(host: Any, fact: type[FactBase[T]], **kwargs: Any) -> T:
    """``host.get_fact(fact, **kwargs)``, asked once per host and run."""
    # Planning (pyinfra without -y) and running apart: the host may change in between.
    key = (fact, tuple(sorted(kwargs.items())), getattr(getattr(host, "state", None), "is_executing", None))
    known = _READ.setdefault(host, {})
    if key not in known:
        known[key] = host.get_fact(fact, **kwargs)
    return known[key]


def forget(host: Any, fact: type[FactBase]) -> None:
    """Ask the host again next time: an operation changed what ``fact`` describes."""
    for key in [k for k in _READ.get(host, {}) if k[0] is fact]:
        del _READ[host][key]


_RUNS: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def for_run(state: Any) -> dict[str, Any]:
    """What rigkit keeps for one run (one pyinfra ``State``, ``host.state``), across hosts and
    operations: dropped with the state, never shared with another run's."""
    return _RUNS.setdefault(state, {})
