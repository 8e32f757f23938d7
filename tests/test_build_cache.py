"""
The fleet's llama.cpp build cache (issue 27) without a compile: a real ``rigkit cache serve``
on loopback, the hosts' client (``rigkit/scripts/build_cache.py``) and llama_host.py's
fetch-or-claim, with small files standing in for compiled binaries. The e2e with real builds
on sandbox hosts is tests/test_build_cache_e2e.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from pathlib import Path

import pytest

from rigkit import build_cache as server_module
from rigkit.hostdata import HostDataError, parse_rig
from rigkit.scripts import build_cache, llama_host
from rigkit.scripts.build_cache import CacheError, Client

COMMIT = "82af735a2" + "0" * 31
FLAGS = ["-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=OFF"]
TOOLS = {"cc": "gcc 12.2.0", "cxx": "g++ 12.2.0", "cmake": "cmake 3.25.1", "nvcc": None, "os": "debian 12"}


@pytest.fixture
def cache(tmp_path):
    server = server_module.serve(tmp_path / "cache", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "cache"
    server.shutdown()
    server.server_close()


def ident(**tools) -> dict:
    return build_cache.identity(COMMIT, FLAGS, ["llama-server"], {**TOOLS, **tools})


def info() -> dict:
    return {"commit": COMMIT, "build": 11312, "flags": FLAGS, "targets": ["llama-server"], "ref": "b11312"}


def a_build(path: Path, binary: bytes = b"\x7fELF llama-server stand-in\n") -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin/llama-server").write_bytes(binary)
    (path / "build.json").write_text(json.dumps({**info(), "built_by": "sandbox-1"}))
    return path


def publish(url: str, identity: dict, build_dir: Path) -> str:
    key = build_cache.key_of(identity)
    client = Client(url, key)
    state, claim, _ = client.claim("sandbox-1 pid 1")
    assert state == "claimed" and claim
    client.publish(claim, build_dir, build_cache.manifest_of(build_dir, key, identity))
    return key


def tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def test_the_key_is_the_whole_identity():
    keys = {
        build_cache.key_of(ident()),
        build_cache.key_of(ident(cc="gcc 13.1.0")),
        build_cache.key_of(ident(nvcc="Cuda compilation tools, release 12.4")),
        build_cache.key_of(ident(machine="aarch64")),
        build_cache.key_of(build_cache.identity(COMMIT[:-1] + "1", FLAGS, ["llama-server"], TOOLS)),
        build_cache.key_of(
            build_cache.identity(COMMIT, [*FLAGS, "-DCMAKE_CUDA_ARCHITECTURES=86"], ["llama-server"], TOOLS)
        ),
    }
    assert len(keys) == 6 and all(build_cache.KEY.fullmatch(k) for k in keys)
    assert build_cache.key_of(ident()) == build_cache.key_of(ident())
    assert build_cache.cuda_architectures(["-DCMAKE_CUDA_ARCHITECTURES=86;89"]) == ["86", "89"]


def test_published_build_is_fetched_byte_for_byte(cache, tmp_path):
    url, _ = cache
    built = a_build(tmp_path / "built")
    key = publish(url, ident(), built)
    client = Client(url, key)
    manifest = client.manifest()
    assert manifest is not None and {f["name"] for f in manifest["files"]} == {"build.json", "bin/llama-server"}
    (tmp_path / "fetched").mkdir()
    client.fetch(manifest, tmp_path / "fetched")
    assert tree(tmp_path / "fetched") == tree(built)
    # A second claim on a published key says it is there; a second publish cannot happen.
    assert client.claim("sandbox-2 pid 2")[0] == "present"


def test_one_claim_per_key_until_it_expires_or_is_released(cache, monkeypatch):
    url, _ = cache
    client = Client(url, build_cache.key_of(ident()))
    state, claim, _ = client.claim("sandbox-1 pid 1")
    assert state == "claimed"
    state, holder, _ = client.claim("sandbox-2 pid 2")
    assert (state, holder) == ("held", "sandbox-1 pid 1")
    assert client.renew(claim)
    client.release(claim)
    assert not client.renew(claim)
    state, claim2, _ = client.claim("sandbox-2 pid 2")
    assert state == "claimed" and claim2 != claim
    # A claimant that died stops renewing: its lease runs out and the next host builds.
    monkeypatch.setattr(server_module, "LEASE_SECONDS", -1)
    client.release(claim2)
    assert client.claim("sandbox-3 pid 3")[0] == "claimed"
    assert client.claim("sandbox-4 pid 4")[0] == "claimed"


def test_a_byte_changed_in_the_cache_is_refused_and_moved_aside(cache, tmp_path):
    url, root = cache
    key = publish(url, ident(), a_build(tmp_path / "built"))
    binary = root / "entries" / key / "bin/llama-server"
    binary.write_bytes(binary.read_bytes().replace(b"stand-in", b"STAND-IN"))  # same size
    client = Client(url, key)
    manifest = client.manifest()
    assert manifest is not None
    (tmp_path / "fetched").mkdir()
    with pytest.raises(CacheError, match="bin/llama-server: .* sha256"):
        client.fetch(manifest, tmp_path / "fetched")
    client.check()
    assert client.manifest() is None  # moved to refused/, so the next build publishes again
    assert len(list((root / "refused").iterdir())) == 1


def test_host_fetches_a_published_build_and_refuses_a_tampered_one(cache, tmp_path):
    """llama_host.py's side: fetched into the partial directory, or refused, compiled, re-published."""
    url, root = cache
    identity = ident()
    publish(url, identity, a_build(tmp_path / "built"))
    builds = tmp_path / "host/builds"
    work = builds / ".b11312-82af735a2-abcd.partial"
    work.mkdir(parents=True)
    cached = llama_host.CachedBuild(url, identity, "llama.cpp b11312", tmp_path / "host", "b11312-82af735a2-abcd")
    by, claim = cached.fetch_or_claim(work, info())
    assert (by, claim) == ("sandbox-1", None)
    assert tree(work) == tree(tmp_path / "built")

    entry = root / "entries" / cached.key
    (entry / "bin/llama-server").write_bytes(b"\x7fELF something else entirely\n")
    work2 = builds / ".again.partial"
    work2.mkdir()
    by, claim = cached.fetch_or_claim(work2, info())
    assert by is None and claim, "refused, then claimed to compile and publish again"
    assert list(work2.iterdir()) == []  # nothing of the refused copy kept
    assert "cache entry refused: bin/llama-server" in (tmp_path / "host/builds.log").read_text()


def test_build_json_of_another_build_is_refused(cache, tmp_path):
    url, _ = cache
    identity = ident()
    built = a_build(tmp_path / "built")
    (built / "build.json").write_text(json.dumps({**info(), "commit": "f" * 40}))
    publish(url, identity, built)
    work = tmp_path / "host/builds/.k.partial"
    work.mkdir(parents=True)
    cached = llama_host.CachedBuild(url, identity, "llama.cpp b11312", tmp_path / "host", "k")
    assert cached.fetch_or_claim(work, info())[0] is None


def test_unreachable_cache_means_compiling(tmp_path):
    work = tmp_path / "builds/.k.partial"
    work.mkdir(parents=True)
    cached = llama_host.CachedBuild("http://127.0.0.1:9", ident(), "llama.cpp b11312", tmp_path, "k")
    assert cached.fetch_or_claim(work, info()) == (None, None)


def manifest_for(key: str, identity: dict, changes: dict | None = None) -> dict:
    files = [
        {"name": "build.json", "size": 10, "sha256": "a" * 64},
        {"name": "bin/llama-server", "size": 10, "sha256": "b" * 64},
    ]
    return {"format": 1, "key": key, "identity": identity, "files": files, **(changes or {})}


HOSTILE_FILES = {
    "parent dir": "../../etc/passwd",
    "nested": "bin/../build.json",
    "absolute": "/etc/shadow",
    "newline": "bin/llama-server\n",
    "look-alike": "bin/llama-ѕerver",  # Cyrillic s
    "not a target": "lib/libggml.so",
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_manifest_file_names_are_refused(case):
    identity = ident()
    key = build_cache.key_of(identity)
    doc = manifest_for(key, identity)
    doc["files"][1]["name"] = HOSTILE_FILES[case]
    with pytest.raises(CacheError):
        build_cache.check_manifest(doc, key)


@pytest.mark.parametrize(
    "change",
    [
        {"key": "0" * 64},
        {"identity": {**ident(), "commit": "f" * 40}},
        {"format": 2},
        {"extra": True},
        {"files": []},
    ],
)
def test_inconsistent_manifests_are_refused(change):
    identity = ident()
    key = build_cache.key_of(identity)
    with pytest.raises(CacheError):
        build_cache.check_manifest(manifest_for(key, identity, change), key)


@pytest.mark.parametrize("size", [0, -1, build_cache.MAX_FILE_BYTES + 1, "10", 1.5, True])
def test_file_sizes_outside_the_limits_are_refused(size):
    identity = ident()
    key = build_cache.key_of(identity)
    doc = manifest_for(key, identity)
    doc["files"][1]["size"] = size
    with pytest.raises(CacheError):
        build_cache.check_manifest(doc, key)


def raw(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_server_refuses_what_is_not_a_claimed_publish(cache, tmp_path):
    url, root = cache
    key = build_cache.key_of(ident())
    before = tree(root)
    assert raw(url, "PUT", f"/v1/{key}/files/bin/llama-server", b"x", {"X-Rigkit-Claim": "0" * 32}) == 410
    assert raw(url, "GET", "/v1/../../etc/passwd") == 404
    assert raw(url, "GET", f"/v1/{key[:-1]}X/manifest.json") == 404
    client = Client(url, key)
    _, claim, _ = client.claim("sandbox-1 pid 1")
    headers = {"X-Rigkit-Claim": claim}
    assert raw(url, "PUT", f"/v1/{key}/files/../../../tmp/x", b"x", headers) == 400
    assert raw(url, "PUT", f"/v1/{key}/files/bin/llama-%D1%95erver", b"x", headers) == 400
    assert raw(url, "POST", f"/v1/{key}/claim", b'{"holder": "a\\nb"}', {"Content-Length": "15"}) == 400
    # A manifest naming files that were not uploaded (or not with those bytes) publishes nothing.
    built = a_build(tmp_path / "built")
    manifest = build_cache.manifest_of(built, key, ident())
    body = json.dumps(manifest).encode()
    assert raw(url, "PUT", f"/v1/{key}/manifest.json", body, headers) == 400
    assert client.manifest() is None
    assert tree(root) == before


def test_progress_lines_are_throttled(tmp_path):
    """One line per PROGRESS_EVERY seconds of (fake) clock, whatever the compiler prints."""
    ticks = iter(range(0, 10_000, 2))  # each read of the clock: 2 s later
    script = "; ".join(f"print('[{p:3d}%] Building CXX object x{p}.o')" for p in range(1, 101))
    log = tmp_path / "build.log"
    lines: list[str] = []
    original = llama_host.log
    llama_host.log = lines.append  # type: ignore[assignment]
    try:
        with open(log, "w") as logf:
            rc = llama_host.run_logged(
                ["python3", "-c", script], logf, {}, "llama.cpp b11312", 0.0, clock=lambda: next(ticks)
            )
    finally:
        llama_host.log = original  # type: ignore[assignment]
    assert rc == 0
    assert 15 <= len(lines) <= 25, lines  # 100 lines x 2 s / 10 s
    assert lines[0].startswith("llama.cpp b11312: ") and lines[-1].endswith("s)")
    assert log.read_text().splitlines()[1:] == [f"[{p:3d}%] Building CXX object x{p}.o" for p in range(1, 101)]


@pytest.mark.parametrize(
    "line,percent",
    [("[ 45%] Building CXX object ggml.c.o", 45), ("[100%] Linking CXX executable", 100), ("[12/480] cc", 2)],
)
def test_progress_of_make_and_ninja(line, percent):
    assert llama_host.percent_of(line) == percent


def seed_data(build_cache_url):
    return {
        "gpus": {"count": 0},
        "llama_cpp": {"ref": "b11312", "cuda": False, "build_cache": build_cache_url},
        "services": [{"name": "svc", "model": "/srv/models/m-00001-of-00002.gguf", "n_gpu_layers": 0}],
    }


def test_build_cache_url_in_host_data():
    assert parse_rig("h", seed_data("http://10.0.0.2:8093")).llama_cpp.build_cache == "http://10.0.0.2:8093"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.2:8093/$(id)",
        "http://user:secret@10.0.0.2:8093",
        "http://10.0.0.2:8093\n--cache=x",
        "http://cache.lаn:8093",  # Cyrillic a
        "ftp://10.0.0.2/",
        "http://10.0.0.2:8093/?q=1",
        "--cache=http://x",
    ],
)
def test_hostile_build_cache_urls_are_refused(url):
    with pytest.raises(HostDataError, match="llama_cpp.build_cache"):
        parse_rig("h", seed_data(url))


@pytest.fixture
def token_cache(tmp_path):
    server = server_module.serve(tmp_path / "cache", "127.0.0.1", 0, token="s3cret-token")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "cache"
    server.shutdown()
    server.server_close()


def test_publishing_needs_the_token_fetching_does_not(token_cache, tmp_path):
    url, root = token_cache
    identity = ident()
    key = build_cache.key_of(identity)
    with pytest.raises(CacheError, match="token was refused"):
        Client(url, key).claim("sandbox-9 pid 9")
    with pytest.raises(CacheError, match="token was refused"):
        Client(url, key, token="wrong").claim("sandbox-9 pid 9")
    built = a_build(tmp_path / "built")
    client = Client(url, key, token="s3cret-token")
    state, claim, _ = client.claim("sandbox-1 pid 1")
    assert state == "claimed"
    client.publish(claim, built, build_cache.manifest_of(built, key, identity))
    (tmp_path / "fetched").mkdir()
    anyone = Client(url, key)
    manifest = anyone.manifest()
    assert manifest is not None
    anyone.fetch(manifest, tmp_path / "fetched")
    assert tree(tmp_path / "fetched") == tree(built)
    # A host without the token that cannot publish still builds (and says why).
    work = tmp_path / "host/builds/.k.partial"
    work.mkdir(parents=True)
    other = llama_host.CachedBuild(url, ident(cc="gcc 13"), "llama.cpp b11312", tmp_path / "host", "k", "wrong")
    assert other.fetch_or_claim(work, info()) == (None, None)


def test_token_file_needs_a_cache():
    data = seed_data("http://10.0.0.2:8093")
    data["llama_cpp"]["build_cache_token_file"] = "~/.config/rigkit/cache.token"
    assert parse_rig("h", data).llama_cpp.build_cache_token_file == "~/.config/rigkit/cache.token"
    del data["llama_cpp"]["build_cache"]
    with pytest.raises(HostDataError, match="llama_cpp.build_cache_token_file"):
        parse_rig("h", data)
