"""ModelRef, Hub client, lockfile and `rigkit lock` against the mirror on loopback."""

from __future__ import annotations

import hashlib
import textwrap

import pytest
import yaml
from test_mirror import REPO, make_repo

from rigkit.models import hub, lock_command, lockfile, mirror
from rigkit.models.hub import HubClient, ModelRef

TOKEN = "hf_TopSecretToken_1234567890"


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "mirror"
    files = make_repo(root)
    s = mirror.serve(str(root), page_size=2)
    yield s, files
    s.stop()


def ref(**kw):
    d = dict(repo=REPO, revision="main", include=("Q4/*.gguf",), dest="/models/tiny")
    d.update(kw)
    return ModelRef(**d)


def test_modelref_validation():
    r = ref(include=["Q4/*.gguf"])
    assert r.include == ("Q4/*.gguf",) and hash(r)
    assert r.key == f"{REPO}@main:Q4/*.gguf"
    for kw, key in [
        ({"repo": "noslash"}, "'repo'"),
        ({"dest": "rel/path"}, "'dest'"),
        ({"include": ()}, "'include'"),
        ({"revision": ""}, "'revision'"),
        ({"endpoint": "ftp://x"}, "'endpoint'"),
    ]:
        with pytest.raises(ValueError, match=key):
            ref(**kw)


def test_first_shard():
    assert hub.first_shard(["a/x-00002-of-00002.gguf", "a/x-00001-of-00002.gguf"]) == "a/x-00001-of-00002.gguf"
    assert hub.first_shard(["m.gguf", "README.md"]) == "m.gguf"
    with pytest.raises(ValueError, match="first shard"):
        hub.first_shard(["a.gguf", "b.gguf"])


def test_resolve_against_mirror(served):
    s, files = served
    c = HubClient(s.url)
    res = c.resolve(ref(include=("Q4/*.gguf", "README.md")))
    assert res.sha == s.store.index(REPO).sha
    got = {f.path: (f.size, f.sha256) for f in res.files}
    want = {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items() if p != "config.json"}
    assert got == want  # README.md is not LFS: hashed by downloading it


def test_bad_input_errors(served):
    s, _ = served
    c = HubClient(s.url)
    with pytest.raises(hub.RepoNotFound, match="nobody/none"):
        c.resolve(ref(repo="nobody/none"))
    with pytest.raises(hub.RevisionNotFound, match="'v9'"):
        c.resolve(ref(revision="v9"))
    with pytest.raises(hub.PatternMatchedNothing, match=r"Q8/\*\.gguf"):
        c.resolve(ref(include=("Q8/*.gguf",)))
    with pytest.raises(hub.HubError, match="cannot reach"):
        HubClient("http://127.0.0.1:9", timeout=2).resolve(ref())


def test_auth_and_token_never_leaks(tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    make_repo(root)
    s = mirror.serve(str(root), token=TOKEN)
    try:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "none"))
        with pytest.raises(hub.HubAuthError, match="401.*no token"):
            HubClient(s.url, hub.read_token()).resolve(ref())
        with pytest.raises(hub.HubAuthError, match="rejected") as ei:
            HubClient(s.url, "hf_wrong_token").resolve(ref())
        assert "hf_wrong_token" not in str(ei.value)
        tf = tmp_path / "token"
        tf.write_text(TOKEN + "\n")
        monkeypatch.setenv("HF_TOKEN_PATH", str(tf))
        c = HubClient(s.url, hub.read_token())
        assert TOKEN not in repr(c) and TOKEN not in str(vars(c))
        assert len(c.resolve(ref()).files) == 2
        monkeypatch.setenv("HF_TOKEN", "from-env")
        assert hub.read_token() == "from-env"
    finally:
        s.stop()


def write_inventory(tmp_path, dest="/models/tiny", revision="main", endpoint=None):
    inv = tmp_path / "inv" / "prod.py"
    inv.parent.mkdir(exist_ok=True)
    inv.write_text(
        textwrap.dedent(f"""
        from rigkit.models.hub import ModelRef
        gpu = [
            ("gpu1", {{"models": [{{"repo": "{REPO}", "revision": "{revision}", "include": ["Q4/*.gguf"],
                                   "dest": "{dest}"}}], "hf_endpoint": {endpoint!r}, "hf_insecure_http": True}}),
            ("gpu2", {{"models": [ModelRef("{REPO}", "{revision}", ("Q4/*.gguf",), "/srv/models/other")]}}),
            "plain-host",
        ]
    """)
    )
    return inv


def test_lock_main_check_and_stale(served, tmp_path, monkeypatch, capsys):
    s, files = served
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    inv = write_inventory(tmp_path)
    refs = lock_command.collect_model_refs(inv)
    assert {r.dest for r in refs} == {"/models/tiny", "/srv/models/other"} and len({r.key for r in refs}) == 1
    # deploy before lock: names the fix
    with pytest.raises(lockfile.LockError, match=f"rigkit lock {inv}"):
        lock_command.entries_for_inventory(str(inv))
    assert lock_command.lock_main([str(inv)]) == 0
    lp = tmp_path / "inv" / "prod.lock.yaml"
    data = yaml.safe_load(lp.read_text())
    entry = data["models"][f"{REPO}@main:Q4/*.gguf"]
    assert entry["sha"] == s.store.index(REPO).sha
    assert entry["files"][0] == {
        "path": "Q4/tiny-00001-of-00002.gguf",
        "size": 3_000_000,
        "sha256": hashlib.sha256(files["Q4/tiny-00001-of-00002.gguf"]).hexdigest(),
    }
    refs2, entries = lock_command.entries_for_inventory(str(inv))
    e = entries[refs2[0].key]
    assert e.model_path("/models/tiny") == "/models/tiny/Q4/tiny-00001-of-00002.gguf"
    assert lock_command.lock_main([str(inv), "--check"]) == 0
    # inventory changes revision -> stale lock, error names the command
    write_inventory(tmp_path, revision="v2")
    with pytest.raises(lockfile.LockError, match=rf"no lock entry[\s\S]*run: rigkit lock {inv}"):
        lock_command.entries_for_inventory(str(inv))
    assert lock_command.lock_main([str(inv), "--check"]) == 1
    # bad revision: clear error, lockfile untouched
    before = lp.read_text()
    assert lock_command.lock_main([str(inv)]) == 1
    assert "revision 'v2' not found" in capsys.readouterr().err
    assert lp.read_text() == before and not list(lp.parent.glob("*.tmp"))


def test_lock_main_token_not_printed(tmp_path, monkeypatch, capsys):
    root = tmp_path / "mirror"
    make_repo(root)
    s = mirror.serve(str(root), token=TOKEN)
    try:
        monkeypatch.setenv("HF_ENDPOINT", s.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        inv = write_inventory(tmp_path)
        assert lock_command.lock_main([str(inv)]) == 0
        monkeypatch.setenv("HF_TOKEN", TOKEN + "x")
        assert lock_command.lock_main([str(inv)]) == 1
        out = capsys.readouterr()
        assert "401" in out.err
        assert TOKEN not in out.out + out.err
        assert TOKEN not in (tmp_path / "inv" / "prod.lock.yaml").read_text()
    finally:
        s.stop()
