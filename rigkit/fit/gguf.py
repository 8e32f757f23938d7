"""
A GGUF file's header read strictly and bounded: its metadata and tensor infos, never the
tensor data. STDLIB ONLY.

The layout is llama.cpp's (``ggml/src/gguf.cpp`` ``gguf_init_from_file_impl``, b11312;
``gguf-py/gguf/constants.py``): the magic ``GGUF``, a uint32 version (2 or 3), int64 tensor and
key-value counts, the key-values (a string key, a uint32 value type, the value; an array is
its element type, a uint64 count, the elements; a string is a uint64 length and its bytes),
then per tensor its name, uint32 dimension count (at most 4), int64 sizes, uint32 ggml type
and uint64 offset into the data section, which starts at the next multiple of
``general.alignment`` (32 by default).

Headers come from a remote server (``rigkit lock``) or a file the user names, so every count
and length is checked against the bytes there are before anything is allocated; a header
that runs past what was read asks for more (:class:`NeedMore`), up to
:data:`MAX_HEADER_BYTES`. Only what a memory plan reads is kept: scalars, numeric arrays of
up to :data:`MAX_KEPT_ARRAY` elements (per-layer head counts), and the length of every other
array (a vocabulary's tokens).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: The most of a file read for its header: a vocabulary of 256K tokens and merges, and a chat
#: template, are a few tens of MB.
MAX_HEADER_BYTES = 256 << 20
#: What is read first, then doubled until the header is whole.
FIRST_READ = 4 << 20
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_KEY = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEPT_ARRAY = 4096
MAX_KEPT_STRING = 4096
KEY = re.compile(r"[A-Za-z0-9_.-]{1,256}", re.ASCII)
TENSOR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}", re.ASCII)

# gguf-py GGUFValueType: (struct format, size) of the fixed-size value types.
SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),  # UINT8
    1: ("<b", 1),  # INT8
    2: ("<H", 2),  # UINT16
    3: ("<h", 2),  # INT16
    4: ("<I", 4),  # UINT32
    5: ("<i", 4),  # INT32
    6: ("<f", 4),  # FLOAT32
    7: ("<?", 1),  # BOOL
    10: ("<Q", 8),  # UINT64
    11: ("<q", 8),  # INT64
    12: ("<d", 8),  # FLOAT64
}
STRING, ARRAY = 8, 9

#: gguf-py GGML_QUANT_SIZES: ggml type -> (elements per block, bytes per block).
QK_K = 256
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 2 + 2 + 32),
    10: ("Q2_K", 256, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: ("Q3_K", 256, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + QK_K // 2 + 12),
    13: ("Q5_K", 256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    14: ("Q6_K", 256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: ("Q8_K", 256, 4 + QK_K + QK_K // 8),
    16: ("IQ2_XXS", 256, 2 + QK_K // 4),
    17: ("IQ2_XS", 256, 2 + QK_K // 4 + QK_K // 32),
    18: ("IQ3_XXS", 256, 2 + QK_K // 4 + QK_K // 8),
    19: ("IQ1_S", 256, 2 + QK_K // 8 + QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: ("IQ2_S", 256, 2 + QK_K // 4 + QK_K // 16),
    23: ("IQ4_XS", 256, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 + 32),
    41: ("Q1_0", 128, 2 + 16),
    42: ("Q2_0", 64, 2 + 16),
}
TYPE_BY_NAME = {name.lower(): (block, size) for name, block, size in GGML_TYPES.values()}
LAYER = re.compile(r"blk\.(\d{1,5})\.", re.ASCII)


class GgufError(ValueError):
    """A GGUF header that is not one, lies about its sizes or is beyond the bounds."""


class NeedMore(Exception):
    """The header runs past the bytes read: read at least ``needed`` bytes of the file."""

    def __init__(self, needed: int):
        super().__init__(needed)
        self.needed = needed


def row_bytes(type_name: str, elements: int) -> int:
    """ggml_row_size: bytes of ``elements`` values of a ggml type (a multiple of its block)."""
    block, size = TYPE_BY_NAME[type_name]
    return size * elements // block


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    offset: int  # in the data section
    nbytes: int

    @property
    def layer(self) -> int | None:
        """The repeating layer (``blk.N.``) the tensor belongs to, else None."""
        m = LAYER.match(self.name)
        return int(m[1]) if m else None


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, object]  # scalars, short strings, short numeric arrays (tuples)
    array_lengths: dict[str, int]  # every array's length, kept or not
    tensors: tuple[GgufTensor, ...]
    data_start: int
    file_size: int
    alignment: int = DEFAULT_ALIGNMENT
    skipped: tuple[str, ...] = field(default=())  # keys whose values were too long to keep

    @property
    def header_bytes(self) -> int:
        return self.data_start


class _Cursor:
    def __init__(self, buf: bytes, file_size: int, where: str):
        self.buf, self.file_size, self.where, self.pos = memoryview(buf), file_size, where, 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > self.file_size:
            raise GgufError(f"{self.where}: truncated: the header needs byte {end}, the file has {self.file_size}")
        if end > MAX_HEADER_BYTES:
            raise GgufError(f"{self.where}: header larger than {MAX_HEADER_BYTES} bytes")
        if end > len(self.buf):
            raise NeedMore(end)
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def unpack(self, fmt: str, size: int):
        return struct.unpack(fmt, self.take(size))[0]

    def count(self, what: str, limit: int, min_size: int) -> int:
        """A uint64 count of items each at least ``min_size`` bytes: at most ``limit``, and no
        more than the rest of the file could hold (nothing is allocated from a lie)."""
        n = self.unpack("<Q", 8)
        room = (min(self.file_size, MAX_HEADER_BYTES) - self.pos) // max(min_size, 1)
        if n > limit or n > room:
            raise GgufError(f"{self.where}: {what} {n}: expected at most {min(limit, room)}")
        return n

    def string(self, what: str, limit: int) -> str | None:
        """A string; None when longer than ``limit`` (skipped, not kept)."""
        n = self.count(f"{what} length", MAX_HEADER_BYTES, 1)
        raw = self.take(n)
        if n > limit:
            return None
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise GgufError(f"{self.where}: {what}: not UTF-8") from None


def parse(buf: bytes, file_size: int, where: str) -> GgufHeader:
    """The header at the start of ``buf`` (the first bytes of a file of ``file_size``);
    :class:`NeedMore` when ``buf`` ends before the header does, :class:`GgufError` when the
    header is not a valid one."""
    c = _Cursor(buf, file_size, where)
    if bytes(c.take(4)) != MAGIC:
        raise GgufError(f"{where}: not a GGUF file (no GGUF magic)")
    version = c.unpack("<I", 4)
    if version not in VERSIONS:
        raise GgufError(f"{where}: GGUF version {version}: expected one of {VERSIONS}")
    n_tensors = c.unpack("<q", 8)
    n_kv = c.unpack("<q", 8)
    # A tensor info is at least 8+1+4+4+4+8 bytes, a key-value 8+1+4+1.
    if not 0 <= n_tensors <= MAX_TENSORS or n_tensors * 29 > file_size:
        raise GgufError(f"{where}: {n_tensors} tensors: expected 0 to {MAX_TENSORS} that the file can hold")
    if not 0 <= n_kv <= MAX_KV or n_kv * 14 > file_size:
        raise GgufError(f"{where}: {n_kv} key-values: expected 0 to {MAX_KV} that the file can hold")
    metadata: dict[str, object] = {}
    lengths: dict[str, int] = {}
    skipped: list[str] = []
    for i in range(n_kv):
        key = c.string(f"key {i}", MAX_KEY)
        if key is None or not KEY.fullmatch(key):
            raise GgufError(f"{where}: key {i}: expected ASCII letters, digits, '_', '.', '-' (1-256), got {key!r}")
        if key in metadata or key in lengths or key in skipped:
            raise GgufError(f"{where}: key {key!r} appears twice")
        vtype = c.unpack("<I", 4)
        if vtype in SCALARS:
            fmt, size = SCALARS[vtype]
            metadata[key] = c.unpack(fmt, size)
        elif vtype == STRING:
            value = c.string(key, MAX_KEPT_STRING)
            if value is None:
                skipped.append(key)
            else:
                metadata[key] = value
        elif vtype == ARRAY:
            etype = c.unpack("<I", 4)
            if etype in SCALARS:
                fmt, size = SCALARS[etype]
                n = c.count(f"{key}: array", MAX_HEADER_BYTES, size)
                raw = c.take(n * size)
                lengths[key] = n
                if n <= MAX_KEPT_ARRAY:
                    metadata[key] = tuple(v[0] for v in struct.iter_unpack(fmt, raw))
            elif etype == STRING:
                n = c.count(f"{key}: array", MAX_HEADER_BYTES, 8)
                for j in range(n):
                    c.string(f"{key}[{j}]", 0)
                lengths[key] = n
            else:
                raise GgufError(f"{where}: {key}: array of type {etype}: expected a scalar or string type")
        else:
            raise GgufError(f"{where}: {key}: value type {vtype}: expected 0 to 12")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1 or alignment & (alignment - 1):
        raise GgufError(f"{where}: general.alignment {alignment!r}: expected a power of two")
    infos: list[tuple[str, str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = c.string(f"tensor {i} name", 256)
        if name is None or not TENSOR_NAME.fullmatch(name):
            raise GgufError(
                f"{where}: tensor {i}: expected a name of ASCII letters, digits, '_', '.', '-', got {name!r}"
            )
        if name in names:
            raise GgufError(f"{where}: tensor {name} appears twice")
        names.add(name)
        n_dims = c.unpack("<I", 4)
        if n_dims > MAX_DIMS:
            raise GgufError(f"{where}: tensor {name}: {n_dims} dimensions, expected at most {MAX_DIMS}")
        shape = tuple(c.unpack("<q", 8) for _ in range(n_dims))
        elements = 1
        for d in shape:
            if d < 0:
                raise GgufError(f"{where}: tensor {name}: dimension {d} < 0")
            elements *= d
        if elements >= 1 << 62:
            raise GgufError(f"{where}: tensor {name}: shape {shape} is too large")
        type_id = c.unpack("<I", 4)
        if type_id not in GGML_TYPES:
            raise GgufError(f"{where}: tensor {name}: ggml type {type_id}: expected one of {sorted(GGML_TYPES)}")
        type_name, block, size = GGML_TYPES[type_id]
        if shape and shape[0] % block:
            raise GgufError(f"{where}: tensor {name}: {shape[0]} elements per row, not a multiple of {block}")
        offset = c.unpack("<Q", 8)
        infos.append((name, type_name, shape, offset, elements // block * size))
    data_start = -(-c.pos // alignment) * alignment
    if n_tensors and data_start > file_size:
        raise GgufError(f"{where}: truncated: the data section starts at {data_start}, the file has {file_size}")
    # gguf.cpp: each tensor's offset is where the one before ended, padded to the alignment;
    # the data must be inside the file.
    position = 0
    tensors = []
    for name, type_name, shape, offset, nbytes in infos:
        if offset != position:
            raise GgufError(f"{where}: tensor {name}: offset {offset}, expected {position}")
        position = offset + -(-nbytes // alignment) * alignment
        tensors.append(GgufTensor(name, type_name, shape, offset, nbytes))
    if tensors and data_start + tensors[-1].offset + tensors[-1].nbytes > file_size:
        raise GgufError(
            f"{where}: truncated: the tensors' data ends at {data_start + tensors[-1].offset + tensors[-1].nbytes}, "
            f"the file has {file_size} bytes"
        )
    return GgufHeader(version, metadata, lengths, tuple(tensors), data_start, file_size, alignment, tuple(skipped))


def read(fetch: Callable[[int], bytes], file_size: int, where: str, copy: bool = False) -> GgufHeader:
    """The header of a file read by ``fetch(n)`` (its first ``n`` bytes): the first
    :data:`FIRST_READ` bytes, more while the header runs past them, up to
    :data:`MAX_HEADER_BYTES`. ``copy``: ``fetch`` reads a copy of the file's first bytes
    (its header), shorter than the ``file_size`` of the file itself."""
    n = min(FIRST_READ, file_size)
    while True:
        buf = fetch(n)
        if len(buf) != n and not copy:
            raise GgufError(f"{where}: read {len(buf)} bytes, expected {n}")
        try:
            return parse(buf, file_size, where)
        except NeedMore as more:
            if len(buf) < n:
                raise GgufError(f"{where}: the copy ends at byte {len(buf)}, before its header does") from None
            grown = min(max(more.needed, 2 * n), file_size, MAX_HEADER_BYTES)
            if grown <= n:  # parse raises GgufError past either bound; this cannot loop
                raise GgufError(f"{where}: header needs {more.needed} bytes") from None
            n = grown


def read_local(path: str | os.PathLike[str], file_size: int | None = None) -> GgufHeader:
    """The header of a GGUF file on this machine; ``file_size``: the path holds a copy of a
    file's header only (what a range read saves), the file itself is that large."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def fetch(n: int) -> bytes:
                f.seek(0)
                return f.read(n)

            return read(fetch, file_size or size, where, copy=file_size is not None)
    except OSError as exc:
        raise GgufError(f"{where}: {exc.strerror}") from None
