"""
Where a recipe's tensors come from: a checkpoint directory on disk, or a Hub repository read
by HTTP range (the header of each file, then only the tensors a recipe takes). STDLIB ONLY.

A remote read is checked against the lock when one is given: each file's header bytes and
each tensor's bytes have the sha256 ``rigkit lock`` recorded (the Hub's own sha256 covers
whole files only), so a host builds from exactly the bytes the lock saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # on the host: uploaded beside build_checkpoint.py (the package's parent); here: rigkit's
    from token_origin import OPENER, may_carry_token
except ImportError:
    from rigkit.scripts.token_origin import OPENER, may_carry_token

from .safetensors import (
    CHUNK,
    CheckpointError,
    Header,
    check_tensor_name,
    file_chunks,
    header_length,
    parse_header,
    read_header,
)

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
# A checkpoint's shard: a plain file name in the checkpoint's directory.
SHARD_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors", re.ASCII)
#: The name a range's lock record gives a file's header (8-byte length and JSON).
HEADER_RANGE = "__header__"
TIMEOUT = 60


def check_shard_file(name: Any, where: str) -> str:
    if not isinstance(name, str) or not SHARD_FILE.fullmatch(name):
        raise CheckpointError(
            f"{where}: expected a .safetensors file name in the checkpoint's directory "
            f"(letters, digits, '.', '_', '-'; no '/'), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: a file of a checkpoint and its header entry."""

    checkpoint: Checkpoint
    file: str

    def info(self, name: str):
        return self.checkpoint.headers[self.file].tensors[name]


class Checkpoint:
    """A safetensors checkpoint: its files' headers and which file holds each tensor."""

    label: str
    headers: dict[str, Header]
    weight_map: dict[str, str]

    def chunks(self, name: str) -> Iterator[bytes]:
        raise NotImplementedError

    def ref(self, name: str) -> TensorRef:
        return TensorRef(self, self.weight_map[name])

    def _map_headers(self) -> None:
        self.weight_map = {}
        for file, header in self.headers.items():
            for name in header.tensors:
                if name in self.weight_map:
                    raise CheckpointError(f"{self.label}: tensor {name} is in both {self.weight_map[name]} and {file}")
                self.weight_map[name] = file


def read_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """An index's weight map (tensor -> shard file) and metadata, checked whole."""
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(f"{where}: expected an object with a weight_map")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{where}: metadata: expected an object")
    weight_map = {}
    for name, file in data["weight_map"].items():
        check_tensor_name(name, f"{where}: weight_map")
        weight_map[name] = check_shard_file(file, f"{where}: weight_map[{name}]")
    return weight_map, metadata


class LocalCheckpoint(Checkpoint):
    """A checkpoint directory: the files its index lists (every ``*.safetensors`` when it has
    none, as vLLM reads it), each header checked, the index checked against them."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        self.label = str(self.dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: expected a checkpoint directory")
        index = self.dir / INDEX_NAME
        listed: dict[str, str] | None = None
        if index.is_file():
            listed, self.index_metadata = read_index(index)
            files = sorted(set(listed.values()))
        else:
            self.index_metadata = {}
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.dir}: no {INDEX_NAME} and no .safetensors files")
        self.headers = {}
        for file in files:
            path = self.dir / check_shard_file(file, str(self.dir))
            if path.is_symlink() and not path.resolve().is_file():
                raise CheckpointError(f"{path}: a dangling link")
            try:
                self.headers[file] = read_header(path)
            except FileNotFoundError:
                raise CheckpointError(f"{path}: listed in {INDEX_NAME} but missing") from None
        self._map_headers()
        if listed is not None and listed != self.weight_map:
            wrong = sorted(set(listed.items()) ^ set(self.weight_map.items()))
            raise CheckpointError(
                f"{index}: weight_map does not match the files' headers ({len(wrong)} difference(s), "
                f"e.g. {wrong[0][0]} -> {wrong[0][1]})"
            )
        self.indexed = listed is not None

    def path(self, file: str) -> Path:
        return self.dir / file

    def config(self) -> dict[str, Any] | None:
        path = self.dir / CONFIG_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return data

    def chunks(self, name: str) -> Iterator[bytes]:
        file = self.weight_map[name]
        offset, length = self.headers[file].file_range(name)
        with open(self.dir / file, "rb") as f:
            yield from file_chunks(f, offset, length)


# --------------------------------------------------------------------------- #
# By HTTP range
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class LockedRange:
    """A byte range of a locked file and its sha256: a file's header (``name`` is
    :data:`HEADER_RANGE`) or one tensor."""

    path: str
    name: str
    start: int
    size: int
    sha256: str

    def to_data(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "start": self.start, "size": self.size, "sha256": self.sha256}


_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", re.ASCII)


@dataclass
class RangeReader:
    """Byte ranges of files at ``url_for(path)``, each answered 206 with its exact
    Content-Range (a server that sends the whole file instead is refused, not read)."""

    url_for: Callable[[str], str]
    token: str | None = None
    fetched: int = 0
    requests: int = 0

    def chunks(self, path: str, start: int, length: int, file_size: int) -> Iterator[bytes]:
        url = self.url_for(path)
        req = urllib.request.Request(
            url,
            headers={
                "User-Agent": "rigkit-checkpoint/1",
                "Accept-Encoding": "identity",
                "Range": f"bytes={start}-{start + length - 1}",
            },
        )
        if self.token and may_carry_token(url):
            req.add_unredirected_header("Authorization", "Bearer " + self.token)
        safe = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)[:3] + ("", ""))
        try:
            resp = OPENER.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise CheckpointError(f"{safe}: HTTP {exc.code} for bytes {start}-{start + length - 1}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CheckpointError(f"{safe}: {getattr(exc, 'reason', exc)}") from None
        self.requests += 1
        with resp:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if resp.status != 206 or m is None:
                raise CheckpointError(
                    f"{safe}: expected 206 Partial Content for bytes {start}-{start + length - 1}, got "
                    f"{resp.status} {resp.headers.get('Content-Range', '(no Content-Range)')}: "
                    "the server does not serve ranges (nothing more read)"
                )
            if (int(m[1]), int(m[2]), int(m[3])) != (start, start + length - 1, file_size):
                raise CheckpointError(
                    f"{safe}: Content-Range {m[0]!r}, expected bytes {start}-{start + length - 1}/{file_size}"
                )
            left = length
            while left:
                chunk = resp.read(min(CHUNK, left))
                if not chunk:
                    raise CheckpointError(f"{safe}: connection ended {left} bytes early")
                left -= len(chunk)
                self.fetched += len(chunk)
                yield chunk

    def read(self, path: str, start: int, length: int, file_size: int) -> bytes:
        return b"".join(self.chunks(path, start, length, file_size))


class RemoteCheckpoint(Checkpoint):
    """A checkpoint on a Hub (``files``: its safetensors files and their sizes, from the
    lock), read by range: the 8 bytes of each header length, then the header, then only the
    tensors asked for. With ``locked`` ranges every header and tensor read is checked
    against its recorded sha256 and offsets; without (``rigkit lock`` itself), the digests
    are computed and kept in :attr:`seen`."""

    def __init__(
        self,
        label: str,
        reader: RangeReader,
        files: Mapping[str, int],
        locked: Mapping[tuple[str, str], LockedRange] | None = None,
    ):
        self.label, self.reader, self.sizes = label, reader, dict(files)
        self.locked = locked
        self.seen: dict[tuple[str, str], LockedRange] = {}
        self.headers = {}
        for file in sorted(self.sizes):
            check_shard_file(file, label)
            size = self.sizes[file]
            where = f"{label}/{file}"
            prefix = reader.read(file, 0, 8, size) if size >= 8 else b""
            n = header_length(prefix, size, where)
            raw = reader.read(file, 8, n, size)
            self._check(LockedRange(file, HEADER_RANGE, 0, 8 + n, hashlib.sha256(prefix + raw).hexdigest()))
            self.headers[file] = parse_header(raw, size, where)
        self._map_headers()

    def _check(self, got: LockedRange) -> None:
        self.seen[(got.path, got.name)] = got
        if self.locked is None:
            return
        want = self.locked.get((got.path, got.name))
        if want is None:
            raise CheckpointError(f"{self.label}/{got.path}: {got.name} has no range in the lock: run rigkit lock")
        if want != got:
            raise CheckpointError(
                f"{self.label}/{got.path}: {got.name}: bytes {got.start}+{got.size} with sha256 {got.sha256[:16]}..., "
                f"the lock recorded {want.start}+{want.size} with {want.sha256[:16]}...: the remote changed or lies"
            )

    def chunks(self, name: str) -> Iterator[bytes]:
        file = self.weight_map[name]
        offset, length = self.headers[file].file_range(name)
        digest = hashlib.sha256()
        for chunk in self.reader.chunks(file, offset, length, self.sizes[file]):
            digest.update(chunk)
            yield chunk
        # The bytes are in a new directory no one uses yet: a mismatch fails the build there.
        self._check(LockedRange(file, name, offset, length, digest.hexdigest()))

    @property
    def whole_size(self) -> int:
        return sum(self.sizes.values())
