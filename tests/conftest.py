from __future__ import annotations

import os
from pathlib import Path

import pytest

from rigkit import sandbox

TEST_STATE = Path(os.environ.get("RIGKIT_TEST_SANDBOX_DIR", "/var/lib/rigkit/sandbox-tests"))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="end-to-end tests need root (sudo) for nspawn hosts")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sandbox_hosts():
    """Two real sandbox hosts for the whole session, torn down at the end.

    The tests use their own sandbox instance (own state dir, bridge and subnet), so a
    sandbox a person has up for their own work is left alone.
    """
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = str(TEST_STATE)
    try:
        sb = sandbox.up(hosts=2)
        yield sb
    finally:
        sandbox.down()
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous
