"""One download and one build for a cluster (rigkit.cluster_share): host data ``share_port``,
the head's share operations, the host tools it runs (rigkit's mirror stand-alone beside the
fetch script, image_share.py), the image-ID comparison, Ray authentication in ``rigkit
status`` and the removal of tokens of clusters no longer declared. What runs on real hosts:
tests/test_cluster_e2e.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rigkit.hostdata.cluster import parse_cluster
from rigkit.hostdata.schema import HostDataError

SCRIPTS = Path(__file__).resolve().parent.parent / "rigkit" / "scripts"


def entry(**kw) -> dict:
    return {"name": "qwen", "nodes": ["spark-1", "spark-2"], "interconnect": "enp1s0f0np0", "address": "10.0.0.1", **kw}


def test_the_share_port_defaults_and_is_checked():
    assert parse_cluster("spark-1", entry()).share_port == 8470
    assert parse_cluster("spark-1", entry(share_port=9000)).share_port == 9000
    for bad in (80, 70000, 6379):
        with pytest.raises(HostDataError, match="cluster.share_port"):
            parse_cluster("spark-1", entry(share_port=bad))
    for hostile in ("8470; reboot", "$(reboot)", True):
        with pytest.raises(HostDataError):
            parse_cluster("spark-1", entry(share_port=hostile))


def test_the_nodes_compare_image_ids():
    from rigkit.operations.cluster import mismatch

    same = {"spark-1": "sha256:a", "spark-2": "sha256:a"}
    assert mismatch("qwen", "rigkit/vllm:x", same) is None
    assert mismatch("qwen", "rigkit/vllm:x", {"spark-1": "sha256:a", "spark-2": "sha256:b"}) == (
        "cluster qwen: the nodes' rigkit/vllm:x are different images (spark-1: sha256:a, spark-2: sha256:b)"
    )
    assert mismatch("qwen", "rigkit/vllm:x", {"spark-1": "sha256:a", "spark-2": None}) == (
        "cluster qwen: rigkit/vllm:x is missing on spark-2"
    )


class _Host:
    def __init__(self, facts=None):
        self.noops: list[str] = []
        self.facts = facts or {}

    def noop(self, text):
        self.noops.append(text)

    def get_fact(self, fact, **kwargs):
        return self.facts[fact.__name__]


def test_the_heads_share_is_a_hardened_transient_unit_started_once_it_listens(monkeypatch):
    from rigkit.operations import cluster_share as ops

    fake = _Host()
    monkeypatch.setattr(ops, "host", fake)
    argv = ["python3", ops.IMAGE_SHARE_TOOL, "serve", "--address", "10.0.0.1", "--image", "rigkit/vllm:x; reboot"]
    commands = [
        c.get_raw_value()
        for c in ops.serving._inner(
            unit="rigkit-share-qwen.service", argv=argv, links={"/run/rigkit/share-qwen/org/m": "/srv/models/m"}
        )
    ]
    assert commands[0].startswith("systemctl stop rigkit-share-qwen.service")  # a leftover goes first
    assert commands[1:3] == [
        "install -d -m 755 /run/rigkit/share-qwen/org",
        "ln -sfn /srv/models/m /run/rigkit/share-qwen/org/m",
    ]
    run = commands[3]
    assert run.startswith("systemd-run --quiet --collect --unit=rigkit-share-qwen.service --property=Type=notify ")
    for prop in ("RuntimeMaxSec=3600", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes"):
        assert f"--property={prop} " in run
    assert run.endswith("--image 'rigkit/vllm:x; reboot'")  # every argument quoted
    assert list(ops.serving._inner(unit="u", argv=argv, needed=False, why_not="every node holds it")) == []
    assert fake.noops == ["every node holds it"]
    assert [c.get_raw_value() for c in ops.stopped._inner(unit="u", links_dir="/run/rigkit/share-qwen")][1] == (
        "rm -rf /run/rigkit/share-qwen"
    )
    load = [c.get_raw_value() for c in ops.image_loaded._inner(image="rigkit/vllm:x", url="http://10.0.0.1:8470")]
    assert load == ["python3 /opt/rigkit/bin/image_share.py load --url http://10.0.0.1:8470 --image rigkit/vllm:x"]
    assert list(ops.image_loaded._inner(image="rigkit/vllm:x", url="http://10.0.0.1:8470", held=True)) == []


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a python3 without rigkit")
def test_the_mirror_runs_on_a_head_beside_the_fetch_script_and_serves_linked_models(tmp_path):
    """As the head runs it: the scripts in one directory, a python3 without rigkit, the
    model's directory linked into the mirror's layout (its verified-files record read through
    the link, nothing hashed again)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}
    if (
        subprocess.run(["/usr/bin/python3", "-c", "import rigkit"], capture_output=True, env=env, cwd="/").returncode
        == 0
    ):
        pytest.skip("/usr/bin/python3 has rigkit")
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy(SCRIPTS.parent / "models" / "mirror.py", tools / "model_mirror.py")
    shutil.copy(SCRIPTS / "fetch_shards.py", tools / "fetch_shards.py")
    shutil.copy(SCRIPTS / "token_origin.py", tools / "token_origin.py")  # fetch_shards.py imports it
    model = tmp_path / "srv" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / ".rigkit-repo.json").write_text(json.dumps({"sha": "a" * 40, "refs": {"main": "a" * 40}}))
    (tmp_path / "share" / "org").mkdir(parents=True)
    (tmp_path / "share" / "org" / "m").symlink_to(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(tools / "model_mirror.py"), "serve", str(tmp_path / "share"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line, "the mirror exited"
        info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models/org/m", timeout=10).read())
        assert info["sha"] == "a" * 40 and [s["rfilename"] for s in info["siblings"]] == ["config.json"]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/org/m/resolve/{'a' * 40}/config.json", timeout=10)
        assert body.read() == b"{}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_node_refuses_an_image_server_that_sends_no_image_id(tmp_path):
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"$(reboot)\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPTS / "image_share.py"), "load", "--url", f"http://127.0.0.1:{server.server_port}"]
            + ["--image", "rigkit/vllm:x"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PATH": str(tmp_path)},  # no docker: nothing may be asked of it
        )
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert "sent no image ID" in done.stderr


def test_ray_authentication_is_read_from_the_running_ray_never_the_token():
    from rigkit.facts.cluster import RayAuth
    from rigkit.status_vllm import auth_line

    fact = RayAuth()
    command = fact.command(container="rigkit-ray-qwen", token_file="/etc/rigkit/ray/qwen.token").get_raw_value()
    assert "'^(running=|RAY_AUTH_MODE=|RAY_AUTH_TOKEN_PATH=)'" in command  # no other variable printed
    assert "test -s /etc/rigkit/ray/qwen.token" in command and "cat" not in command
    seen = fact.process(
        ["running=true", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH=/run/rigkit/ray-auth-token", "ray=2.54.1"]
        + ["token-file=present"]
    )
    assert seen == {
        "running": True,
        "mode": "token",
        "token_path": "/run/rigkit/ray-auth-token",
        "ray": "2.54.1",
        "token_file": True,
    }
    assert auth_line("qwen", seen) == [
        "  cluster qwen: Ray authentication on (token mode, Ray 2.54.1; token file present)"
    ]
    assert auth_line("qwen", {**seen, "token_file": False})[0].endswith("TOKEN FILE MISSING)")
    assert "OFF: Ray 2.40.0 ignores RAY_AUTH_MODE" in auth_line("qwen", {**seen, "ray": "2.40.0"})[0]
    assert "OFF (no RAY_AUTH_MODE=token)" in auth_line("qwen", {**seen, "mode": None})[0]
    assert "unknown (no Ray container running)" in auth_line("qwen", RayAuth.default())[0]
    assert auth_line("qwen", None) == []


def test_the_tokens_of_clusters_no_longer_declared_are_removed(monkeypatch):
    from rigkit import cluster as cluster_mod
    from rigkit.facts.cluster import RayTokens
    from rigkit.hostdata import Rig

    listed = ["../etc.token", "Other.token", "a b.token", "gone.token", "qwen.token"]
    assert RayTokens().process([*listed, "qwen.token.version", "notes"]) == sorted(listed)
    removed: list[str] = []
    monkeypatch.setattr(cluster_mod.files, "file", lambda name, path, present: removed.append(path))
    fake = _Host({"RayTokens": sorted(listed)})
    monkeypatch.setattr(cluster_mod, "host", fake)
    cluster_mod.remove_undeclared_tokens(Rig(host="spark-1", cluster=parse_cluster("spark-1", entry())))
    # Only a name a cluster could have; the declared cluster's token stays.
    assert removed == ["/etc/rigkit/ray/gone.token", "/etc/rigkit/ray/gone.token.version"]
    removed.clear()
    cluster_mod.remove_undeclared_tokens(Rig(host="spark-1"))  # no cluster any more
    assert removed == [f"/etc/rigkit/ray/{n}.token{v}" for n in ("gone", "qwen") for v in ("", ".version")]
