"""Trust boundaries of the model and package supply (issue 20): where model files may go,
what a lock entry may say, and which URLs keyrings, GPG keys and Hub tokens travel over.
Each check: hostile values refused cleanly (host, key, expected), real-world values accepted."""

from __future__ import annotations

import pytest

from rigkit.hostdata import HostDataError, HubModel, UploadModel, parse_rig
from rigkit.hostdata.schema import MODEL_ROOTS

HUB_REPO = "acme/tiny-GGUF"


def refused(data: dict, key: str, expected: str, host: str = "rig-7") -> HostDataError:
    """``data`` refused by parse_rig, naming ``host`` and ``key``, ``expected`` in the message."""
    with pytest.raises(HostDataError) as err:
        parse_rig(host, data)
    assert (err.value.host, err.value.key) == (host, key), str(err.value)
    assert expected in err.value.expected, str(err.value)
    return err.value


# --- models[].dest under the model roots ----------------------------------------------------


def hub(dest: str, **more) -> dict:
    return {"models": [{"name": "m", "repo": HUB_REPO, "dest": dest, **more}]}


def upload(dest: str) -> dict:
    return {"models": [{"upload": "/tmp/local-models", "dest": dest}]}


@pytest.mark.parametrize("models", [hub, upload])
@pytest.mark.parametrize(
    "dest",
    [
        "/etc",
        "/etc/cron.d",
        "/var/run",
        "/run/docker",
        "/usr/local/models",
        "/opt/rigkit",
        "/var/lib/rigkit/models",
        "/tmp/m",  # not a model root
        "/srv",  # holds the root, is none
        "/srv/models-evil",  # a prefix of a root's name is not the root
        "/srv/models/../../etc",
        "/srv/models/m\n",
        "/srv/models/$(id)",
        "/ｅtc",  # a look-alike is no root either
    ],
)
def test_system_and_foreign_dests_refused(models, dest):
    refused(models(dest), "models[0].dest", "")


@pytest.mark.parametrize("models", [hub, upload])
def test_dests_under_the_default_roots_accepted(models):
    for root in MODEL_ROOTS:
        rig = parse_rig("h", models(f"{root}/tiny"))
        assert rig.models[0].dest == f"{root}/tiny"
        assert rig.model_roots == MODEL_ROOTS


def test_a_home_directory_named_in_model_roots_is_accepted():
    data = {**hub("/home/ml/models/tiny"), "model_roots": ["/home/ml/models"]}
    rig = parse_rig("h", data)
    assert isinstance(rig.models[0], HubModel) and rig.models[0].dest == "/home/ml/models/tiny"
    assert rig.model_roots == ("/home/ml/models",)
    # Naming roots replaces the defaults: /srv/models is then no root of this host.
    refused({**hub("/srv/models/tiny"), "model_roots": ["/home/ml/models"]}, "models[0].dest", "/home/ml/models")
    assert isinstance(
        parse_rig("h", {**upload("/home/ml/models/up"), "model_roots": ["/home/ml"]}).models[0], UploadModel
    )


@pytest.mark.parametrize(
    "roots, key",
    [
        (["/etc"], "model_roots[0]"),
        (["/"], "model_roots[0]"),
        (["/var"], "model_roots[0]"),  # holds /var/run and /var/lib/rigkit
        (["/srv/models", "/usr/share"], "model_roots[1]"),
        (["relative"], "model_roots[0]"),
        (["/home/ml/../../etc"], "model_roots[0]"),
        (["/home/ml\n"], "model_roots[0]"),
        ("/home/ml", "model_roots"),
        ([], "model_roots"),
    ],
)
def test_bad_model_roots_refused(roots, key):
    refused({**hub("/srv/models/m"), "model_roots": roots}, key, "")


# --- lock entries: untrusted data when read -------------------------------------------------

KEY = f"{HUB_REPO}@main:Q8/*.gguf"


def lock_entry(**change) -> dict:
    files = change.pop("files", [{"path": "Q8/tiny-00001-of-00001.gguf", "size": 10, "sha256": "0" * 64}])
    return {"repo": HUB_REPO, "revision": "main", "include": ["Q8/*.gguf"], "sha": "a" * 40, "files": files, **change}


def one_file(**change) -> dict:
    return lock_entry(files=[{"path": "Q8/tiny.gguf", "size": 10, "sha256": "0" * 64, **change}])


def test_a_well_formed_lock_entry_is_read():
    from rigkit.models import lockfile

    e = lockfile.LockEntry.from_data(KEY, lock_entry())
    assert e.sha == "a" * 40 and e.files[0].path == "Q8/tiny-00001-of-00001.gguf"
    zero = lockfile.LockEntry.from_data(KEY, one_file(path="original/params.json", size=0))
    assert zero.files[0].size == 0
    spaced = lockfile.LockEntry.from_data(KEY, one_file(path="docs/model card (v2).md"))
    assert spaced.files[0].path == "docs/model card (v2).md"


@pytest.mark.parametrize(
    "data, field",
    [
        (one_file(path="../../../etc/cron.d/x"), "files[0].path"),
        (one_file(path="Q8/../../x"), "files[0].path"),
        (one_file(path="/etc/cron.d/x"), "files[0].path"),
        (one_file(path="Q8//x.gguf"), "files[0].path"),
        (one_file(path="./x.gguf"), "files[0].path"),
        (one_file(path="Q8/x.gguf/"), "files[0].path"),
        (one_file(path="Q8\\..\\..\\x"), "files[0].path"),
        (one_file(path="x.gguf\nExecStart=/bin/sh"), "files[0].path"),
        (one_file(path="Q8/ｘ.gguf"), "files[0].path"),  # full-width look-alike: not ASCII
        (one_file(path=""), "files[0].path"),
        (one_file(path=".rigkit-verified.json"), "files[0].path"),  # the fetcher's own state file
        (one_file(path="Q8/x.gguf.partial"), "files[0].path"),
        (one_file(path=7), "files[0].path"),
        (one_file(size=-1), "files[0].size"),
        (one_file(size=True), "files[0].size"),
        (one_file(size="10"), "files[0].size"),
        (one_file(size=1.5), "files[0].size"),
        (one_file(sha256="0" * 63), "files[0].sha256"),
        (one_file(sha256="A" * 64), "files[0].sha256"),
        (one_file(sha256="0" * 64 + "\n"), "files[0].sha256"),
        (one_file(sha256="٠" * 64), "files[0].sha256"),  # Arabic-Indic zeros
        (one_file(extra=1), "files[0]"),
        (lock_entry(sha="a" * 39), "sha"),
        (lock_entry(sha="$(id)" + "a" * 35), "sha"),
        (lock_entry(repo="../etc"), "repo"),
        (lock_entry(repo="acme/tiny\n"), "repo"),
        (lock_entry(revision="main\n"), "revision"),
        (lock_entry(include=["../../etc/*"]), "include[0]"),
        (lock_entry(include="Q8/*.gguf"), "include"),
        (lock_entry(files={"path": "x"}), "files"),
        (lock_entry(files=[{"path": "a.gguf", "size": 1, "sha256": "0" * 64}] * 2), "files[1].path"),
        (lock_entry(revision="v2"), "expected the key"),  # an entry filed under another key
        ({"repo": HUB_REPO}, "expected the keys"),
    ],
)
def test_bad_lock_entries_name_the_entry_and_field(data, field):
    from rigkit.models import lockfile

    with pytest.raises(lockfile.LockError) as err:
        lockfile.LockEntry.from_data(KEY, data)
    assert str(err.value).startswith(f"lock entry {KEY!r}: {field}"), str(err.value)


def test_a_tampered_lockfile_is_refused_on_load(tmp_path):
    import yaml

    from rigkit.models import lockfile

    path = tmp_path / "prod.lock.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": {KEY: one_file(path="../../etc/cron.d/x")}}))
    with pytest.raises(lockfile.LockError, match=r"files\[0\]\.path: expected a relative path[\s\S]*rigkit lock inv"):
        lockfile.load(path, inventory="inv.py")
    path.write_text(yaml.safe_dump({"version": 1, "models": [KEY]}))
    with pytest.raises(lockfile.LockError, match="models: expected a mapping"):
        lockfile.load(path)
