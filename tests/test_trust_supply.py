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


# --- NVIDIA's keyring and GPG key: https, or a pinned http mirror ---------------------------

PIN = "ab" * 32


def nvidia(**values):
    from rigkit.hostdata.nvidia import parse_nvidia

    return parse_nvidia("rig-7", values, gpu_count=6)


def nvidia_refused(values: dict, key: str, expected: str) -> HostDataError:
    with pytest.raises(HostDataError) as err:
        nvidia(**values)
    assert (err.value.host, err.value.key) == ("rig-7", key), str(err.value)
    assert expected in err.value.expected, str(err.value)
    return err.value


@pytest.mark.parametrize("key", ["repo_url", "container_repo_url", "container_key_url"])
@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://mirror.lan/cuda/repos", "nvidia.insecure_http_mirror: true"),
        ("https://developer.download.nvidia.com@evil.example/repos", "user name or password"),
        ("https://user:pw@mirror.lan/repos", "user name or password"),
        ("https://mirror.lan/repos\nX", "control characters"),
        ("https://mirror.lan/$(id)", "path"),
        ("https://mirror.lan/../etc", "path"),
        ("https://nvіdia.com/repos", "ASCII"),  # a Cyrillic i
        ("https://mirror.lan:٨٠/repos", "ASCII"),  # Arabic-Indic digits as the port
        ("file:///etc/shadow", "https"),
        ("ftp://mirror.lan/repos", "https"),
        ("https://mirror.lan/repos?x=1", "query"),
        ("https://[not-v6]/repos", "well-formed"),
    ],
)
def test_hostile_nvidia_urls_refused(key, url, expected):
    nvidia_refused({key: url}, f"nvidia.{key}", expected)


@pytest.mark.parametrize(
    "url",
    [
        "https://[fd00::1]:8443/cuda/repos",
        "https://MIRROR.Example.LAN/cuda/repos",
        "https://10.0.0.5:8443/cuda/repos/",
        "https://developer.download.nvidia.com/compute/cuda/repos",
    ],
)
def test_real_nvidia_urls_accepted(url):
    assert nvidia(repo_url=url, container_key_url=url).repo_url == url


def test_an_http_mirror_needs_the_opt_in_and_pins():
    mirror = "http://mirror.lan:8080/cuda/repos"
    nvidia_refused({"repo_url": mirror}, "nvidia.repo_url", "insecure_http_mirror")
    nvidia_refused({"repo_url": mirror, "insecure_http_mirror": True}, "nvidia.keyring_sha256", "sha256")
    nv = nvidia(repo_url=mirror, insecure_http_mirror=True, keyring_sha256=PIN)
    assert nv.keyring_sha256 == PIN and nv.repo_url == mirror
    key = "http://mirror.lan:8080/gpgkey"
    both = {"repo_url": mirror, "insecure_http_mirror": True, "keyring_sha256": PIN, "container_key_url": key}
    assert nvidia(**both).container_key_sha256 is None  # no container toolkit: the key is never fetched
    nvidia_refused({**both, "container_toolkit": True}, "nvidia.container_key_sha256", "sha256")
    assert nvidia(**both, container_toolkit=True, container_key_sha256=PIN).container_key_sha256 == PIN
    for bad in ("AB" * 32, "ab" * 31, "ab" * 32 + "\n", "٠" * 64, 7):
        with pytest.raises(HostDataError) as err:
            nvidia(repo_url=mirror, insecure_http_mirror=True, keyring_sha256=bad)
        assert err.value.key == "nvidia.keyring_sha256"


def test_driver_branch_as_an_integer_and_look_alike_digits():
    assert nvidia(driver_branch=580).driver_branch == "580"
    assert nvidia(driver_branch=580).branch == 580
    nvidia_refused({"driver_branch": "58\u0660"}, "nvidia.driver_branch", "three digits")
    nvidia_refused({"driver_branch": "５８０"}, "nvidia.driver_branch", "three digits")  # full-width
    nvidia_refused({"driver_branch": 5800}, "nvidia.driver_branch", "three digits")
    nvidia_refused({"driver_branch": False}, "nvidia.driver_branch", "string")
    nvidia_refused({"cuda_toolkit": "1３.0"}, "nvidia.cuda_toolkit", "major.minor")


def test_the_pin_is_checked_on_the_host_before_anything_is_installed(tmp_path):
    import hashlib
    import subprocess

    from rigkit.operations import nvidia as ops

    deb = tmp_path / "cuda-keyring.deb"
    deb.write_bytes(b"keyring")
    good = hashlib.sha256(b"keyring").hexdigest()
    assert subprocess.run(["sh", "-c", ops.sha256_check_command(str(deb), good, "keyring")]).returncode == 0
    bad = subprocess.run(["sh", "-c", ops.sha256_check_command(str(deb), PIN, "keyring")], capture_output=True)
    assert bad.returncode == 1 and b"not installed" in bad.stderr and not deb.exists()
    # curl stays on https for an https URL (no redirect down to http).
    assert ops.curl_protocols("https://x/y") == ("--proto", "=https", "--proto-redir", "=https")
    assert ops.curl_protocols("http://x/y") == ("--proto", "=http,https", "--proto-redir", "=http,https")


def test_the_standin_host_data_opts_in_and_pins(tmp_path):
    import hashlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from standins.nvidia_repo import StandIn

    standin = StandIn(root=tmp_path, base_url="http://10.0.0.1:8123")
    deb = standin.www / "compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb"
    deb.parent.mkdir(parents=True)
    deb.write_bytes(b"deb")
    (standin.www / "libnvidia-container").mkdir()
    (standin.www / "libnvidia-container/gpgkey").write_bytes(b"key")
    data = standin.host_data(driver_branch="580", container_toolkit=True)
    nv = nvidia(**data)
    assert nv.insecure_http_mirror and nv.keyring_sha256 == hashlib.sha256(b"deb").hexdigest()
    assert nv.container_key_sha256 == hashlib.sha256(b"key").hexdigest()


# --- the Hub: https, or an http mirror opted in and never with a token ----------------------


def supply_refused(data: dict, key: str, expected: str) -> None:
    from rigkit.hostdata.rig import check_model_supply

    with pytest.raises(HostDataError) as err:
        check_model_supply("rig-7", data)
    assert (err.value.host, err.value.key) == ("rig-7", key), str(err.value)
    assert expected in err.value.expected, str(err.value)


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        ("http://mirror.lan:8080", "hf_insecure_http: true"),
        ("https://huggingface.co@evil.example", "user name or password"),
        ("https://user:pw@mirror.lan", "user name or password"),
        ("https://mirror.lan\nX-Injected: 1", "control characters"),
        ("https://mirror.lan/$(id)", "path"),
        ("https://huggingfаce.co", "ASCII"),  # a Cyrillic a
        ("file:///etc/passwd", "https"),
    ],
)
def test_hostile_hf_endpoints_refused(endpoint, expected):
    supply_refused({"hf_endpoint": endpoint}, "hf_endpoint", expected)
    # The opt-in lets plain http through, nothing else.
    if not endpoint.startswith("http://"):
        supply_refused({"hf_endpoint": endpoint, "hf_insecure_http": True}, "hf_endpoint", "")


def test_an_http_lan_mirror_with_the_opt_in_and_no_token_is_accepted():
    from rigkit.hostdata.rig import check_model_supply

    check_model_supply("h", {"hf_endpoint": "http://mirror.lan:8080", "hf_insecure_http": True})
    check_model_supply("h", {"hf_endpoint": "https://[fd00::1]:8443", "hf_token_file": "~/.hf-token"})
    check_model_supply("h", {"hf_endpoint": "https://HF-Mirror.Example.com"})
    supply_refused(
        {"hf_endpoint": "http://mirror.lan:8080", "hf_insecure_http": True, "hf_token_file": "~/.hf-token"},
        "hf_token_file",
        "in the clear",
    )
    supply_refused({"hf_insecure_http": "yes"}, "hf_insecure_http", "true or false")


def test_models_endpoint_http_needs_the_opt_in():
    mirror = "http://mirror.lan:8080"
    refused(hub("/srv/models/m", endpoint=mirror), "models[0].endpoint", "hf_insecure_http: true")
    rig = parse_rig("h", {**hub("/srv/models/m", endpoint=mirror), "hf_insecure_http": True})
    assert rig.hub_models[0].endpoint == mirror
    for bad in ("https://huggingface.co@evil.example", "http://u:p@mirror.lan", "https://x/a b"):
        refused({**hub("/srv/models/m", endpoint=bad), "hf_insecure_http": True}, "models[0].endpoint", "")
    assert parse_rig("h", hub("/srv/models/m", endpoint="https://[fd00::1]:8443")).hub_models[0].endpoint


def test_the_hub_client_never_sends_a_token_over_plain_http():
    from rigkit.models.hub import HubClient, HubError

    with pytest.raises(HubError, match="refusing to send the Hub token to http://mirror.lan:8080"):
        HubClient("http://mirror.lan:8080", "hf_secret")
    with pytest.raises(HubError, match="user name or password"):
        HubClient("https://huggingface.co@evil.example")
    assert HubClient("http://mirror.lan:8080")._token is None  # a LAN mirror without a token
    assert HubClient("https://huggingface.co", "hf_secret")._token
    assert HubClient("http://127.0.0.1:8080", "hf_secret")._token  # loopback: never on a network


def test_the_token_goes_only_to_the_endpoints_own_https_origin():
    from rigkit.models.hub import _origin
    from rigkit.transport import may_carry_token

    assert _origin("https://huggingface.co/x") == _origin("https://HuggingFace.co:443/y")
    assert _origin("https://huggingface.co/x") != _origin("http://huggingface.co/x")
    assert _origin("https://huggingface.co/x") != _origin("https://huggingface.co@evil.example/x")
    assert _origin("https://huggingface.co/x") != _origin("https://huggingface.co:99999/x")
    assert not may_carry_token("http://huggingface.co/x") and may_carry_token("https://huggingface.co/x")
    assert may_carry_token("http://[::1]:8080/x") and not may_carry_token("http://[fd00::1]:8080/x")


def test_the_fetcher_manifest_carries_no_token_file_for_plain_http():
    from rigkit.models import lockfile
    from rigkit.models.hub import ModelRef
    from rigkit.operations.models import manifest_for

    entry = lockfile.LockEntry.from_data(KEY, lock_entry())
    for endpoint, carried in (
        ("http://mirror.lan:8080", False),
        ("https://huggingface.co", True),
        ("http://127.0.0.1:8080", True),
    ):
        ref = ModelRef(HUB_REPO, "main", ("Q8/*.gguf",), "/srv/models/m", endpoint)
        m = manifest_for(ref, entry, token_file="/var/lib/rigkit/hf-token")
        assert ("token_file" in m) is carried, endpoint


def test_the_host_side_fetcher_sends_no_token_over_plain_http():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "rigkit" / "scripts" / "fetch_shards.py"
    spec = importlib.util.spec_from_file_location("fetch_shards_under_test", path)
    assert spec and spec.loader
    fetcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetcher)
    assert fetcher.may_carry_token("https://huggingface.co/x")
    assert fetcher.may_carry_token("http://127.0.0.1:9/x") and fetcher.may_carry_token("http://localhost:9/x")
    assert not fetcher.may_carry_token("http://mirror.lan/x") and not fetcher.may_carry_token("ftp://x/y")


# --- token precedence: host data's hf_token_file beats $HF_TOKEN (as the README says) -------


def test_hf_token_file_beats_the_environment(tmp_path, monkeypatch):
    from rigkit.models.hub import read_token

    named = tmp_path / "hf-token"
    named.write_text("hf_from_file\n")
    default = tmp_path / "default-token"
    default.write_text("hf_from_default\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(default))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert read_token(str(named)) == "hf_from_file"  # host data names a file: it wins
    assert read_token(None) == "hf_from_env"  # none named: the environment, then the default file
    monkeypatch.delenv("HF_TOKEN")
    assert read_token(None) == "hf_from_default"
