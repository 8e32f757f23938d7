"""rigkit.mirror against the real huggingface_hub client (loopback, generated files)."""

from __future__ import annotations

import filecmp
import hashlib
import os
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
import requests  # noqa: E402

from rigkit.models import mirror  # noqa: E402

REPO = "rigtest/tiny-GGUF"


def make_repo(root: Path, repo: str = REPO, sizes=(3_000_000, 2_500_000)) -> dict[str, bytes]:
    d = root / repo
    (d / "Q4").mkdir(parents=True)
    files = {"README.md": b"# tiny\n", "config.json": b'{"a": 1}\n'}
    n = len(sizes)
    for i, size in enumerate(sizes, 1):
        files[f"Q4/tiny-{i:05d}-of-{n:05d}.gguf"] = os.urandom(size)
    for rel, data in files.items():
        (d / rel).write_bytes(data)
    return files


@pytest.fixture
def repo_dir(tmp_path):
    root = tmp_path / "mirror"
    files = make_repo(root)
    return root, files


@pytest.fixture(params=[False, True], ids=["direct", "lfs-redirect"])
def srv(request, repo_dir):
    s = mirror.serve(str(repo_dir[0]), lfs_redirect=request.param, page_size=2)
    yield s
    s.stop()


def test_snapshot_download_byte_identical(srv, repo_dir, tmp_path):
    root, files = repo_dir
    local = hf.snapshot_download(REPO, local_dir=str(tmp_path / "snap"), endpoint=srv.url)
    got = {
        str(p.relative_to(local)): p.read_bytes()
        for p in Path(local).rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }
    assert got == files
    # cache-dir mode too (blobs named by etag = sha256 for LFS files)
    cached = hf.snapshot_download(
        REPO, cache_dir=str(tmp_path / "cache"), endpoint=srv.url, allow_patterns=["Q4/*.gguf"]
    )
    for rel in files:
        if rel.startswith("Q4/"):
            assert filecmp.cmp(os.path.join(cached, rel), root / REPO / rel, shallow=False)
    blobs = os.listdir(tmp_path / "cache" / "models--rigtest--tiny-GGUF" / "blobs")
    assert hashlib.sha256(files["Q4/tiny-00001-of-00002.gguf"]).hexdigest() in blobs


def test_hf_hub_download_byte_identical(srv, repo_dir, tmp_path):
    root, files = repo_dir
    for rel in ("Q4/tiny-00002-of-00002.gguf", "README.md"):
        p = hf.hf_hub_download(REPO, rel, local_dir=str(tmp_path / "dl"), endpoint=srv.url)
        assert Path(p).read_bytes() == files[rel]
    sha = srv.store.index(REPO).sha
    p = hf.hf_hub_download(REPO, "config.json", revision=sha, cache_dir=str(tmp_path / "c"), endpoint=srv.url)
    assert Path(p).read_bytes() == files["config.json"]


def test_api_listing_and_paths_info(srv, repo_dir):
    api = hf.HfApi(endpoint=srv.url)
    info = api.model_info(REPO)
    assert len(info.sha) == 40
    tree = list(api.list_repo_tree(REPO, recursive=True))  # page_size=2 -> several pages
    paths = sorted(f.path for f in tree if isinstance(f, hf.hf_api.RepoFile))
    assert paths == sorted(repo_dir[1])
    lfs = {f.path: f.lfs for f in tree if isinstance(f, hf.hf_api.RepoFile)}
    assert lfs["README.md"] is None
    shard = "Q4/tiny-00001-of-00002.gguf"
    assert lfs[shard].sha256 == hashlib.sha256(repo_dir[1][shard]).hexdigest()
    got = api.get_paths_info(REPO, ["README.md", "Q4"])
    assert {type(x).__name__ for x in got} == {"RepoFile", "RepoFolder"}


def test_errors_and_range(srv, repo_dir):
    u = srv.url
    r = requests.get(f"{u}/api/models/nobody/none/revision/main")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
    r = requests.get(f"{u}/api/models/{REPO}/revision/v9")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"
    r = requests.head(f"{u}/{REPO}/resolve/main/nope.bin")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.hf_hub_download("nobody/none", "x", endpoint=u, cache_dir="/nonexistent-never-used")
    with pytest.raises(hf.errors.RevisionNotFoundError):
        hf.hf_hub_download(REPO, "README.md", revision="v9", endpoint=u, cache_dir="/nonexistent-never-used")
    data = repo_dir[1]["Q4/tiny-00001-of-00002.gguf"]
    r = requests.get(f"{u}/{REPO}/resolve/main/Q4/tiny-00001-of-00002.gguf", headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == data[100:]
    r = requests.get(f"{u}/{REPO}/resolve/main/Q4/tiny-00001-of-00002.gguf", headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416


def test_token_required(repo_dir, tmp_path):
    s = mirror.serve(str(repo_dir[0]), token="hf_secret_abc")
    try:
        assert requests.get(f"{s.url}/api/models/{REPO}/revision/main").status_code == 401
        r = requests.get(f"{s.url}/api/models/{REPO}/revision/main", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        with pytest.raises(hf.errors.HfHubHTTPError):
            hf.hf_hub_download(REPO, "README.md", endpoint=s.url, cache_dir=str(tmp_path / "c0"), token=False)
        p = hf.hf_hub_download(REPO, "README.md", endpoint=s.url, cache_dir=str(tmp_path / "c1"), token="hf_secret_abc")
        assert Path(p).read_bytes() == repo_dir[1]["README.md"]
    finally:
        s.stop()


def test_repo_meta_pins_upstream_sha(repo_dir):
    root, _ = repo_dir
    sha = "ab" * 20
    (root / REPO / ".rigkit-repo.json").write_text('{"sha": "%s", "refs": {"v1": "%s"}}' % (sha, sha))
    s = mirror.serve(str(root))
    try:
        for rev in ("main", "v1", sha):
            assert requests.get(f"{s.url}/api/models/{REPO}/revision/{rev}").json()["sha"] == sha
        listing = requests.get(f"{s.url}/api/models/{REPO}/tree/main?recursive=true").json()
        assert not any(".rigkit" in e["path"] for e in listing)
    finally:
        s.stop()


def test_mirror_main_cli(repo_dir, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    assert mirror.mirror_main(["serve", str(tmp_path / "missing")]) == 2
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from rigkit.models.mirror import mirror_main; sys.exit(mirror_main(sys.argv[1:]))",
            "serve",
            str(repo_dir[0]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/models/{REPO}/revision/main", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        assert r.status_code == 200 and len(r.json()["sha"]) == 40
    finally:
        p.terminate()
        p.wait(timeout=5)


def test_a_rate_limit_paces_every_connection_together_and_lifts_at_once(srv, repo_dir, tmp_path, monkeypatch):
    """The throttle a test sets (a home line): the sleeps asked for add up to the bytes sent
    over the rate, all connections taken together; lifted, the rest comes unpaced."""
    root, files = repo_dir
    slept = []
    monkeypatch.setattr(mirror.time, "sleep", slept.append)
    srv.rate_limit = 1_000_000.0
    name = "Q4/tiny-00001-of-00002.gguf"
    urls = [f"{srv.url}/{REPO}/resolve/main/{name}"] * 2
    bodies = [requests.get(url, timeout=30).content for url in urls]
    assert bodies == [files[name]] * 2
    sent = 2 * len(files[name])
    # each block waits for every block before it: the waits grow by one block's time each
    assert len(slept) == -(-len(files[name]) // mirror.PACED_BLOCK) * 2
    assert max(slept) == pytest.approx(sent / 1e6, rel=0.05)
    srv.rate_limit = None
    slept.clear()
    assert requests.get(urls[0], timeout=30).content == files[name] and slept == []
