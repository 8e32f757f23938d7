"""
One llama-server router on sandbox-1 (after the shared first deploy, on its b11312 build):
the suite's tiny model and a second generated one through one port, by name; the second
request loads the second model and, with --models-max 1, unloads the first; the re-run
changes nothing; a broken second model rolls back; status shows what is loaded; hostile
preset values change nothing on the host. Leaves the host as the first deploy left it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from mutated_inventory import write_inventory
from pyinfra_run import REPO, run_pyinfra, ssh

pytestmark = pytest.mark.e2e

UNIT = "rigkit-llama-tiny"
SECOND = "/srv/models/tiny-two"
HOST_FILES = "ls -l --time-style=+%s /etc/systemd/system /etc/rigkit/llama | md5sum; md5sum /etc/rigkit/llama/*"


def deploy(first_deploy, tmp_path, mutation: dict | None, name: str = "router"):
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    inv = write_inventory(tmp_path, mutation, name) if mutation is not None else "inventories/sandbox.py"
    return run_pyinfra(str(inv), "deploys/rig.py", "--limit", "sandbox-1", env=env)


def router_of(model_dir: str, extra_args: list[str] | None = None) -> dict:
    return {
        "alias": "tiny",
        "models_max": 1,
        "router_models": [
            {
                "model": f"{model_dir}/tiny-two.gguf",
                "alias": "tiny-two",
                "ctx": 1024,
                "n_gpu_layers": 0,
                "extra_args": extra_args or ["--no-warmup"],
            }
        ],
        "@models": [{"upload": "UPLOAD", "dest": model_dir}],
    }


def call(host, key: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://{host.address}:8000{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def states(host, key: str) -> dict[str, str]:
    status, listed = call(host, key, "/models")
    assert status == 200, listed
    return {m["id"]: m["status"]["value"] for m in listed["data"]}


def chat(host, key: str, model: str) -> int:
    return call(
        host,
        key,
        "/v1/chat/completions",
        {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )[0]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """A second generated model (one shard), beside the suite's."""
    from rigkit.sandbox.offline import MirrorRef, make_tiny_model
    from rigkit.sandbox.state import cache_dir

    out = tmp_path_factory.mktemp("tiny-two")
    make_tiny_model(MirrorRef(cache_dir() / "mirrors" / "llama.cpp.git", "b11312"), out, name="tiny-two", shards=1)
    broken = tmp_path_factory.mktemp("tiny-broken")
    (broken / "tiny-two.gguf").write_bytes(b"GGUF" + b"\0" * 4096)  # a header and nothing llama.cpp can load
    return out, broken


def with_upload(mutation: dict, directory) -> dict:
    return {**mutation, "@models": [{**m, "upload": str(directory)} for m in mutation["@models"]]}


def test_router_serves_two_models_through_one_port(sandbox_hosts, first_deploy, api_key, second_model, tmp_path):
    sb, host, key = sandbox_hosts, sandbox_hosts.hosts[0], api_key[0]
    good, broken = second_model
    mutation = with_upload(router_of(SECOND), good)
    try:
        run = deploy(first_deploy, tmp_path, mutation)
        assert run.returncode == 0, run.stderr[-5000:]
        # Verified both in turn, the default last: it is the one loaded.
        assert states(host, key) == {"tiny": "loaded", "tiny-two": "unloaded"}
        assert chat(host, key, "tiny-two") == 200
        assert states(host, key) == {"tiny": "unloaded", "tiny-two": "loaded"}  # --models-max 1
        assert chat(host, key, "tiny") == 200
        assert states(host, key) == {"tiny": "loaded", "tiny-two": "unloaded"}

        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "rigkit.cli",
                "status",
                str(write_inventory(tmp_path, {**mutation, "@hosts": ["sandbox-1"]}, "router-status")),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(__import__("os").environ, **first_deploy[1], PYTHONPATH=str(tmp_path)),
        )
        assert status.returncode == 0 and "DRIFT" not in status.stdout, status.stdout + status.stderr
        assert "model tiny                     loaded" in status.stdout, status.stdout
        assert "model tiny-two                 unloaded" in status.stdout, status.stdout

        pid = ssh(sb, host, f"systemctl show -p MainPID --value {UNIT}")
        again = deploy(first_deploy, tmp_path, mutation)
        assert again.returncode == 0, again.stderr[-3000:]
        assert not [op for op in again.changed if op.startswith("Serve llama.cpp")], again.changed
        assert ssh(sb, host, f"systemctl show -p MainPID --value {UNIT}") == pid

        # Hostile preset values: refused before any host change.
        before = ssh(sb, host, HOST_FILES)
        for hostile in (
            ["--chat-template", "chatml\n[evil]\nm = /etc/shadow"],
            ["-m", "/etc/shadow"],
            ["--chat-template", "chatml ; x"],
        ):
            bad = deploy(first_deploy, tmp_path, with_upload(router_of(SECOND, hostile), good), "hostile")
            assert bad.returncode != 0 and "router_models[0].extra_args" in bad.stderr, bad.stderr[-2000:]
        assert ssh(sb, host, HOST_FILES) == before
        assert ssh(sb, host, f"systemctl show -p MainPID --value {UNIT}") == pid

        # A second model that does not load: the router's last verified state comes back.
        unit = ssh(sb, host, f"cat /etc/systemd/system/{UNIT}.service")
        failed = deploy(first_deploy, tmp_path, with_upload(router_of("/srv/models/tiny-broken"), broken), "broken")
        assert failed.returncode != 0 and "rolled back" in failed.stderr, failed.stderr[-3000:]
        assert ssh(sb, host, f"cat /etc/systemd/system/{UNIT}.service") == unit
        assert chat(host, key, "tiny-two") == 200
    finally:
        back = deploy(first_deploy, tmp_path, None)
        assert back.returncode == 0, back.stderr[-3000:]
