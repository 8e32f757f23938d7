"""
The safetensors format, read strictly and written streaming. STDLIB ONLY.

A file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``),
then the data: each tensor's bytes at ``8 + n + begin``. Headers come from files on disk or
from a remote server, so a header is accepted only when it is what the safetensors library
itself would load (one entry per name, offsets that tile the data section exactly, byte
sizes that match dtype and shape) and every tensor name is a dotted identifier, the shape of
the names checkpoints use: names end up in an index, in a manifest and in messages, never
as paths.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

#: The dtypes safetensors defines, and each element's size in bytes.
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
#: What the safetensors library refuses beyond (its MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 16
METADATA_KEY = "__metadata__"
# A tensor name: ASCII letters, digits, '_' and '-' in parts joined by single dots
# (model.language_model.layers.0.mlp.shared_expert.gate_proj.weight). No '/', no '..', no
# spaces, control or non-ASCII characters.
TENSOR_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*", re.ASCII)
MAX_NAME = 512
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
CHUNK = 8 << 20  # bytes copied at a time: a tensor is never held whole in memory


class CheckpointError(ValueError):
    """A checkpoint (header, index, tensor) that is inconsistent or not what a recipe needs."""


def check_tensor_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not TENSOR_NAME.fullmatch(name):
        raise CheckpointError(
            f"{where}: expected a tensor name of ASCII letters, digits, '_' and '-' joined by single dots "
            f"(at most {MAX_NAME} characters), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; ``begin``/``end`` relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Header:
    """A parsed, checked safetensors header of a file of ``file_size`` bytes."""

    header_len: int
    file_size: int
    tensors: Mapping[str, TensorInfo]  # in the order of their data
    metadata: Mapping[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def file_range(self, name: str) -> tuple[int, int]:
        """(offset in the file, length) of a tensor's bytes."""
        t = self.tensors[name]
        return self.data_start + t.begin, t.nbytes


def header_length(prefix: bytes, file_size: int, where: str) -> int:
    """The header length the first 8 bytes state, checked against the file's size."""
    if len(prefix) != 8:
        raise CheckpointError(f"{where}: expected at least 8 bytes (the header length), the file has {len(prefix)}")
    (n,) = struct.unpack("<Q", prefix)
    if n == 0 or n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{where}: header length {n}: expected 1 to {MAX_HEADER_BYTES} bytes")
    if 8 + n > file_size:
        raise CheckpointError(
            f"{where}: header length {n} runs past the end of the file ({file_size} bytes): the header lies"
        )
    return n


def _no_duplicates(where: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise CheckpointError(f"{where}: key {k!r} appears twice in the header")
            out[k] = v
        return out

    return hook


def _no_constant(name: str) -> Any:
    raise CheckpointError(f"not JSON: {name}")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(raw: bytes, file_size: int, where: str) -> Header:
    """A header (``raw``: its JSON bytes, as long as the 8-byte prefix said) of a file of
    ``file_size`` bytes, checked whole; :class:`CheckpointError` names the first problem."""
    n = len(raw)
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates(where), parse_constant=_no_constant)
    except CheckpointError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: header is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: header: expected a JSON object, got {type(data).__name__}")
    metadata: dict[str, str] = {}
    raw_meta = data.pop(METADATA_KEY, None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise CheckpointError(f"{where}: {METADATA_KEY}: expected an object of strings")
        metadata = raw_meta
    tensors: list[TensorInfo] = []
    for name, entry in data.items():
        check_tensor_name(name, f"{where}: tensor")
        at = f"{where}: tensor {name}"
        if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
            raise CheckpointError(f"{at}: expected exactly the keys {', '.join(sorted(ENTRY_KEYS))}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise CheckpointError(f"{at}: dtype: expected one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) for d in shape):
            raise CheckpointError(f"{at}: shape: expected up to {MAX_DIMS} sizes (integers, 0 or more), got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)):
            raise CheckpointError(f"{at}: data_offsets: expected [begin, end] (integers), got {offsets!r}")
        begin, end = offsets
        elements = 1
        for d in shape:
            elements *= d
        if end < begin or end - begin != elements * DTYPE_BYTES[dtype]:
            raise CheckpointError(
                f"{at}: data_offsets {offsets} hold {end - begin} bytes; dtype {dtype} and shape {shape} "
                f"need {elements * DTYPE_BYTES[dtype]}"
            )
        tensors.append(TensorInfo(name, dtype, tuple(shape), begin, end))
    # The data section holds the tensors back to back, nothing before, between or after
    # them: what safetensors itself checks, so no two tensors share bytes and none lies
    # outside the file.
    tensors.sort(key=lambda t: (t.begin, t.end))
    data_size = file_size - 8 - n
    position = 0
    for t in tensors:
        if t.begin != position:
            problem = "overlaps the tensor before it" if t.begin < position else f"leaves a gap at {position}"
            raise CheckpointError(f"{where}: tensor {t.name}: data_offsets [{t.begin}, {t.end}] {problem}")
        position = t.end
    if position != data_size:
        raise CheckpointError(
            f"{where}: the tensors' data ends at {position}, the file's data section has {data_size} bytes"
        )
    return Header(n, file_size, {t.name: t for t in tensors}, metadata)


def read_header(path: str | os.PathLike[str]) -> Header:
    """The checked header of a local safetensors file (reads the header only)."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = header_length(f.read(8), size, where)
        raw = f.read(n)
    if len(raw) != n:
        raise CheckpointError(f"{where}: header cut short ({len(raw)} of {n} bytes)")
    return parse_header(raw, size, where)


def file_chunks(f: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of an open file from ``offset``, in chunks."""
    f.seek(offset)
    left = length
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise CheckpointError(f"{getattr(f, 'name', 'file')}: ends {left} bytes early")
        left -= len(chunk)
        yield chunk


@dataclass(frozen=True)
class TensorOut:
    """A tensor to write: its header fields and where its bytes come from (chunks)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


def encode_header(tensors: Iterable[TensorOut], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and JSON header of tensors laid out in the given order, padded with
    spaces to a multiple of 8 bytes (as the safetensors library writes it)."""
    body: dict[str, Any] = {}
    if metadata:
        body[METADATA_KEY] = dict(metadata)
    position = 0
    for t in tensors:
        check_tensor_name(t.name, "tensor to write")
        if t.name in body:
            raise CheckpointError(f"tensor {t.name} written twice")
        body[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [position, position + t.nbytes]}
        position += t.nbytes
    raw = json.dumps(body, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: str | os.PathLike[str], tensors: list[TensorOut], metadata: Mapping[str, str] | None = None
):
    """Write a safetensors file, each tensor streamed from its chunks; the bytes each one
    yields are counted against its dtype and shape."""
    with open(path, "wb") as f:
        f.write(encode_header(tensors, metadata))
        for t in tensors:
            written = 0
            for chunk in t.chunks():
                written += len(chunk)
                if written > t.nbytes:
                    break
                f.write(chunk)
            if written != t.nbytes:
                raise CheckpointError(f"tensor {t.name}: its source gave {written} bytes, {t.nbytes} expected")
        f.flush()
        os.fsync(f.fileno())
