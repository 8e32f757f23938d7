#!/usr/bin/env python3
"""
The fleet's llama.cpp build cache, the parts both ends share (stdlib only; uploaded to
/opt/rigkit/bin beside llama_host.py, imported by ``rigkit cache serve``): the build identity
and its key, the manifest format and its validation, and the host's client.

An entry is one finished build: its binaries (``bin/<target>``) and ``build.json``, each with
its size and sha256 in ``manifest.json``. The key is the sha256 of the build identity (commit,
flags, targets, CUDA architectures, compiler, CMake and CUDA toolkit versions, OS, C library
and machine), so two hosts share an entry only when they would compile the same bytes.

Everything read from a cache is untrusted: a manifest is validated whole (format, key, names,
sizes, digests) before a byte of a file is fetched, each file is streamed to disk with its size
capped and its sha256 checked, and only then does the build directory exist. A cache that is
unreachable, answers nonsense or serves a wrong byte makes the host compile, never fail.

The protocol (HTTP, JSON bodies), as ``rigkit cache serve`` answers it:

    GET    /v1/KEY/manifest.json        200 the manifest, 404 no entry
    GET    /v1/KEY/files/NAME           200 the file's bytes
    (with ``--publish-token-file``, every request but GET and check carries
    ``Authorization: Bearer TOKEN``, else 401)
    POST   /v1/KEY/claim                {"holder": ...}: 201 {"claim": ID, "lease": S} this host
                                        builds; 409 {"holder", "age"} another host does; 200 present
    POST   /v1/KEY/claim/ID             renew the lease (200; 410 when it was lost)
    POST   /v1/KEY/check                the server hashes the entry again, moves it aside if wrong
    DELETE /v1/KEY/claim/ID             give the claim up (the build failed)
    PUT    /v1/KEY/files/NAME           a file of the claimed build (header X-Rigkit-Claim)
    PUT    /v1/KEY/manifest.json        publish: the server checks every file against it
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

FORMAT = 1
KEY = re.compile(r"[0-9a-f]{64}", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
CLAIM = re.compile(r"[0-9a-f]{32}", re.ASCII)
TARGET = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)  # as host data allows (rigkit.hostdata.llama_cpp)
#: A file of an entry: build.json or a binary under bin/, nothing else (no directories, no ..).
FILE_NAME = re.compile(rf"build\.json|bin/{TARGET.pattern}", re.ASCII)
MAX_FILES = 33  # build.json and up to 32 targets
MAX_FILE_BYTES = 8 << 30  # a CUDA llama-server for many architectures is well under 1 GiB
MAX_BUILD_JSON_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 256 << 10
CHUNK = 1 << 20
#: How long a claim lives without renewal: a builder that died frees its key after this.
LEASE_SECONDS = 90
RENEW_SECONDS = 20


class CacheError(Exception):
    """The cache cannot be used for this build (unreachable, malformed, a wrong byte)."""


class EntryRefused(CacheError):
    """An entry's content is not what it must be (its manifest, a size, a sha256)."""


# --- identity ----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return None
    return lines[0]


def _nvcc_release(nvcc: str) -> str | None:
    try:
        result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    releases = [line.strip() for line in result.stdout.splitlines() if "release" in line]
    return releases[-1] if result.returncode == 0 and releases else None


def _os_release() -> str:
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return "unknown"
    return f"{fields.get('ID', '?').strip(chr(34))} {fields.get('VERSION_ID', '?').strip(chr(34))}"


def toolchain(cuda: bool) -> dict:
    """What on this host decides the bytes a build makes besides the source and flags."""
    return {
        "cc": _first_line(["cc", "--version"]),
        "cxx": _first_line(["c++", "--version"]),
        "cmake": _first_line(["cmake", "--version"]),
        "nvcc": _nvcc_release("nvcc") if cuda else None,
        "os": _os_release(),
        "libc": " ".join(platform.libc_ver()) or "unknown",
        "machine": platform.machine(),
    }


def cuda_architectures(flags: list[str]) -> list[str]:
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        if name.split(":", 1)[0] == "CMAKE_CUDA_ARCHITECTURES":
            return [a for a in value.split(";") if a]
    return []


def identity(commit: str, flags: list[str], targets: list[str], tools: dict) -> dict:
    """The build identity: everything that makes two builds the same bytes."""
    return {
        "format": FORMAT,
        "commit": commit,
        "flags": list(flags),
        "targets": list(targets),
        "cuda_architectures": cuda_architectures(flags),
        **tools,
    }


def key_of(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- the manifest ------------------------------------------------------------------------


def check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise CacheError(f"not a cache key (64 hex digits): {key!r:.80}")
    return key


def check_name(name: object) -> str:
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise CacheError(f"not an entry file name (build.json or bin/<target>): {name!r:.80}")
    return name


def check_manifest(doc: object, key: str) -> dict:
    """A manifest as read from anywhere, validated whole; raises CacheError."""
    if not isinstance(doc, dict) or set(doc) != {"format", "key", "identity", "files"}:
        raise CacheError("manifest: expected exactly format, key, identity, files")
    if doc["format"] != FORMAT:
        raise CacheError(f"manifest: format {doc['format']!r:.20}, expected {FORMAT}")
    if doc["key"] != key:
        raise CacheError("manifest: its key is not the key it was asked for")
    if not isinstance(doc["identity"], dict) or key_of(doc["identity"]) != key:
        raise CacheError("manifest: its identity does not hash to its key")
    files = doc["files"]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise CacheError(f"manifest: files must be a list of 1 to {MAX_FILES} entries")
    seen = set()
    for entry in files:
        if not isinstance(entry, dict) or set(entry) != {"name", "size", "sha256"}:
            raise CacheError("manifest: each file is exactly name, size, sha256")
        name = check_name(entry["name"])
        size, digest = entry["size"], entry["sha256"]
        limit = MAX_BUILD_JSON_BYTES if name == "build.json" else MAX_FILE_BYTES
        if type(size) is not int or not 0 < size <= limit:
            raise CacheError(f"manifest: {name}: size must be 1 to {limit} bytes")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise CacheError(f"manifest: {name}: sha256 must be 64 hex digits")
        if name in seen:
            raise CacheError(f"manifest: {name} twice")
        seen.add(name)
    expected = {"build.json", *(f"bin/{t}" for t in doc["identity"].get("targets", []))}
    if seen != expected:
        raise CacheError(f"manifest: files {sorted(seen)}, expected {sorted(expected)}")
    return doc


def file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def copy_capped(read: Callable[[int], bytes], dest: Path, limit: int, what: str) -> tuple[int, str]:
    """Stream ``read`` into ``dest`` (new file, 0600) hashing as it goes; CacheError past ``limit``."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := read(min(CHUNK, limit + 1 - size)):
            size += len(chunk)
            if size > limit:
                raise CacheError(f"{what}: more than the {limit} bytes announced")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


# --- the host's client -------------------------------------------------------------------

URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?", re.ASCII)


class Client:
    """One host's view of the cache at ``url`` for one key."""

    def __init__(self, url: str, key: str, timeout: float = 30, token: str | None = None):
        if not URL.fullmatch(url):
            raise CacheError(f"not a cache URL: {url!r:.80}")
        self.base = f"{url.rstrip('/')}/v1/{check_key(key)}"
        self.key = key
        self.timeout = timeout
        self.token = token  # the publish token: sent with every request that changes the cache

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.token and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            return err
        except (OSError, ValueError) as err:
            raise CacheError(f"cache {self.base}: {err}") from None

    def _json(self, method: str, path: str, doc: dict | None = None, claim: str = "") -> tuple[int, object]:
        body = json.dumps(doc).encode() if doc is not None else None
        headers = {"Content-Type": "application/json", **({"X-Rigkit-Claim": claim} if claim else {})}
        with self._call(method, path, body, headers) as resp:
            raw = resp.read(MAX_MANIFEST_BYTES + 1)
            status = resp.status if hasattr(resp, "status") else resp.code
        if len(raw) > MAX_MANIFEST_BYTES:
            raise CacheError(f"cache {self.base}{path}: answer larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise CacheError(f"cache {self.base}{path}: answered {status} with no JSON") from None

    def manifest(self) -> dict | None:
        status, doc = self._json("GET", "/manifest.json")
        if status == 404:
            return None
        if status != 200:
            raise CacheError(f"cache {self.base}: manifest answered {status}")
        try:
            return check_manifest(doc, self.key)
        except CacheError as err:
            raise EntryRefused(str(err)) from None

    def fetch(self, manifest: dict, dest: Path) -> None:
        """Every file of ``manifest`` into ``dest`` (an empty directory), each size and sha256
        checked; CacheError (and nothing kept) on the first difference."""
        for entry in manifest["files"]:
            target = dest / entry["name"]
            target.parent.mkdir(exist_ok=True)
            with self._call("GET", f"/files/{entry['name']}") as resp:
                status = resp.status if hasattr(resp, "status") else resp.code
                if status != 200:
                    raise CacheError(f"cache {self.base}: {entry['name']} answered {status}")
                try:
                    size, digest = copy_capped(resp.read, target, entry["size"], entry["name"])
                except CacheError as err:
                    raise EntryRefused(str(err)) from None
            if (size, digest) != (entry["size"], entry["sha256"]):
                raise EntryRefused(
                    f"{entry['name']}: {size} bytes with sha256 {digest}, the manifest says "
                    f"{entry['size']} bytes with sha256 {entry['sha256']}"
                )

    def check(self) -> None:
        """Ask the server to hash this entry again (it moves aside an entry whose bytes changed)."""
        self._json("POST", "/check")

    def claim(self, holder: str) -> tuple[str, str | None, float]:
        """("claimed", ID, 0) this host builds; ("held", HOLDER, AGE) another does; ("present", None, 0)."""
        status, doc = self._json("POST", "/claim", {"holder": holder})
        if status == 200:
            return "present", None, 0.0
        if status == 201 and isinstance(doc, dict) and CLAIM.fullmatch(str(doc.get("claim"))):
            return "claimed", str(doc["claim"]), 0.0
        if status == 401:
            raise CacheError(f"cache {self.base}: the publish token was refused (401)")
        if status == 409 and isinstance(doc, dict):
            age = doc.get("age")
            return "held", str(doc.get("holder"))[:120], float(age) if isinstance(age, (int, float)) else 0.0
        raise CacheError(f"cache {self.base}: claim answered {status}")

    def renew(self, claim: str) -> bool:
        return self._json("POST", f"/claim/{claim}")[0] == 200

    def release(self, claim: str) -> None:
        self._json("DELETE", f"/claim/{claim}")

    def publish(self, claim: str, build_dir: Path, manifest: dict) -> None:
        for entry in manifest["files"]:
            path = build_dir / entry["name"]
            with open(path, "rb") as f:
                headers = {"X-Rigkit-Claim": claim, "Content-Length": str(entry["size"])}
                with self._call("PUT", f"/files/{entry['name']}", f, headers) as resp:  # type: ignore[arg-type]
                    status = resp.status if hasattr(resp, "status") else resp.code
                if status != 201:
                    raise CacheError(f"cache {self.base}: upload of {entry['name']} answered {status}")
        status, doc = self._json("PUT", "/manifest.json", manifest, claim=claim)
        if status != 201:
            raise CacheError(f"cache {self.base}: publishing answered {status}: {doc}")


def manifest_of(build_dir: Path, key: str, ident: dict) -> dict:
    names = ["build.json", *(f"bin/{t}" for t in ident["targets"])]
    files = []
    for name in names:
        size, digest = file_digest(build_dir / name)
        files.append({"name": name, "size": size, "sha256": digest})
    return check_manifest({"format": FORMAT, "key": key, "identity": ident, "files": files}, key)


class Renewer:
    """Keeps a claim alive while this host compiles (a thread renewing every RENEW_SECONDS)."""

    def __init__(self, client: Client, claim: str):
        self.client, self.claim = client, claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.client.renew(self.claim)
            except CacheError:
                pass  # the cache went away: the build goes on, publishing will say so

    def __enter__(self) -> Renewer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
