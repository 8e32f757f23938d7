"""
``rigkit cache serve DIR``: the fleet's llama.cpp build cache, served over HTTP by the
deploying machine or any host the rigs reach (the protocol, key and manifest:
``rigkit/scripts/build_cache.py``).

The first host to need a key claims it, compiles, and publishes its build here; every other
host with the same key waits for that and fetches it. What a host uploads is checked before it
becomes an entry (names, sizes, each file's sha256 against the manifest, the manifest's key
against its identity) and an entry appears whole or not at all (a staging directory renamed
into place). Hosts check every byte they fetch again: an entry changed on this disk later is
refused by them, and ``POST /v1/KEY/check`` (sent by a host that refused it) has the server
hash it and move it aside when it no longer matches.

    DIR/entries/KEY/manifest.json, build.json, bin/<target>
    DIR/staging/KEY.CLAIM/                a publish under way
    DIR/refused/KEY.<time>/               entries whose bytes no longer matched
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rigkit.scripts.build_cache import (
    CLAIM,
    KEY,
    LEASE_SECONDS,
    MAX_BUILD_JSON_BYTES,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    CacheError,
    check_manifest,
    check_name,
    copy_capped,
    file_digest,
)

ROUTE = re.compile(
    rf"/v1/(?P<key>{KEY.pattern})/(?P<rest>manifest\.json|check|claim|claim/(?P<claim>{CLAIM.pattern})|files/(?P<name>.+))",
    re.ASCII,
)
HOLDER = re.compile(r"[A-Za-z0-9._:@ -]{1,120}", re.ASCII)


class Store:
    """The cache directory and the claims on keys not yet in it."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("entries", "staging", "refused"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.claims: dict[str, tuple[str, str, float, float]] = {}  # key: (claim, holder, since, expires)
        for leftover in (root / "staging").iterdir():  # publishes a restart interrupted
            shutil.rmtree(leftover, ignore_errors=True)

    def entry(self, key: str) -> Path:
        return self.root / "entries" / key

    def staging(self, key: str, claim: str) -> Path:
        return self.root / "staging" / f"{key}.{claim}"

    def claim(self, key: str, holder: str) -> tuple[int, dict]:
        now = time.monotonic()
        with self.lock:
            if (self.entry(key) / "manifest.json").exists():
                return 200, {"state": "present"}
            held = self.claims.get(key)
            if held and held[3] > now:
                return 409, {"state": "claimed", "holder": held[1], "age": round(now - held[2], 1)}
            if held:
                shutil.rmtree(self.staging(key, held[0]), ignore_errors=True)
            claim = secrets.token_hex(16)
            self.claims[key] = (claim, holder, now, now + LEASE_SECONDS)
            self.staging(key, claim).mkdir()
            return 201, {"claim": claim, "lease": LEASE_SECONDS}

    def holds(self, key: str, claim: str) -> bool:
        held = self.claims.get(key)
        return bool(held and held[0] == claim and held[3] > time.monotonic())

    def renew(self, key: str, claim: str) -> int:
        with self.lock:
            if not self.holds(key, claim):
                return 410
            c, holder, since, _ = self.claims[key]
            self.claims[key] = (c, holder, since, time.monotonic() + LEASE_SECONDS)
            return 200

    def release(self, key: str, claim: str) -> int:
        with self.lock:
            if not self.holds(key, claim):
                return 410
            del self.claims[key]
            shutil.rmtree(self.staging(key, claim), ignore_errors=True)
            return 200

    def publish(self, key: str, claim: str, manifest: dict) -> tuple[int, dict]:
        with self.lock:
            if not self.holds(key, claim):
                return 410, {"error": "no claim on this key (expired or never taken)"}
            staged = self.staging(key, claim)
            for entry in manifest["files"]:
                path = staged / entry["name"]
                if not path.is_file() or file_digest(path) != (entry["size"], entry["sha256"]):
                    return 400, {"error": f"{entry['name']}: not uploaded as the manifest says"}
            extra = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()} - {
                e["name"] for e in manifest["files"]
            }
            if extra:
                return 400, {"error": f"files the manifest does not name: {sorted(extra)}"}
            (staged / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            staged.rename(self.entry(key))
            del self.claims[key]
            return 201, {"state": "published"}

    def check(self, key: str) -> tuple[int, dict]:
        """Hash an entry again; move it aside when its bytes no longer match its manifest."""
        with self.lock:
            entry = self.entry(key)
            try:
                manifest = check_manifest(json.loads((entry / "manifest.json").read_text()), key)
                bad = [
                    e["name"] for e in manifest["files"] if file_digest(entry / e["name"]) != (e["size"], e["sha256"])
                ]
            except FileNotFoundError:
                return 404, {"state": "absent"}
            except (OSError, ValueError, CacheError) as err:
                bad = [str(err)]
            if not bad:
                return 200, {"state": "intact"}
            entry.rename(self.root / "refused" / f"{key}.{int(time.time())}")
            log(f"entry {key} no longer matches its manifest ({', '.join(bad)}): moved to refused/")
            return 200, {"state": "refused", "files": bad}


def log(message: str) -> None:
    print(f"rigkit cache: {message}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "rigkit-cache/1"
    store: Store
    token: str | None = None  # the publish token: every request that changes the cache needs it

    def _authorized(self) -> bool:
        if self.token is None:
            return True
        sent = self.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
            return True
        self._send(401, {"error": "publishing needs the cache's token (Authorization: Bearer)"})
        return False

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def _send(self, status: int, doc: dict | None = None) -> None:
        body = json.dumps(doc or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> re.Match | None:
        match = ROUTE.fullmatch(self.path)
        if match is None:
            self._send(404, {"error": "no such path"})
        return match

    def _body(self, limit: int) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 <= length <= limit:
            self._send(411 if length < 0 else 413, {"error": f"a Content-Length up to {limit} bytes"})
            return None
        return self.rfile.read(length)

    def _json_body(self) -> object:
        raw = self._body(MAX_MANIFEST_BYTES)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            self._send(400, {"error": "not JSON"})
            return None

    def do_GET(self) -> None:
        match = self._route()
        if match is None:
            return
        entry = self.store.entry(match["key"])
        if match["rest"] == "manifest.json":
            path = entry / "manifest.json"
        elif match["name"] is not None:
            try:
                path = entry / check_name(match["name"])
            except CacheError as err:
                return self._send(400, {"error": str(err)})
        else:
            return self._send(405)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below, after the 404 case)
        except OSError:
            return self._send(404, {"error": "no such entry or file"})
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            offset = 0
            while offset < size:  # zero-copy from the page cache to the socket
                sent = os.sendfile(self.wfile.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent

    def do_POST(self) -> None:
        match = self._route()
        if match is None:
            return
        key = match["key"]
        if match["rest"] == "check":  # harmless: the server only moves aside what no longer matches
            return self._send(*self.store.check(key))
        if not self._authorized():
            return
        if match["rest"] == "claim":
            doc = self._json_body()
            if doc is None:
                return
            holder = doc.get("holder") if isinstance(doc, dict) else None
            if not isinstance(holder, str) or not HOLDER.fullmatch(holder):
                return self._send(400, {"error": "holder: letters, digits and . _ : @ - (up to 120)"})
            return self._send(*self.store.claim(key, holder))
        if match["claim"] is not None:
            return self._send(self.store.renew(key, match["claim"]))
        self._send(405)

    def do_DELETE(self) -> None:
        match = self._route()
        if match is None or not self._authorized():
            return
        if match["claim"] is None:
            return self._send(405)
        self._send(self.store.release(match["key"], match["claim"]))

    def do_PUT(self) -> None:
        match = self._route()
        if match is None or not self._authorized():
            return
        key, claim = match["key"], self.headers.get("X-Rigkit-Claim", "")
        if not CLAIM.fullmatch(claim) or not self.store.holds(key, claim):
            return self._send(410, {"error": "no claim on this key (expired or never taken)"})
        if match["rest"] == "manifest.json":
            doc = self._json_body()
            if doc is None:
                return
            try:
                manifest = check_manifest(doc, key)
            except CacheError as err:
                return self._send(400, {"error": str(err)})
            return self._send(*self.store.publish(key, claim, manifest))
        if match["name"] is None:
            return self._send(405)
        try:
            name = check_name(match["name"])
            length = int(self.headers.get("Content-Length", ""))
        except (CacheError, ValueError) as err:
            return self._send(400, {"error": str(err)})
        limit = MAX_BUILD_JSON_BYTES if name == "build.json" else MAX_FILE_BYTES
        if not 0 < length <= limit:
            return self._send(413, {"error": f"{name}: 1 to {limit} bytes"})
        dest = self.store.staging(key, claim) / name
        dest.parent.mkdir(exist_ok=True)
        dest.unlink(missing_ok=True)
        remaining = [length]

        def read(n: int) -> bytes:
            chunk = self.rfile.read(min(n, remaining[0]))
            remaining[0] -= len(chunk)
            return chunk

        try:
            size, digest = copy_capped(read, dest, length, name)
        except (CacheError, OSError) as err:
            dest.unlink(missing_ok=True)
            return self._send(400, {"error": str(err)})
        if size != length:
            dest.unlink(missing_ok=True)
            return self._send(400, {"error": f"{name}: {size} of {length} bytes arrived"})
        self._send(201, {"sha256": digest, "size": size})


def serve(root: str | Path, host: str, port: int, token: str | None = None) -> ThreadingHTTPServer:
    store = Store(Path(root))
    handler = type("BoundHandler", (Handler,), {"store": store, "token": token})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="rigkit cache",
        description="Serve the fleet's llama.cpp build cache: one compile per build identity, fetched and "
        "verified by every other host.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve (and keep) the cache in DIR")
    s.add_argument("dir")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (the rigs' LAN)")
    s.add_argument("--port", type=int, default=8093)
    s.add_argument(
        "--publish-token-file",
        help="require 'Authorization: Bearer <token>' (the token in this file) to claim and publish; "
        "hosts get it through llama_cpp.build_cache_token_file",
    )
    args = ap.parse_args(argv)
    token = None
    if args.publish_token_file:
        with open(args.publish_token_file, encoding="utf-8") as f:
            token = f.read().strip() or None
    server = serve(args.dir, args.host, args.port, token=token)
    entries = sum(1 for _ in (Path(args.dir) / "entries").iterdir())
    log(
        f"serving {args.dir} ({entries} entries) on http://{args.host}:{server.server_address[1]}"
        f"{' (publishing needs the token)' if token else ' (anyone who reaches it can publish)'}"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
