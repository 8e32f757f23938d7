"""Tests of the offline llama.cpp mirror and the tiny generated model (rigkit.sandbox.offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rigkit.sandbox.offline import (
    LLAMA_RELEASES,
    GitError,
    MirrorRef,
    add_llama_commit,
    default_cache_dir,
    fetch_llama_sdist,
    make_llama_mirror,
    make_tiny_model,
    mirror_tags,
)

VERSIONS = ["0.3.36", "0.3.34"]
# The mirror is built with a fixed identity and clock, so its shas are known in advance
# (for this set of versions: b11312's parent chain runs through b9976).
B11312_SHA = "82af735a"

REPO_ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def sdist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$RIGKIT_CACHE/sdists`` when it has or can take the sdists, else a temp dir."""
    cache = default_cache_dir() / "sdists"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        usable = os.access(cache, os.W_OK) or all((cache / f"llama_cpp_python-{v}.tar.gz").is_file() for v in VERSIONS)
    except OSError:
        usable = False
    if not usable:
        cache = tmp_path_factory.mktemp("sdists")
    for version in VERSIONS:
        fetch_llama_sdist(version, cache)
    return cache


@pytest.fixture(scope="session")
def grown_mirror(tmp_path_factory: pytest.TempPathFactory, sdist_cache: Path) -> tuple[Path, set[str]]:
    """The session's mirror, built first with the older release only, then grown.

    Two steps cost little more than one and also cover growing a mirror; returns the
    mirror and its tags after the first step.
    """
    dest = tmp_path_factory.mktemp("git") / "llama.cpp.git"
    make_llama_mirror(dest, ["0.3.34"], sdist_cache)
    first_tags = mirror_tags(dest)
    return make_llama_mirror(dest, VERSIONS, sdist_cache), first_tags


@pytest.fixture(scope="session")
def mirror(grown_mirror: tuple[Path, set[str]]) -> Path:
    return grown_mirror[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> list[Path]:
    return make_tiny_model(MirrorRef(mirror, "b11312"), tmp_path_factory.mktemp("model"))


# ------------------------------------------------------------------------- mirror


def test_fetch_is_a_noop_when_cached(sdist_cache: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in sdist_cache.iterdir()}
    assert fetch_llama_sdist("0.3.36", sdist_cache) == sdist_cache / "llama_cpp_python-0.3.36.tar.gz"
    assert {p: p.stat().st_mtime_ns for p in sdist_cache.iterdir()} == before


def test_mirror_tags_count_to_build_numbers(mirror: Path) -> None:
    assert git(mirror, "rev-parse", "--is-bare-repository") == "true"
    for version in VERSIONS:
        build, _ = LLAMA_RELEASES[version]
        assert git(mirror, "rev-list", "--count", f"b{build}") == str(build)
        # Annotated tags: plain describe finds them.
        assert git(mirror, "describe", f"b{build}") == f"b{build}"
    assert git(mirror, "rev-parse", "master") == git(mirror, "rev-parse", "b11312^{commit}")
    assert git(mirror, "symbolic-ref", "HEAD") == "refs/heads/master"
    # Readable by others: the shared cache copy is used by non-root tests.
    assert mirror.stat().st_mode & 0o777 == 0o755


def test_mirror_is_one_linear_history(mirror: Path) -> None:
    git(mirror, "merge-base", "--is-ancestor", "b9976", "b11312")
    assert git(mirror, "rev-list", "--merges", "--count", "master") == "0"
    # Fillers are empty: b9976's tree stays until b11312 replaces it.
    assert git(mirror, "rev-parse", "b11312~1^{tree}") == git(mirror, "rev-parse", "b9976^{tree}")
    assert git(mirror, "rev-parse", "b9976~1^{tree}") == git(mirror, "hash-object", "-t", "tree", "/dev/null")


def test_mirror_holds_the_full_tree(mirror: Path) -> None:
    files = git(mirror, "ls-tree", "-r", "--name-only", "b11312").splitlines()
    assert len(files) > 3000
    # Files upstream's .gitignore would hide are committed too; the submodule pointer is not.
    for path in ("CMakeLists.txt", "tools/server/server.cpp", "models/ggml-vocab-qwen2.gguf", ".gitignore"):
        assert path in files
    assert ".git" not in files
    assert "100755" in git(mirror, "ls-tree", "b11312", "convert_hf_to_gguf.py")


def test_mirror_is_reproducible(mirror: Path) -> None:
    assert git(mirror, "rev-parse", "b11312^{commit}").startswith(B11312_SHA)


def test_mirror_rebuild_is_a_noop(mirror: Path, sdist_cache: Path) -> None:
    refs = git(mirror, "for-each-ref")
    inode = mirror.stat().st_ino
    start = time.monotonic()
    assert make_llama_mirror(mirror, ["0.3.36"], sdist_cache) == mirror
    assert time.monotonic() - start < 2
    assert git(mirror, "for-each-ref") == refs
    assert mirror.stat().st_ino == inode


def test_mirror_grows_keeping_its_tags(grown_mirror: tuple[Path, set[str]], sdist_cache: Path) -> None:
    mirror, first_tags = grown_mirror
    assert first_tags == {"b9976"}
    assert mirror_tags(mirror) == {"b9976", "b11312"}
    assert git(mirror, "rev-list", "--count", "master") == "11312"
    # Asking for the older release alone keeps both.
    make_llama_mirror(mirror, ["0.3.34"], sdist_cache)
    assert mirror_tags(mirror) == {"b9976", "b11312"}


def test_unknown_version_is_refused(tmp_path: Path, sdist_cache: Path) -> None:
    with pytest.raises(KeyError):
        make_llama_mirror(tmp_path / "m.git", ["0.0.1"], sdist_cache)
    assert not (tmp_path / "m.git").exists()


def test_mirror_never_replaces_other_data(tmp_path: Path, sdist_cache: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    with pytest.raises(FileExistsError):
        make_llama_mirror(tmp_path, ["0.3.34"], sdist_cache)
    assert (tmp_path / "keep.txt").read_text() == "mine\n"


def test_add_llama_commit(mirror: Path) -> None:
    def break_build(tree: Path) -> None:
        server = tree / "tools" / "server" / "server.cpp"
        server.write_text(server.read_text() + "\n#error rigkit test: does not compile\n")
        (tree / "build").mkdir()
        (tree / "build" / "ignored-by-upstream.txt").write_text("kept\n")

    sha = add_llama_commit(mirror, "b11312", break_build, "Break the server build!")
    assert len(sha) == 40
    assert git(mirror, "rev-parse", "break-the-server-build") == sha
    assert git(mirror, "rev-parse", f"{sha}^") == git(mirror, "rev-parse", "b11312^{commit}")
    assert git(mirror, "rev-list", "--count", sha) == "11313"
    assert "#error rigkit test" in git(mirror, "show", f"{sha}:tools/server/server.cpp")
    assert git(mirror, "show", f"{sha}:build/ignored-by-upstream.txt") == "kept"
    # No worktree is left registered; the same edit gives the same commit.
    assert len(git(mirror, "worktree", "list").splitlines()) == 1
    assert add_llama_commit(mirror, "b11312", break_build, "Break the server build!") == sha
    assert git(mirror, "rev-parse", "master") == git(mirror, "rev-parse", "b11312^{commit}")


def test_add_llama_commit_reports_git_errors(mirror: Path) -> None:
    with pytest.raises(GitError, match="no-such-tag"):
        add_llama_commit(mirror, "no-such-tag", lambda tree: None, "never")


def test_normal_clone_counts_builds(mirror: Path, tmp_path: Path) -> None:
    clone = tmp_path / "llama.cpp"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-checkout", "--branch", "b9976", str(mirror), str(clone)], check=True
    )
    count = subprocess.run(
        ["git", "-C", str(clone), "rev-list", "--count", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert count == "9976"


# ------------------------------------------------------------------------- model


def test_model_shards(tiny_model: list[Path]) -> None:
    assert [p.name for p in tiny_model] == ["tiny-qwen-00001-of-00002.gguf", "tiny-qwen-00002-of-00002.gguf"]
    total = sum(p.stat().st_size for p in tiny_model)
    assert 15_000_000 < total < 40_000_000


def test_model_reads_with_gguf(tiny_model: list[Path]) -> None:
    import gguf

    first = gguf.GGUFReader(tiny_model[0])
    second = gguf.GGUFReader(tiny_model[1])
    for index, reader in enumerate((first, second)):
        assert reader.fields["split.count"].contents() == 2
        assert reader.fields["split.no"].contents() == index
        assert reader.fields["split.tensors.count"].contents() == 20
    assert first.fields["general.architecture"].contents() == "llama"
    assert first.fields["llama.block_count"].contents() == 2
    assert first.fields["llama.embedding_length"].contents() == 64
    assert len(first.fields["tokenizer.ggml.tokens"].data) == 151936
    template = first.fields["tokenizer.chat_template"].contents()
    assert "tool_calls" in template and "<tool_response>" in template
    names = {t.name for t in first.tensors} | {t.name for t in second.tensors}
    assert len(names) == 20
    assert {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= names
    embd = next(t for t in first.tensors if t.name == "token_embd.weight")
    assert list(embd.shape) == [64, 151936]


def test_model_is_deterministic(tiny_model: list[Path], mirror: Path, tmp_path: Path) -> None:
    again = make_tiny_model(MirrorRef(mirror, "b11312"), tmp_path)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in tiny_model]


def test_model_from_source_tree_and_single_file(mirror: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for rel in ("models/ggml-vocab-qwen2.gguf", "models/templates/Qwen-Qwen3-0.6B.jinja"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(
            subprocess.run(
                ["git", "--git-dir", str(mirror), "show", f"b11312:{rel}"], check=True, capture_output=True
            ).stdout
        )
    (single,) = make_tiny_model(tree, tmp_path / "out", name="one", shards=1)
    assert single.name == "one.gguf"
    four = make_tiny_model(tree, tmp_path / "out4", name="four", shards=4)
    assert [p.name for p in four][-1] == "four-00004-of-00004.gguf"
    with pytest.raises(ValueError):
        make_tiny_model(tree, tmp_path / "bad", shards=8)  # 20 tensors do not make 8 shards


# ------------------------------------------------------------------------- slow


@pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="vagrant is not installed (make demo/test do not install it: apt-get install vagrant)",
)
@pytest.mark.parametrize("gpu_pci", [None, "0000:41:00.0"])
def test_vagrantfile_validates(tmp_path: Path, gpu_pci: str | None) -> None:
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    env.pop("RIG_GPU_PCI", None)
    if gpu_pci:
        env["RIG_GPU_PCI"] = gpu_pci
    plugins = subprocess.run(
        ["vagrant", "plugin", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    ).stdout
    # With the libvirt plugin its settings are checked too; otherwise only the common ones.
    if "vagrant-libvirt" in plugins:
        env["VAGRANT_DEFAULT_PROVIDER"] = "libvirt"
        command = ["vagrant", "validate"]
    else:
        command = ["vagrant", "validate", "--ignore-provider"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_sdist_fetch_checks_the_index_sha256(tmp_path: Path) -> None:
    """A local index (PyPI's JSON API, relative URLs as mirrors answer) whose sdist does not
    match the sha256 it publishes: refused, nothing left in the cache; then a matching one."""
    import hashlib
    import json
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path / "index"
    (root / "pypi/llama-cpp-python").mkdir(parents=True)
    (root / "packages").mkdir()
    (root / "packages/llama_cpp_python-9.9.9.tar.gz").write_bytes(b"not what the index says")

    def publish(sha: str) -> None:
        release = [
            {"packagetype": "sdist", "url": "../../packages/llama_cpp_python-9.9.9.tar.gz", "digests": {"sha256": sha}}
        ]
        (root / "pypi/llama-cpp-python/json").write_text(json.dumps({"releases": {"9.9.9": release}}))

    handler = lambda *a, **kw: SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        publish("0" * 64)
        with pytest.raises(ValueError, match="sha256"):
            fetch_llama_sdist("9.9.9", tmp_path / "cache", index=index)
        assert list((tmp_path / "cache").iterdir()) == []
        publish(hashlib.sha256(b"not what the index says").hexdigest())
        got = fetch_llama_sdist("9.9.9", tmp_path / "cache", index=index)
        assert got.read_bytes() == b"not what the index says"
    finally:
        server.shutdown()
