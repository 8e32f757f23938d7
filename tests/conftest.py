from __future__ import annotations

import os
import secrets
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
        # Fresh disks: hosts keep theirs across `up` now, and a killed session's leftovers
        # would make the first deploy a no-op.
        sandbox.down()
        sb = sandbox.up(hosts=2)
        yield sb
    finally:
        sandbox.down()
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


@pytest.fixture(scope="session")
def api_key(tmp_path_factory):
    """The API key sandbox-1's service runs with: (secret, key file on this machine)."""
    secret = "rk-" + secrets.token_hex(16)
    path = tmp_path_factory.mktemp("secrets") / "tiny.key"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, str(path)


@pytest.fixture(scope="session")
def first_deploy(sandbox_hosts, api_key):
    """The rig deploy on sandbox-1 (a cold llama.cpp build: minutes on 2 cores), shared by
    every test module that needs a serving host."""
    from pyinfra_run import run_pyinfra

    env = {"RIGKIT_SANDBOX_API_KEY_FILE": api_key[1]}
    run = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", env=env)
    assert run.returncode == 0, run.stderr[-5000:]
    return run, env
