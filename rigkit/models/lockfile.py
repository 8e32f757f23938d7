"""The model lockfile: every model reference pinned to a commit and per-file sha256.

``rigkit lock INVENTORY`` writes ``<inventory stem>.lock.yaml`` next to the
inventory::

    # Written by `rigkit lock inventories/prod.py`; do not edit.
    version: 1
    models:
      unsloth/Qwen3-8B-GGUF@main:UD-Q6_K_XL/*.gguf:
        repo: unsloth/Qwen3-8B-GGUF
        revision: main
        include: [UD-Q6_K_XL/*.gguf]
        sha: 0123456789abcdef0123456789abcdef01234567
        files:
        - {path: UD-Q6_K_XL/Qwen3-8B-00001-of-00002.gguf, size: 4000000000, sha256: 9f86d0...}

Keys are :attr:`rigkit.hub.ModelRef.key` (repo, revision, include; not dest or
endpoint, so hosts placing the same files elsewhere or fetching from a mirror
share one entry).  Deploys call :func:`check`, which fails naming
``rigkit lock <inventory>`` when an entry is missing or stale.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rigkit.checkpoints.safetensors import CheckpointError, check_tensor_name
from rigkit.checkpoints.sources import HEADER_RANGE, SHARD_FILE, LockedRange
from rigkit.fit.shape import ModelShape, ShapeError
from rigkit.models.hub import (
    INCLUDE_RE,
    REPO_RE,
    REVISION_RE,
    ModelRef,
    RemoteFile,
    first_shard,
)

LOCK_VERSION = 1
SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
COMMIT_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)
# A locked file's path inside dest: printable ASCII without backslashes (what the Hub's paths
# are), checked part by part below.
FILE_PATH_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,1024}", re.ASCII)
# Names rigkit's fetcher keeps beside the model files (its state, the repo's commit, partial
# downloads, temporary files): a locked file must not be one of them.
RESERVED_PREFIX = ".rigkit-"
RESERVED_SUFFIXES = (".partial", ".tmp", ".rigkit-upload")
ENTRY_KEYS = ("repo", "revision", "include", "sha", "files")
#: Only for a derived model's input read by range (rigkit.checkpoints): the byte ranges a
#: host reads of it, each with the sha256 ``rigkit lock`` saw (the Hub's covers whole files).
#: ``shape``: what the memory plan reads of the model (rigkit.fit.shape), from its headers.
OPTIONAL_ENTRY_KEYS = ("ranges", "shape")
FILE_KEYS = ("path", "size", "sha256")
RANGE_KEYS = ("path", "name", "start", "size", "sha256")


class LockError(Exception):
    """The lockfile is missing, unreadable or does not match the inventory."""


# A locked file is what the Hub listed: path, size, sha256.
LockedFile = RemoteFile


@dataclass(frozen=True)
class LockEntry:
    repo: str
    revision: str
    include: tuple[str, ...]
    sha: str
    files: tuple[LockedFile, ...]
    ranges: tuple[LockedRange, ...] = ()
    shape: ModelShape | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def model_path(self, dest: str) -> str:
        """Absolute path of the file llama-server's ``-m`` takes (first shard)."""
        return os.path.join(dest, first_shard(f.path for f in self.files))

    def to_data(self) -> dict:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "include": list(self.include),
            "sha": self.sha,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            **({"ranges": [r.to_data() for r in self.ranges]} if self.ranges else {}),
            **({"shape": self.shape.to_data()} if self.shape is not None else {}),
        }

    @property
    def ranges_bytes(self) -> int:
        return sum(r.size for r in self.ranges)

    @classmethod
    def from_data(cls, key: Any, d: Any) -> LockEntry:
        """A lock entry read from a lockfile, checked whole as untrusted data: the files it
        names are written by a root fetcher, so each path is relative, normalised and stays in
        the model's directory; sizes and hashes are well formed. A bad one is a
        :class:`LockError` naming the entry and the field."""
        if not isinstance(key, str):
            raise LockError(f"lock entry {key!r}: expected a string key '<repo>@<revision>:<include,...>'")
        where = f"lock entry {key!r}"
        if not isinstance(d, Mapping):
            raise LockError(f"{where}: expected a mapping of {', '.join(ENTRY_KEYS)}, got {type(d).__name__}")
        _check_keys(d, ENTRY_KEYS, where, optional=OPTIONAL_ENTRY_KEYS)
        repo = _field(d, "repo", REPO_RE, where, "'<org>/<name>'")
        if ".." in repo:
            raise LockError(f"{where}: repo: expected '<org>/<name>' without '..', got {repo!r}")
        revision = _field(d, "revision", REVISION_RE, where, "a branch, tag or commit")
        raw_include = d["include"]
        if isinstance(raw_include, str) or not isinstance(raw_include, list) or not raw_include:
            raise LockError(f"{where}: include: expected a non-empty list of glob patterns, got {raw_include!r}")
        include = tuple(
            _checked(p, INCLUDE_RE, where, f"include[{i}]", "a glob pattern over repository paths")
            for i, p in enumerate(raw_include)
        )
        sha = _field(d, "sha", COMMIT_RE, where, "a commit sha (40 lower-case hex digits)")
        if key != f"{repo}@{revision}:{','.join(include)}":
            raise LockError(
                f"{where}: expected the key of its repo, revision and include "
                f"({repo}@{revision}:{','.join(include)}): run rigkit lock again rather than edit the lock"
            )
        raw_files = d["files"]
        if not isinstance(raw_files, list):
            raise LockError(f"{where}: files: expected a list of {{path, size, sha256}}, got {raw_files!r}")
        files: list[LockedFile] = []
        seen: set[str] = set()
        for i, f in enumerate(raw_files):
            at = f"files[{i}]"
            if not isinstance(f, Mapping):
                raise LockError(f"{where}: {at}: expected a mapping of path, size and sha256, got {f!r}")
            _check_keys(f, FILE_KEYS, f"{where}: {at}")
            path = _file_path(f["path"], where, f"{at}.path")
            if path in seen:
                raise LockError(f"{where}: {at}.path: expected each file once, got {path!r} twice")
            seen.add(path)
            size = f["size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise LockError(f"{where}: {at}.size: expected a number of bytes (an integer, 0 or more), got {size!r}")
            digest = _checked(f["sha256"], SHA256_RE, where, f"{at}.sha256", "a sha256 (64 lower-case hex digits)")
            files.append(LockedFile(path, size, digest))
        ranges = _ranges(d["ranges"], {f.path: f.size for f in files}, where) if "ranges" in d else ()
        try:
            shape = ModelShape.from_data(d["shape"], f"{where}: shape") if "shape" in d else None
        except ShapeError as exc:
            raise LockError(str(exc)) from None
        return cls(
            repo=repo, revision=revision, include=include, sha=sha, files=tuple(files), ranges=ranges, shape=shape
        )


def _ranges(raw: Any, sizes: Mapping[str, int], where: str) -> tuple[LockedRange, ...]:
    """An entry's byte ranges, checked whole: each of a .safetensors file of the entry, inside
    that file, after its header (whose range starts the file and is locked too), once."""
    if not isinstance(raw, list) or not raw:
        raise LockError(f"{where}: ranges: expected a non-empty list of {{{', '.join(RANGE_KEYS)}}}, got {raw!r}")
    out: dict[tuple[str, str], LockedRange] = {}
    for i, r in enumerate(raw):
        at = f"{where}: ranges[{i}]"
        if not isinstance(r, Mapping):
            raise LockError(f"{at}: expected a mapping of {', '.join(RANGE_KEYS)}, got {r!r}")
        _check_keys(r, RANGE_KEYS, at)
        path = r["path"]
        if not isinstance(path, str) or path not in sizes or not SHARD_FILE.fullmatch(path):
            raise LockError(f"{at}.path: expected a .safetensors file of this entry's files, got {path!r}")
        name = r["name"]
        if name != HEADER_RANGE:
            try:
                check_tensor_name(name, f"{at}.name")
            except CheckpointError as exc:
                raise LockError(str(exc)) from None
        start, size = r["start"], r["size"]
        for field, value in (("start", start), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LockError(f"{at}.{field}: expected a number of bytes (an integer, 0 or more), got {value!r}")
        if start + size > sizes[path]:
            raise LockError(f"{at}: bytes {start}+{size} end beyond {path}, which the lock says is {sizes[path]} bytes")
        if name == HEADER_RANGE and (start != 0 or size < 8):
            raise LockError(f"{at}: a header's range starts the file (0) and has its 8-byte length, got {start}+{size}")
        digest = _checked(r["sha256"], SHA256_RE, at, "sha256", "a sha256 (64 lower-case hex digits)")
        if (path, name) in out:
            raise LockError(f"{at}: expected each range once, got {path} {name} twice")
        out[(path, name)] = LockedRange(path, name, start, size, digest)
    for (path, name), r in out.items():
        header = out.get((path, HEADER_RANGE))
        if header is None:
            raise LockError(f"{where}: ranges: {path} has tensor ranges but no {HEADER_RANGE} range")
        if name != HEADER_RANGE and r.start < header.size:
            raise LockError(f"{where}: ranges: {path} {name} starts at {r.start}, inside the header (0+{header.size})")
    return tuple(out.values())


def _check_keys(d: Mapping[Any, Any], keys: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in keys if k not in d]
    unknown = sorted(str(k) for k in d if k not in keys and k not in optional)
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown key {unknown[0]!r}"
        raise LockError(f"{where}: expected the keys {', '.join(keys)} ({problem})")


def _checked(value: Any, pattern: re.Pattern[str], where: str, field: str, expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise LockError(f"{where}: {field}: expected {expected}, got {value!r}")
    return value


def _field(d: Mapping[str, Any], field: str, pattern: re.Pattern[str], where: str, expected: str) -> str:
    return _checked(d[field], pattern, where, field, expected)


def _file_path(value: Any, where: str, field: str) -> str:
    """A locked file's path: relative to the model's directory and staying inside it."""
    expected = (
        "a relative path inside the model's directory (printable ASCII, no backslash; "
        "no '..', '.', empty or absolute parts; not a name rigkit's fetcher keeps there)"
    )
    if not isinstance(value, str) or not FILE_PATH_RE.fullmatch(value):
        raise LockError(f"{where}: {field}: expected {expected}, got {value!r}")
    parts = value.split("/")
    name = parts[-1]
    if (
        value.startswith("/")
        or posixpath.normpath(value) != value
        or any(part in ("", ".", "..") or part != part.strip() for part in parts)
        or name.startswith(RESERVED_PREFIX)
        or name.endswith(RESERVED_SUFFIXES)
    ):
        raise LockError(f"{where}: {field}: expected {expected}, got {value!r}")
    return value


def lock_path_for(inventory_path: str | os.PathLike) -> Path:
    p = Path(inventory_path)
    return p.with_name(f"{p.stem}.lock.yaml")


def load(path: str | os.PathLike, *, inventory: str = "INVENTORY") -> dict[str, LockEntry]:
    """The lock entries of a lockfile; a missing or unreadable one is a :class:`LockError` that
    names the fix (``rigkit lock <inventory>``)."""
    p = Path(path)
    fix = f"\nrun: rigkit lock {inventory}"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise LockError(f"lockfile {p} does not exist{fix}") from None
    except yaml.YAMLError as e:
        raise LockError(f"lockfile {p} is not valid YAML: {e}{fix}") from None
    if not isinstance(data, dict):
        raise LockError(f"lockfile {p}: expected a mapping with version and models{fix}")
    if data.get("version") != LOCK_VERSION:
        raise LockError(f"lockfile {p}: expected 'version: {LOCK_VERSION}', got {data.get('version')!r}{fix}")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise LockError(f"lockfile {p}: models: expected a mapping of lock entries{fix}")
    try:
        return {k: LockEntry.from_data(k, v) for k, v in models.items()}
    except LockError as e:
        raise LockError(f"lockfile {p}: {e}{fix}") from None


def dump(entries: Mapping[str, LockEntry], path: str | os.PathLike, *, inventory: str = "INVENTORY") -> None:
    p = Path(path)
    body = {"version": LOCK_VERSION, "models": {k: entries[k].to_data() for k in sorted(entries)}}
    text = f"# Written by `rigkit lock {inventory}`; do not edit.\n" + yaml.safe_dump(
        body, sort_keys=False, default_flow_style=False, width=200
    )
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)


def check(
    refs: Iterable[ModelRef],
    lock: Mapping[str, LockEntry],
    *,
    inventory: str = "INVENTORY",
    labels: Mapping[str, str] | None = None,
) -> dict[str, LockEntry]:
    """Lock entry per reference key; raises :class:`LockError` naming the fix when any is
    missing or stale. ``labels``: reference key -> the host-data keys that name it (e.g.
    ``models[0] (qwen, services[1].model)``), said with each problem."""
    problems = []
    out: dict[str, LockEntry] = {}
    for ref in refs:
        e = lock.get(ref.key)
        where = f" (named by {labels[ref.key]})" if labels and ref.key in labels else ""
        if e is None:
            problems.append(f"{ref.key}: no lock entry{where}")
        elif (e.repo, e.revision, e.include) != (ref.repo, ref.revision, ref.include):
            problems.append(f"{ref.key}: lock entry is for {e.repo}@{e.revision} {list(e.include)}{where}")
        elif not e.files:
            problems.append(f"{ref.key}: lock entry lists no files{where}")
        else:
            out[ref.key] = e
    if problems:
        raise LockError(
            "model lock does not match the inventory:\n  " + "\n  ".join(problems) + f"\nrun: rigkit lock {inventory}"
        )
    return out
