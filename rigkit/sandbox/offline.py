"""Offline stand-ins for GitHub and the Hugging Face Hub.

The sandbox and the tests cannot reach GitHub or the Hub, so this module makes
what they would have served, from material the package index can give us:

* a bare git mirror of llama.cpp whose tags ``b<N>`` sit at commit number N, so
  llama.cpp's own build-number logic (``git rev-list --count HEAD``) reports the
  real upstream build number, built from the llama.cpp tree that the
  llama-cpp-python sdists vendor;
* a tiny random-weight llama-architecture GGUF model, split into shards, with
  the real Qwen2 tokenizer and a Qwen3 chat template that handles tools.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, cast
from urllib.parse import urljoin

import requests

if TYPE_CHECKING:  # gguf comes with the sandbox and test extras, imported where used
    import gguf

#: sdist version of llama-cpp-python -> (llama.cpp build number, upstream short commit).
LLAMA_RELEASES: dict[str, tuple[int, str]] = {
    "0.3.34": (9976, "e3546c794"),
    "0.3.36": (11312, "0c1e57098"),
}

#: Where the llama.cpp tree sits inside a llama-cpp-python sdist.
SDIST_VENDOR_DIR = "vendor/llama.cpp"

#: Tokenizer and chat template the tiny model borrows from the llama.cpp tree.
VOCAB_PATH = "models/ggml-vocab-qwen2.gguf"
CHAT_TEMPLATE_PATH = "models/templates/Qwen-Qwen3-0.6B.jinja"

# Fixed identity and clock for every commit we make, so the mirror's shas are the
# same on every machine and every run (tests and caches can rely on them).
_GIT_NAME = "rigkit offline mirror"
_GIT_EMAIL = "mirror@rigkit.invalid"
_EPOCH = 1_700_000_000
_GIT_ENV = {
    "GIT_AUTHOR_NAME": _GIT_NAME,
    "GIT_AUTHOR_EMAIL": _GIT_EMAIL,
    "GIT_COMMITTER_NAME": _GIT_NAME,
    "GIT_COMMITTER_EMAIL": _GIT_EMAIL,
    # Keep the user's or the machine's git config out of what we build.
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


class MirrorRef(NamedTuple):
    """A revision (tag, branch or sha) of a git repository, read without a checkout."""

    repo: Path
    ref: str


def default_cache_dir() -> Path:
    """The cache root: ``$RIGKIT_CACHE`` or /var/cache/rigkit."""
    return Path(os.environ.get("RIGKIT_CACHE", "/var/cache/rigkit"))


# --------------------------------------------------------------------------- sdists


#: Where the llama-cpp-python sdists come from (``$RIGKIT_PYPI``, default PyPI).
PYPI = os.environ.get("RIGKIT_PYPI", "https://pypi.org")


def sdist_path(version: str, cache: Path) -> Path:
    """Where :func:`fetch_llama_sdist` leaves the sdist of ``version``."""
    return cache / f"llama_cpp_python-{version}.tar.gz"


def fetch_llama_sdist(version: str, cache: Path, index: str = PYPI) -> Path:
    """Download the llama-cpp-python ``version`` sdist into ``cache`` (once), checked against
    the sha256 the index publishes, and return it. The file itself, through PyPI's JSON API:
    ``pip download --no-binary :all:`` of an sdist builds its build dependencies (cmake,
    scikit-build-core) from source first, which took 7 of a fresh demo's 15 minutes."""
    target = sdist_path(version, cache)
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    meta = requests.get(f"{index}/pypi/llama-cpp-python/json", timeout=60)
    meta.raise_for_status()
    sdists = [u for u in meta.json()["releases"].get(version, []) if u["packagetype"] == "sdist"]
    if not sdists:
        raise FileNotFoundError(f"llama-cpp-python {version} has no sdist on {index}")
    digest = hashlib.sha256()
    partial = target.with_suffix(".partial")
    url = urljoin(meta.url, sdists[0]["url"])  # mirrors of the index answer with relative URLs
    with requests.get(url, stream=True, timeout=60) as got, partial.open("wb") as out:
        got.raise_for_status()
        for chunk in got.iter_content(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sdists[0]["digests"]["sha256"]:
        partial.unlink()
        raise ValueError(
            f"{sdists[0]['url']}: sha256 {digest.hexdigest()}, the index says {sdists[0]['digests']['sha256']}"
        )
    partial.rename(target)
    return target


# --------------------------------------------------------------------------- git mirror


class GitError(subprocess.CalledProcessError):
    """A failed git command; unlike its base class, the message carries git's stderr."""

    def __str__(self) -> str:
        stderr = self.stderr.decode(errors="replace") if isinstance(self.stderr, bytes) else ""
        return f"{super().__str__()}\n{stderr.strip()}"


def _git(
    *args: str, cwd: Path | None = None, git_dir: Path | None = None, extra_env: dict[str, str] | None = None
) -> str:
    """Run git with the fixed identity; return stdout stripped."""
    cmd = ["git"]
    if git_dir is not None:
        cmd += ["--git-dir", str(git_dir)]
    cmd += args
    env = {**os.environ, **_GIT_ENV, **(extra_env or {})}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    if out.returncode != 0:
        raise GitError(out.returncode, cmd, out.stdout, out.stderr)
    return out.stdout.decode().strip()


def mirror_tags(mirror: Path) -> set[str]:
    """Tag names in the git repository ``mirror`` (empty when it is not one)."""
    if not (mirror / "HEAD").is_file():
        return set()
    try:
        return set(_git("tag", "--list", git_dir=mirror).split())
    except GitError:
        return set()


def _quote_path(path: str) -> bytes:
    """C-style quoted path for a fast-import file command (safe for any name)."""
    out = bytearray(b'"')
    for byte in path.encode():
        if byte in (0x22, 0x5C):  # " and \
            out += b"\\" + bytes([byte])
        elif byte < 0x20 or byte >= 0x7F:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def _commit_header(index: int, message: str, mark: int | None = None) -> bytes:
    # Commit i gets time EPOCH+i: monotonic, fixed, so shas are reproducible.
    head = b"commit refs/heads/master\n"
    if mark is not None:
        head += b"mark :%d\n" % mark
    stamp = b"%d +0000" % (_EPOCH + index)
    who = f"{_GIT_NAME} <{_GIT_EMAIL}>".encode()
    head += b"author " + who + b" " + stamp + b"\n"
    head += b"committer " + who + b" " + stamp + b"\n"
    return head + _data(message.encode())


def _sdist_tree(sdist: Path) -> Iterator[tuple[str, int, bytes]]:
    """(path, git mode, content) for every file of vendor/llama.cpp in ``sdist``."""
    with tarfile.open(sdist, "r:gz") as tar:
        prefix: str | None = None
        for member in tar:
            parts = member.name.split("/", 1)
            if len(parts) < 2:
                continue
            if prefix is None:
                prefix = parts[0] + "/" + SDIST_VENDOR_DIR + "/"
            if not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix) :]
            # The sdist carries the submodule's ".git" pointer file: not part of the tree.
            if not rel or rel == ".git" or rel.startswith(".git/"):
                continue
            if member.issym():
                yield rel, 0o120000, member.linkname.encode()
            elif member.isfile() or member.islnk():
                fh = tar.extractfile(member)
                assert fh is not None
                mode = 0o100755 if member.mode & 0o111 else 0o100644
                yield rel, mode, fh.read()


def _write_mirror_stream(out: IO[bytes], versions: list[str], cache: Path) -> None:
    """Write the fast-import stream of the linear history for ``versions`` (ascending)."""
    index = 0
    who = f"{_GIT_NAME} <{_GIT_EMAIL}>".encode()
    for version in versions:
        build, upstream = LLAMA_RELEASES[version]
        # Empty fillers so that the real tree lands on commit number `build`.
        while index < build - 1:
            index += 1
            out.write(_commit_header(index, f"filler {index}\n"))
        index += 1
        message = (
            f"llama.cpp b{build} (upstream {upstream})\n\n"
            f"Tree of {SDIST_VENDOR_DIR} from the llama-cpp-python {version} sdist.\n"
        )
        out.write(_commit_header(index, message, mark=build))
        out.write(b"deleteall\n")
        for rel, mode, content in _sdist_tree(fetch_llama_sdist(version, cache)):
            out.write(b"M %o inline " % mode + _quote_path(rel) + b"\n" + _data(content))
        out.write(b"\n")
        # Annotated, so a plain `git describe` finds it as well as `--tags`.
        out.write(
            b"tag b%d\nfrom :%d\ntagger " % (build, build)
            + who
            + b" %d +0000\n" % (_EPOCH + index)
            + _data(f"llama.cpp b{build} ({upstream})\n".encode())
        )


def make_llama_mirror(dest: Path, versions: list[str], cache: Path) -> Path:
    """Build (or keep) a bare llama.cpp mirror at ``dest`` with a tag ``b<N>`` per version.

    All versions sit on one linear ``master`` history where ``git rev-list --count b<N>``
    is N.  Commits have a fixed identity and clock, so the shas depend only on the set
    of versions in the mirror.  A mirror that already has every wanted tag is left untouched; otherwise it is
    rebuilt (keeping the release tags it had; branches from :func:`add_llama_commit` go).
    """
    unknown = [v for v in versions if v not in LLAMA_RELEASES]
    if unknown:
        raise KeyError(f"no llama.cpp build number known for llama-cpp-python {unknown}")
    have = mirror_tags(dest)
    if dest.exists() and not (dest / "HEAD").is_file() and any(dest.iterdir()):
        # Never replace something that is not a git repository.
        raise FileExistsError(f"{dest} exists and is not a git repository")
    if all(f"b{LLAMA_RELEASES[v][0]}" in have for v in versions):
        return dest
    keep = [v for v, (build, _) in LLAMA_RELEASES.items() if f"b{build}" in have]
    wanted = sorted(set(versions) | set(keep), key=lambda v: LLAMA_RELEASES[v][0])

    # Build beside dest and swap in at the end, so an interrupted build leaves no half mirror.
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    try:
        _git("init", "--quiet", "--bare", str(work))
        _git("symbolic-ref", "HEAD", "refs/heads/master", git_dir=work)
        env = {**os.environ, **_GIT_ENV}
        proc = subprocess.Popen(
            ["git", "--git-dir", str(work), "fast-import", "--quiet"], stdin=subprocess.PIPE, env=env
        )
        assert proc.stdin is not None
        try:
            _write_mirror_stream(proc.stdin, wanted, cache)
            proc.stdin.close()
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.wait()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, "git fast-import")
        # mkdtemp made it 0700; a shared cache must be readable by the non-root tests.
        work.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return dest


def _slug(message: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", message.lower()).strip("-")[:60].strip("-")
    return slug or "rigkit-commit"


def add_llama_commit(mirror: Path, base_tag: str, edit: Callable[[Path], None], message: str) -> str:
    """Commit ``edit`` applied to the tree of ``base_tag`` onto a branch; return its sha.

    ``edit`` gets the root of a checkout of ``base_tag`` and changes files in place.  The
    commit becomes branch ``<slug of message>`` in ``mirror``; the same edit and message
    give the same sha every time (fixed identity and date).
    """
    branch = _slug(message)
    base_count = int(_git("rev-list", "--count", base_tag, git_dir=mirror))
    with tempfile.TemporaryDirectory(prefix="rigkit-llama-edit-") as tmp:
        tree = Path(tmp) / "tree"
        _git("worktree", "add", "--quiet", "--detach", str(tree), base_tag, git_dir=mirror)
        try:
            edit(tree)
            # -f: upstream's .gitignore hides tracked files (and whatever edit adds).
            _git("add", "-A", "-f", cwd=tree)
            stamp = f"{_EPOCH + base_count + 1} +0000"
            _git(
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                message,
                cwd=tree,
                extra_env={"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
            )
            sha = _git("rev-parse", "HEAD", cwd=tree)
        finally:
            _git("worktree", "remove", "--force", str(tree), git_dir=mirror)
            _git("worktree", "prune", git_dir=mirror)
    _git("branch", "--force", branch, sha, git_dir=mirror)
    return sha


# --------------------------------------------------------------------------- tiny model


def read_llama_file(llama_src: Path | MirrorRef, rel: str) -> bytes:
    """Bytes of ``rel`` from a llama.cpp source tree or from a revision of a mirror."""
    if isinstance(llama_src, MirrorRef):
        env = {**os.environ, **_GIT_ENV}
        return subprocess.run(
            ["git", "--git-dir", str(llama_src.repo), "show", f"{llama_src.ref}:{rel}"],
            env=env,
            check=True,
            capture_output=True,
        ).stdout
    return (Path(llama_src) / rel).read_bytes()


#: The tiny model's weights are random from this seed, so its bytes never change.
TINY_SEED = 20240601


# GGUF scalar value types -> struct format (GGUF spec: little-endian).
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _tokenizer_fields(vocab_gguf: bytes) -> dict[str, object]:
    """Tokenizer key/values of a llama.cpp vocab GGUF, strings kept as raw bytes.

    A direct header parse: gguf.GGUFReader builds a numpy view per array item and
    needs ~15 s for a 150k-token vocabulary; this needs well under one.
    """
    view = memoryview(vocab_gguf)
    if bytes(view[:4]) != b"GGUF":
        raise ValueError("not a GGUF file")
    pos = 4

    def take(fmt: str) -> int | float | bool:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, view, pos)
        pos += struct.calcsize(fmt)
        return value

    def take_str() -> bytes:
        nonlocal pos
        length = int(take("<Q"))
        pos += length
        return bytes(view[pos - length : pos])

    def take_value(vtype: int) -> object:
        if vtype == _GGUF_STRING:
            return take_str()
        if vtype == _GGUF_ARRAY:
            item_type, count = int(take("<I")), int(take("<Q"))
            return [take_value(item_type) for _ in range(count)]
        return take(_GGUF_SCALARS[vtype])

    version = take("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    take("<Q")  # tensor count
    fields: dict[str, object] = {}
    for _ in range(int(take("<Q"))):
        key = take_str().decode()
        value = take_value(int(take("<I")))
        if key.startswith("tokenizer.ggml."):
            fields[key] = value.decode() if isinstance(value, bytes) else value
    return fields


class LlamaShape(NamedTuple):
    """The hyper-parameters of a llama-architecture model that rigkit generates."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    ctx: int
    rope_freq_base: float = 1_000_000.0
    rms_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


#: The tiny model: small enough to serve anywhere; head dim 32, as q8_0 KV cache blocks (32)
#: must divide it.
TINY_SHAPE = LlamaShape(layers=2, hidden=64, heads=2, kv_heads=1, ffn=128, ctx=4096)


def llama_tensor_shapes(shape: LlamaShape, n_vocab: int, tied_output: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and numpy shapes (rows, cols) of a llama model, in file order; 1-D
    entries are the RMS norms. numpy (rows, cols) is GGUF ne = [cols, rows]."""
    h, hd = shape.hidden, shape.head_dim
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, h))]
    for i in range(shape.layers):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (h,)),
            (f"blk.{i}.attn_q.weight", (shape.heads * hd, h)),
            (f"blk.{i}.attn_k.weight", (shape.kv_heads * hd, h)),
            (f"blk.{i}.attn_v.weight", (shape.kv_heads * hd, h)),
            (f"blk.{i}.attn_output.weight", (h, shape.heads * hd)),
            (f"blk.{i}.ffn_norm.weight", (h,)),
            (f"blk.{i}.ffn_gate.weight", (shape.ffn, h)),
            (f"blk.{i}.ffn_up.weight", (shape.ffn, h)),
            (f"blk.{i}.ffn_down.weight", (h, shape.ffn)),
        ]
    shapes.append(("output_norm.weight", (h,)))
    if not tied_output:
        shapes.append(("output.weight", (n_vocab, h)))
    return shapes


def llama_gguf_writer(
    llama_src: Path | MirrorRef, path: Path, name: str, shape: LlamaShape, file_type: int, split_max_tensors: int = 0
) -> tuple[gguf.GGUFWriter, int]:
    """A GGUFWriter with a llama model's metadata already added: the hyper-parameters, the
    tokenizer of ``models/ggml-vocab-qwen2.gguf`` and the Qwen3 chat template of the
    llama.cpp tree at ``llama_src``. Returns the writer and the vocabulary size; the
    caller adds the tensors.
    """
    import gguf

    tok = _tokenizer_fields(read_llama_file(llama_src, VOCAB_PATH))
    tokens = cast(list, tok["tokenizer.ggml.tokens"])
    n_vocab = len(tokens)
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_context_length(shape.ctx)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model(str(tok["tokenizer.ggml.model"]))
    writer.add_tokenizer_pre(str(tok["tokenizer.ggml.pre"]))
    writer.add_token_list(tokens)
    writer.add_token_types(cast(list, tok["tokenizer.ggml.token_type"]))
    writer.add_token_merges(cast(list, tok["tokenizer.ggml.merges"]))
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in tok:
            writer.add_uint32(f"tokenizer.ggml.{key}", int(cast(int, tok[f"tokenizer.ggml.{key}"])))
    writer.add_add_bos_token(False)  # Qwen never prepends BOS
    writer.add_chat_template(read_llama_file(llama_src, CHAT_TEMPLATE_PATH).decode())
    return writer, n_vocab


def make_tiny_model(llama_src: Path | MirrorRef, out_dir: Path, name: str = "tiny-qwen", shards: int = 2) -> list[Path]:
    """Write a random-weight llama GGUF in ``shards`` files; return them, first first.

    Tokenizer and chat template as in :func:`llama_gguf_writer` (the template renders
    tools, ``tool_calls`` and tool results).  Weights come from a fixed seed, so the bytes
    are the same on every run.  Token embeddings are tied to the output (no
    ``output.weight``), which keeps the files near 20 MB.
    """
    import gguf
    import numpy as np

    if shards < 1:
        raise ValueError("shards must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.gguf"
    # Split by tensor count: that is what gguf-py (and llama-gguf-split) support.
    n_tensors = len(llama_tensor_shapes(TINY_SHAPE, n_vocab=0, tied_output=True))
    per_shard = -(-n_tensors // shards)
    if shards > 1 and -(-n_tensors // per_shard) != shards:
        raise ValueError(f"{n_tensors} tensors cannot be split into {shards} shards")
    writer, n_vocab = llama_gguf_writer(
        llama_src,
        path,
        name,
        TINY_SHAPE,
        gguf.LlamaFileType.MOSTLY_F16,
        split_max_tensors=per_shard if shards > 1 else 0,
    )
    rng = np.random.default_rng(TINY_SEED)
    for tensor_name, dims in llama_tensor_shapes(TINY_SHAPE, n_vocab, tied_output=True):
        if len(dims) == 1:
            writer.add_tensor(tensor_name, np.ones(dims, dtype=np.float32))
        else:
            writer.add_tensor(tensor_name, (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(path)
