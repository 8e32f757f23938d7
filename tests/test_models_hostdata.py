"""Hub models in host data: typed ``models``, ``ref:`` services resolved through the lock,
where the lock is found, and the ``rigkit lock`` / ``rigkit mirror`` commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rigkit import hostdata
from rigkit.hostdata import HostDataError, HubModel, UploadModel, parse_rig
from rigkit.models import hub, lock_command, lockfile, mirror

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_REPO = "acme/tiny-GGUF"
TOKEN = "hf_unit_" + "z" * 24


def rig_data(**service):
    return {
        "llama_cpp": {"ref": "b8137", "cuda": False},
        "models": [
            {"upload": "/tmp/local-models", "dest": "/srv/models/up"},
            {
                "name": "tiny-q8",
                "repo": HUB_REPO,
                "revision": "main",
                "include": ["Q8/*.gguf"],
                "dest": "/srv/models/tiny",
            },
        ],
        "services": [{"name": "tiny", "model": "ref:tiny-q8", "port": 8000, **service}],
    }


def entry(sha="a" * 40, paths=("Q8/tiny-00001-of-00002.gguf", "Q8/tiny-00002-of-00002.gguf")):
    return lockfile.LockEntry(
        repo=HUB_REPO,
        revision="main",
        include=("Q8/*.gguf",),
        sha=sha,
        files=tuple(lockfile.LockedFile(p, 10, "0" * 64) for p in paths),
    )


def test_models_are_typed():
    rig = parse_rig("h", rig_data())
    up, ref = rig.models
    assert up == UploadModel(upload="/tmp/local-models", dest="/srv/models/up")
    assert isinstance(ref, HubModel) and ref.name == "tiny-q8" and ref.include == ("Q8/*.gguf",)
    assert ref.ref == hub.ModelRef(HUB_REPO, "main", ("Q8/*.gguf",), "/srv/models/tiny")
    assert rig.hub_models == (ref,)
    assert rig.services[0].model == "ref:tiny-q8" and rig.unresolved == rig.services


def test_ref_service_resolves_to_first_shard_through_the_lock():
    rig = parse_rig("h", rig_data())
    resolved = hostdata.resolve_model_refs(rig, {rig.hub_models[0].ref.key: entry()}, "inv.py")
    svc = resolved.services[0]
    assert svc.model == "/srv/models/tiny/Q8/tiny-00001-of-00002.gguf"
    assert svc.model_id == "tiny" and not resolved.unresolved
    assert resolved.lock_for(resolved.hub_models[0]).sha == "a" * 40
    with pytest.raises(HostDataError, match="resolved through the model lock"):
        rig.lock_for(rig.hub_models[0])


def test_stale_or_missing_lock_names_the_command():
    rig = parse_rig("h", rig_data())
    with pytest.raises(lockfile.LockError, match=r"no lock entry[\s\S]*run: rigkit lock inv/prod.py"):
        hostdata.resolve_model_refs(rig, {}, "inv/prod.py")
    other = {
        rig.hub_models[0].ref.key: lockfile.LockEntry(
            repo=HUB_REPO, revision="v2", include=("Q8/*.gguf",), sha="b" * 40, files=entry().files
        )
    }
    with pytest.raises(lockfile.LockError, match="run: rigkit lock inv/prod.py"):
        hostdata.resolve_model_refs(rig, other, "inv/prod.py")


@pytest.mark.parametrize(
    "mutate, key, expected",
    [
        (lambda d: d["services"][0].update(model="ref:nope"), "services[0].model", "tiny-q8"),
        (lambda d: d["services"][0].update(model="ref:"), "services[0].model", "ref:<name"),
        (lambda d: d["models"][1].update(repo="no-slash"), "models[1].repo", "<org>/<name>"),
        (lambda d: d["models"][1].update(dest="models/tiny"), "models[1].dest", "absolute"),
        (lambda d: d["models"][1].update(include=[]), "models[1].include", "non-empty"),
        (lambda d: d["models"][1].update(include=["  "]), "models[1].include", "non-empty"),
        (lambda d: d["models"][1].update(include="Q8/*.gguf"), "models[1].include", "a list"),
        (lambda d: d["models"][1].update(revison="main"), "models[1].revison", "known keys"),
        (lambda d: d["models"][1].update(endpoint="ftp://x"), "models[1].endpoint", "http"),
        (lambda d: d["models"][1].update(name="a b"), "models[1].name", "letters"),
        (lambda d: d["models"].append(dict(d["models"][1])), "models[2].name", "no other model"),
        (lambda d: d["models"][0].update(repo=HUB_REPO), "models[0].repo", "known keys"),
        (lambda d: d["models"].append("org/repo"), "models[2]", "upload and dest"),
        (lambda d: d.update(models={"upload": "/x"}), "models", "a list"),
    ],
)
def test_bad_models_name_host_key_and_expectation(mutate, key, expected):
    data = rig_data()
    mutate(data)
    with pytest.raises(HostDataError) as err:
        parse_rig("rig-7", data)
    assert err.value.key == key
    assert expected in str(err.value)
    assert str(err.value).startswith(f"host rig-7: {key}: expected")


def test_lock_location(tmp_path, monkeypatch):
    monkeypatch.delenv(hostdata.LOCK_ENV, raising=False)
    assert hostdata.find_model_lock({}) == (None, "INVENTORY")  # not under pyinfra's CLI
    monkeypatch.setenv(hostdata.LOCK_ENV, str(tmp_path / "env.lock.yaml"))
    assert hostdata.find_model_lock({})[0] == tmp_path / "env.lock.yaml"
    assert hostdata.find_model_lock({"model_lock": "/x/hd.lock.yaml"})[0] == Path("/x/hd.lock.yaml")


def test_collect_model_refs_skips_uploads_and_applies_hf_endpoint(tmp_path):
    inv = tmp_path / "prod.py"
    inv.write_text(
        textwrap.dedent(f"""
        hosts = [
            ("a", {{"hf_endpoint": "http://mirror:8090", "hf_insecure_http": True, "models": {rig_data()["models"]!r}}}),
            ("b", {{"models": [{{"repo": "{HUB_REPO}", "include": ["Q8/*.gguf"], "dest": "/srv/models/m"}}]}}),
        ]
    """)
    )
    refs = lock_command.collect_model_refs(inv)
    assert {r.key for r in refs} == {f"{HUB_REPO}@main:Q8/*.gguf"}  # one lock entry for both hosts
    assert {(r.dest, r.endpoint) for r in refs} == {("/srv/models/tiny", "http://mirror:8090"), ("/srv/models/m", None)}
    inv.write_text('hosts = [("a", {"models": [{"name": "x", "repo": "bad", "dest": "/srv/models/m"}]})]\n')
    with pytest.raises(HostDataError, match=r"host a: models\[0\].repo"):
        lock_command.collect_model_refs(inv)


# --- the CLI --------------------------------------------------------------------------------


def rigkit(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "rigkit.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        **kw,
    )


def make_repo(root: Path) -> dict[str, bytes]:
    files = {
        "Q8/tiny-00001-of-00002.gguf": b"a" * 300_000,
        "Q8/tiny-00002-of-00002.gguf": b"b" * 200_000,
        "README.md": b"hello\n",
    }
    for path, data in files.items():
        p = root / HUB_REPO / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_cli_lock_against_a_token_mirror(tmp_path):
    make_repo(tmp_path / "hub")
    srv = mirror.serve(str(tmp_path / "hub"), token=TOKEN)
    try:
        inv = tmp_path / "prod.py"
        inv.write_text(
            f'hosts = [("a", {{"hf_endpoint": {srv.url!r}, "hf_insecure_http": True, "models": {rig_data()["models"]!r}}})]\n'
        )
        env = {"HF_TOKEN": TOKEN}
        assert "usage: rigkit lock" in rigkit("lock", "--help").stdout
        checked = rigkit("lock", "--check", str(inv), env=env)
        assert checked.returncode == 1 and f"rigkit lock {inv}" in checked.stderr
        done = rigkit("lock", str(inv), env=env)
        assert done.returncode == 0, done.stderr
        assert rigkit("lock", "--check", str(inv), env=env).returncode == 0
        data = yaml.safe_load((tmp_path / "prod.lock.yaml").read_text())
        (locked,) = data["models"].values()
        assert [f["path"] for f in locked["files"]] == ["Q8/tiny-00001-of-00002.gguf", "Q8/tiny-00002-of-00002.gguf"]
        denied = rigkit("lock", str(inv), env={"HF_TOKEN": "wrong"})
        assert denied.returncode == 1 and "401" in denied.stderr
        for r in (checked, done, denied):
            assert TOKEN not in r.stdout + r.stderr
    finally:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_mirror_serve(tmp_path):
    make_repo(tmp_path / "hub")
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rigkit.cli",
            "mirror",
            "serve",
            str(tmp_path / "hub"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token-file",
            str(tmp_path / "token"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mirror did not start"
                time.sleep(0.1)
        client = hub.HubClient(f"http://127.0.0.1:{port}", TOKEN)
        resolved = client.resolve(hub.ModelRef(HUB_REPO, "main", ("Q8/*.gguf",), "/m"))
        assert len(resolved.files) == 2
        with pytest.raises(hub.HubAuthError):
            hub.HubClient(f"http://127.0.0.1:{port}").resolve_revision(HUB_REPO, "main")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "token required" in out and TOKEN not in out
    assert rigkit("mirror", "serve", str(tmp_path / "nope")).returncode == 2


class FakeHost:
    def __init__(self, name, data):
        self.name, self._data = name, data

    @property
    def data(self):
        return self._data


def test_rig_for_reads_the_lock_or_names_the_fix(tmp_path, monkeypatch):
    lock_path = tmp_path / "prod.lock.yaml"
    monkeypatch.setenv(hostdata.LOCK_ENV, str(lock_path))
    host = FakeHost("gpu1", rig_data())
    with pytest.raises(hostdata.ModelLockError, match=r"host gpu1: lockfile .* does not exist\nrun: rigkit lock"):
        hostdata.rig_for(host)
    ref = parse_rig("gpu1", rig_data()).hub_models[0].ref
    lockfile.dump({ref.key: entry()}, lock_path)
    assert hostdata.rig_for(host).services[0].model == "/srv/models/tiny/Q8/tiny-00001-of-00002.gguf"
    stale = rig_data()
    stale["models"][1]["include"] = ["Q4/*.gguf"]
    with pytest.raises(hostdata.ModelLockError, match=r"Q4/\*.gguf: no lock entry[\s\S]*run: rigkit lock"):
        hostdata.rig_for(FakeHost("gpu1", stale))
    # Hosts without Hub models need no lock.
    plain = {k: v for k, v in rig_data(model="/srv/models/m.gguf").items() if k != "models"}
    lock_path.unlink()
    assert hostdata.rig_for(FakeHost("cpu", plain)).services[0].model == "/srv/models/m.gguf"
