"""Hub models end to end: a token-protected Hub mirror on the sandbox gateway, ``rigkit lock``,
then the models step (``rigkit.models.deploy``) through pyinfra on 2 real hosts; byte-identical shards, a no-op second
run, a missing lock stopping the deploy before any host changes, the token never printed."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest
from pyinfra_run import REPO, run_pyinfra, ssh

from rigkit import sandbox
from rigkit.models import hub, lockfile, mirror

pytestmark = pytest.mark.e2e

HUB_REPO = "rigkit-test/tiny-shards"
INCLUDE = "Q8/*.gguf"
DEST = "/srv/models/tiny-hub"
FIRST = "Q8/tiny-00001-of-00002.gguf"
MARKER = "/etc/rigkit-e2e-model"  # the deploy writes the resolved service model path here

DEPLOY = """
from io import StringIO

from pyinfra import host
from pyinfra.operations import files

from rigkit.hostdata import rig_for
from rigkit.models.deploy import models

config = rig_for(host)  # resolves "ref:tiny" through the lock, or fails before any change
models(config).wait()  # the downloads run in the background until here
files.put(name="Resolved model path", src=StringIO(config.services[0].model + "\\n"), dest="{marker}")
"""


@pytest.fixture(scope="module")
def hub_files(sandbox_hosts):
    """2 shards and a README in the sandbox's Hub mirror dir (<cache>/hub)."""
    repo_dir = sandbox.cache_dir() / "hub" / HUB_REPO
    shutil.rmtree(repo_dir, ignore_errors=True)
    files = {
        FIRST: os.urandom(3_000_000),
        "Q8/tiny-00002-of-00002.gguf": os.urandom(2_000_000),
        "README.md": b"# tiny shards for rigkit's end-to-end test\n",
    }
    for path, data in files.items():
        (repo_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / path).write_bytes(data)
    yield files
    shutil.rmtree(repo_dir, ignore_errors=True)
    try:
        repo_dir.parent.rmdir()
    except OSError:
        pass


@pytest.fixture(scope="module")
def token_mirror(sandbox_hosts, hub_files):
    """The same directory served with a token, on the gateway (the hosts reach it)."""
    token = "hf_e2e_" + secrets.token_hex(16)
    srv = mirror.serve(str(sandbox.cache_dir() / "hub"), host=sandbox_hosts.gateway, port=0, token=token)
    yield srv, token
    srv.stop()


def write_inventory(tmp_path, endpoint: str):
    inv = tmp_path / "hubhosts.py"
    inv.write_text(
        textwrap.dedent(f"""
        from rigkit.models.lockfile import lock_path_for
        from rigkit.sandbox import pyinfra_hosts

        def rig_data(data):
            return {{
                "model_lock": str(lock_path_for(__file__)),
                "hf_endpoint": {endpoint!r},
                "hf_insecure_http": True,  # the sandbox's mirror: plain http, no token
                "llama_cpp": {{"ref": "b11312", "cuda": False}},
                "models": [{{"name": "tiny", "repo": {HUB_REPO!r}, "revision": "main",
                             "include": [{INCLUDE!r}], "dest": {DEST!r}}}],
                "services": [{{"name": "tiny", "model": "ref:tiny", "n_gpu_layers": 0}}],
            }}

        hub_hosts = [(name, {{**data, **rig_data(data)}}) for name, data in pyinfra_hosts()]
    """)
    )
    deploy = tmp_path / "models_deploy.py"
    deploy.write_text(DEPLOY.format(marker=MARKER))
    return inv, deploy


def test_hub_models_on_two_hosts(sandbox_hosts, hub_files, token_mirror, tmp_path):
    sb = sandbox_hosts
    srv, token = token_mirror
    env = {"HF_TOKEN": token, "HF_TOKEN_PATH": str(tmp_path / "no-token-file")}
    # The hosts fetch from the sandbox's own mirror over plain http (hf_insecure_http): the
    # token in the environment is never sent there, neither by the lock nor by the hosts.
    inv, deploy = write_inventory(tmp_path, sb.hf_endpoint)
    outputs = []
    # A token-protected mirror across the network on plain http gets no token from rigkit.
    with pytest.raises(hub.HubError, match="refusing to send the Hub token"):
        hub.HubClient(srv.url, token)

    # Lock through the CLI, against that mirror.
    locked = subprocess.run(
        [sys.executable, "-m", "rigkit.cli", "lock", str(inv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    outputs.append(locked.stdout + locked.stderr)
    assert locked.returncode == 0, locked.stderr
    assert "plain http, the Hub token is not sent there" in locked.stdout
    lock = lockfile.load(lockfile.lock_path_for(inv))
    (entry,) = lock.values()
    assert [f.path for f in entry.files] == sorted(p for p in hub_files if p.endswith(".gguf"))
    # The sandbox's own mirror (no token) serves the same commit at sandbox_hf_endpoint.
    data = dict(sandbox.pyinfra_hosts())[sb.hosts[0].name]
    assert data["sandbox_hf_endpoint"] == sb.hf_endpoint
    assert hub.HubClient(sb.hf_endpoint).resolve_revision(HUB_REPO, "main") == entry.sha

    first = run_pyinfra(str(inv), str(deploy), "-vv", env=env, timeout=300)
    outputs.append(first.stdout + first.stderr)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not first.errors
    names = {h.name for h in sb.hosts}
    fetched = [name for name in first.changed if "Model tiny (" in name]
    assert len(fetched) == 1 and set(first.changed[fetched[0]]) == names, first.changed
    want = {f"{DEST}/{p}": hashlib.sha256(b).hexdigest() for p, b in hub_files.items() if p.endswith(".gguf")}
    for host in sb.hosts:
        sums = ssh(sb, host, f"cd / && sha256sum {' '.join(sorted(want))}")
        assert dict(reversed(line.split()) for line in sums.splitlines()) == want
        assert ssh(sb, host, f"test -e {DEST}/README.md || echo absent") == "absent"
        assert ssh(sb, host, f"cat {MARKER}") == f"{DEST}/{FIRST}"  # llama-server's -m

    # A shard gone from one host: pyinfra's default output (no -v) shows that host's download
    # as it runs: the model's bytes and rate, the file verified.
    repaired = sb.hosts[0]
    ssh(sb, repaired, f"rm {DEST}/{FIRST}")
    repair = run_pyinfra(str(inv), str(deploy), env=env, timeout=300)
    outputs.append(repair.stdout + repair.stderr)
    assert repair.returncode == 0, repair.stderr[-3000:]
    # the fetcher's own lines, as they came (pyinfra's status lines are indented)
    shown = [line for line in repair.stderr.splitlines() if line.startswith("[")]
    assert all(line.startswith(f"[{repaired.name}] ") for line in shown), repair.stderr[-3000:]
    unit = r"rigkit-fetch-[0-9a-f]{16}\.service"
    patterns = [
        rf"{HUB_REPO}: 3\.0 MB to download, in the background \({unit}\) while the deploy goes on",
        rf"{HUB_REPO}: download started at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ in {unit}",  # the wait's
        r"1/2 file\(s\) already verified, skipped without hashing",
        rf"{HUB_REPO}: downloading 1 file\(s\), 3\.0 MB missing, 4 connection\(s\)",
        rf"\[1/2\] {FIRST} 3\.0 MB sha256 ok",
        rf"done: {HUB_REPO}: 2 file\(s\), 1 already verified, 1 downloaded \(3\.0 MB in [\d.]+ s, \d+ MB/s\)",
        r'\{"ok": true, "files": 2, "skipped": 1, "downloaded": 1, "bytes_fetched": 3000000, "seconds": [\d.]+\}',
    ]  # nothing more for a download this short (a line per 5 s while one runs)
    assert len(shown) == len(patterns), repair.stderr[-3000:]
    for line, pattern in zip(shown, patterns):
        assert re.fullmatch(rf"\[{repaired.name}\] {pattern}", line), (line, pattern)

    second = run_pyinfra(str(inv), str(deploy), env=env, timeout=300)
    outputs.append(second.stdout + second.stderr)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == {}, f"second run changed: {second.changed}"
    assert second.results["totals"]["success"] == 0

    # No lock: the deploy stops while collecting operations; no host is touched.
    victim = sb.hosts[0]
    ssh(sb, victim, f"rm -rf {DEST} {MARKER}")
    lockfile.lock_path_for(inv).unlink()
    missing = run_pyinfra(str(inv), str(deploy), env=env, timeout=300)
    outputs.append(missing.stdout + missing.stderr)
    assert missing.returncode != 0
    assert f"rigkit lock {inv}" in missing.stderr and "Traceback" not in missing.stderr
    assert ssh(sb, victim, f"test -e {DEST} || test -e {MARKER} || echo untouched") == "untouched"
    assert ssh(sb, sb.hosts[1], f"cat {MARKER}") == f"{DEST}/{FIRST}"

    for text in outputs:
        assert token not in text
