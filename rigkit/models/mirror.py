"""``rigkit mirror serve DIR``: serve downloaded models over the Hub's download API.

Layout: ``DIR/<org>/<name>/<files...>``.  Optional ``DIR/<org>/<name>/.rigkit-repo.json``
``{"sha": "<40 hex>", "refs": {"main": "<sha>", ...}}`` keeps the upstream commit
sha, so a lockfile made against the Hub is served unchanged (rigkit's fetch
script writes it).  Without it the commit sha is derived from the file hashes
and ``main`` points at it.  ``.rigkit-verified.json`` (written by the fetch
script) is used as a hash cache; other hidden ``.rigkit*`` files and
``*.partial`` files are never served.

Endpoints (the subset huggingface_hub's downloads and ``rigkit lock`` use):

* ``HEAD/GET /{repo}/resolve/{rev}/{path}``  with Range, ``X-Repo-Commit``, ``ETag``,
  and for LFS files ``X-Linked-Etag`` (sha256) / ``X-Linked-Size``
* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`` paged by ``Link: rel="next"``
* ``POST /api/models/{repo}/paths-info/{rev}``

LFS files are served with 200 directly by default (huggingface_hub takes the
metadata from ``X-Linked-*`` on a 200 as well); ``lfs_redirect=True`` mimics the
real Hub and answers 302 to a second listener (another origin), as the Hub does
with its CDN.  Errors carry ``X-Error-Code`` like the Hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

try:
    from rigkit.scripts.fetch_shards import REPO_META, STATE_NAME, State, hash_file
except ImportError:  # on a cluster's head, uploaded beside fetch_shards.py (rigkit.cluster_share)
    from fetch_shards import REPO_META, STATE_NAME, State, hash_file  # type: ignore[no-redef]

LFS_EXTENSIONS = {
    ".gguf",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".msgpack",
    ".h5",
    ".npz",
    ".npy",
    ".pkl",
    ".model",
    ".zip",
    ".tar",
    ".gz",
    ".zst",
    ".xz",
    ".arrow",
    ".parquet",
    ".tflite",
    ".ot",
    ".mlmodel",
}
LFS_MIN_SIZE = 10 * 1024 * 1024
PACED_BLOCK = 64 << 10  # bytes sent at a time under a rate limit
_SHA_RE = re.compile(r"^[0-9a-f]{40}$", re.ASCII)
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII)


@dataclass
class FileInfo:
    path: str
    abspath: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    pointer_size: int

    def entry(self) -> dict:
        e = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.lfs:
            e["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return e


@dataclass
class RepoIndex:
    repo: str
    sha: str
    refs: dict
    files: dict  # path -> FileInfo


def _is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or os.path.splitext(path)[1].lower() in LFS_EXTENSIONS


def _hash_file(path: str, git: bool) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file in one pass; the sha1 only with ``git`` (an LFS
    file's git object is its pointer, not its contents)."""
    if not git:
        return hash_file(path).hexdigest(), ""
    g = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    return hash_file(path, g).hexdigest(), g.hexdigest()


class MirrorStore:
    """Indexes DIR; hashes are cached by (path, size, mtime_ns)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._cache: dict[tuple, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def repo_dir(self, repo: str) -> str | None:
        parts = repo.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        # Resolved: a cluster's head serves its models' directories through links, and the
        # fetch script's record of verified files (the hash cache) names the real paths.
        d = os.path.realpath(os.path.join(self.root, *parts))
        return d if os.path.isdir(d) else None

    def _verified(self, repo_dir: str) -> dict:
        return State(os.path.join(repo_dir, STATE_NAME)).files

    def index(self, repo: str) -> RepoIndex | None:
        d = self.repo_dir(repo)
        if d is None:
            return None
        with self._lock:
            verified = None
            files: dict[str, FileInfo] = {}
            for base, dirs, names in os.walk(d):
                dirs[:] = sorted(x for x in dirs if not x.startswith(".rigkit") and x != ".git")
                for n in sorted(names):
                    if n.startswith(".rigkit") or n.endswith((".partial", ".tmp")):
                        continue
                    ap = os.path.join(base, n)
                    rel = os.path.relpath(ap, d).replace(os.sep, "/")
                    st = os.stat(ap)
                    key = (ap, st.st_size, st.st_mtime_ns)
                    hashes = self._cache.get(key)
                    lfs = _is_lfs(rel, st.st_size)
                    if hashes is None and lfs:
                        if verified is None:
                            verified = self._verified(d)
                        v = verified.get(ap)
                        if v and v.get("size") == st.st_size and v.get("mtime_ns") == st.st_mtime_ns:
                            hashes = (v["sha256"], "")
                    if hashes is None:
                        hashes = _hash_file(ap, git=not lfs)
                    self._cache[key] = hashes
                    sha256, git = hashes
                    pointer = (
                        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {st.st_size}\n"
                    ).encode()
                    if lfs:
                        git = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
                    files[rel] = FileInfo(rel, ap, st.st_size, sha256, git, lfs, len(pointer))
            meta = {}
            try:
                with open(os.path.join(d, REPO_META), encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                pass
            sha = meta.get("sha")
            if not (isinstance(sha, str) and _SHA_RE.match(sha)):
                h = hashlib.sha1()
                for p in sorted(files):
                    h.update(f"{p}\0{files[p].git_oid}\n".encode())
                sha = h.hexdigest()
            refs = {"main": sha}
            refs.update({k: v for k, v in (meta.get("refs") or {}).items() if isinstance(v, str)})
            return RepoIndex(repo, sha, refs, files)

    def resolve_rev(self, idx: RepoIndex, rev: str) -> str | None:
        if rev == idx.sha or rev in idx.refs and idx.refs[rev] == idx.sha:
            return idx.sha
        return None


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # noqa: D401 - quiet unless verbose
        if self.server.verbose:
            sys.stderr.write("mirror: " + (fmt % args) + "\n")

    # -- helpers -------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, headers=None):
        self._send(200, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, msg: str, headers: dict | None = None):
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = msg
        self._send(status, json.dumps({"error": msg}).encode(), h)

    def _auth_ok(self) -> bool:
        tok = self.server.token
        if not tok:
            return True
        got = self.headers.get("Authorization", "")
        if got == f"Bearer {tok}":
            return True
        if got:
            self._error(401, None, "Invalid credentials in Authorization header")
        else:
            self._error(401, "RepoNotFound", "Authentication required: this mirror needs a token")
        return False

    def _repo(self, repo: str, rev: str | None):
        idx = self.server.store.index(repo)
        if idx is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None, None
        if rev is None:
            return idx, idx.sha
        sha = self.server.store.resolve_rev(idx, rev)
        if sha is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return None, None
        return idx, sha

    # -- routing -------------------------------------------------------------

    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        try:
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _dispatch(self):
        u = urlsplit(self.path)
        raw = u.path
        q = parse_qs(u.query)
        segs = raw.strip("/").split("/")
        if self.server.is_blob_server:
            # /_blobs/<org>/<name>/<sha>/<path...>  (stands in for the Hub's CDN: no auth)
            if len(segs) >= 5 and segs[0] == "_blobs" and self.command in ("GET", "HEAD"):
                repo = unquote(segs[1]) + "/" + unquote(segs[2])
                idx, sha = self._repo(repo, unquote(segs[3]))
                if idx:
                    self._serve_file(idx, sha, unquote("/".join(segs[4:])), blob=True)
                return
            return self._error(404, None, "Not found")
        if not self._auth_ok():
            return
        if segs[:2] == ["api", "models"] and len(segs) >= 4:
            repo = unquote(segs[2]) + "/" + unquote(segs[3])
            rest = segs[4:]
            if not rest and self.command in ("GET", "HEAD"):
                idx, sha = self._repo(repo, None)
                return idx and self._info(idx, sha)
            if len(rest) >= 2 and rest[0] == "revision" and self.command in ("GET", "HEAD"):
                idx, sha = self._repo(repo, unquote("/".join(rest[1:])))
                return idx and self._info(idx, sha)
            if len(rest) >= 2 and rest[0] == "tree" and self.command in ("GET", "HEAD"):
                idx, sha = self._repo(repo, unquote(rest[1]))
                return idx and self._tree(idx, sha, unquote("/".join(rest[2:])), q, raw)
            if len(rest) >= 2 and rest[0] == "paths-info" and self.command == "POST":
                idx, sha = self._repo(repo, unquote(rest[1]))
                return idx and self._paths_info(idx, sha)
            return self._error(404, None, "Not found")
        if len(segs) >= 5 and segs[2] == "resolve" and self.command in ("GET", "HEAD"):
            repo = unquote(segs[0]) + "/" + unquote(segs[1])
            idx, sha = self._repo(repo, unquote(segs[3]))
            if idx:
                self._serve_file(idx, sha, unquote("/".join(segs[4:])), blob=False)
            return
        self._error(404, None, "Not found")

    # -- API -----------------------------------------------------------------

    def _info(self, idx: RepoIndex, sha: str):
        self._json(
            {
                "_id": sha[:24],
                "id": idx.repo,
                "modelId": idx.repo,
                "author": idx.repo.split("/")[0],
                "sha": sha,
                "private": bool(self.server.token),
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(idx.files)],
                "lastModified": "2024-01-01T00:00:00.000Z",
                "createdAt": "2024-01-01T00:00:00.000Z",
            }
        )

    @staticmethod
    def _entries(idx: RepoIndex, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        dirs: set[str] = set()
        files = []
        for p in sorted(idx.files):
            if prefix and not p.startswith(prefix + "/"):
                continue
            rel = p[len(prefix) + 1 :] if prefix else p
            parts = rel.split("/")
            if not recursive and len(parts) > 1:
                dirs.add((prefix + "/" if prefix else "") + parts[0])
                continue
            for i in range(1, len(parts)):
                dirs.add((prefix + "/" if prefix else "") + "/".join(parts[:i]))
            files.append(idx.files[p].entry())
        out = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(dirs)
        ]
        return out + files

    def _tree(self, idx: RepoIndex, sha: str, sub: str, q: dict, raw_path: str):
        recursive = (q.get("recursive", ["false"])[0]).lower() in ("1", "true")
        if sub and not any(p.startswith(sub.strip("/") + "/") for p in idx.files):
            return self._error(404, "EntryNotFound", f"{sub} does not exist on {sha}", {"X-Repo-Commit": sha})
        entries = self._entries(idx, sub, recursive)
        try:
            start = int(q.get("cursor", ["0"])[0])
        except ValueError:
            start = 0
        size = self.server.page_size
        page = entries[start : start + size]
        headers = {"X-Repo-Commit": sha}
        if start + size < len(entries):
            host = self.headers.get("Host") or f"{self.server.server_address[0]!s}:{self.server.server_address[1]}"
            nxt = f"http://{host}{raw_path}?recursive={str(recursive).lower()}&cursor={start + size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._send(200, json.dumps(page).encode(), headers)

    def _paths_info(self, idx: RepoIndex, sha: str):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                paths = json.loads(body).get("paths", [])
            except ValueError:
                paths = []
        else:
            paths = parse_qs(body).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in idx.files:
                out.append(idx.files[p].entry())
            elif any(f.startswith(p + "/") for f in idx.files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._json(out, {"X-Repo-Commit": sha})

    # -- files ---------------------------------------------------------------

    def _serve_file(self, idx: RepoIndex, sha: str, path: str, blob: bool):
        fi = idx.files.get(path)
        if fi is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {sha}", {"X-Repo-Commit": sha})
        etag = fi.sha256 if fi.lfs else fi.git_oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if fi.lfs:
            headers["X-Linked-Etag"] = f'"{fi.sha256}"'
            headers["X-Linked-Size"] = str(fi.size)
        if fi.lfs and not blob and self.server.blob_server is not None:
            b = self.server.blob_server.server_address
            loc = f"http://{b[0]!s}:{b[1]}/_blobs/{quote(idx.repo)}/{sha}/{quote(path)}"
            headers["Location"] = loc
            return self._send(302, b"", headers, ctype="text/plain")
        size = fi.size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                else:  # suffix range
                    start = max(0, size - int(m.group(2)))
                end = min(end, size - 1)
                if start >= size or start > end:
                    headers["Content-Range"] = f"bytes */{size}"
                    return self._error(416, None, "Range not satisfiable", headers)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Disposition", f'inline; filename="{os.path.basename(path)}"')
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self._send_body(fi, start, length)

    def _send_body(self, fi: FileInfo, start: int, length: int):
        srv = self.server
        stall = srv.stall_after_bytes
        drop = srv.drop_after_bytes
        limit = length
        if stall is not None:
            limit = min(limit, stall)
        if drop is not None:
            limit = min(limit, drop)
        sent = 0
        with open(fi.abspath, "rb") as f:
            self.wfile.flush()
            sock = self.connection
            while sent < limit:
                paced = srv.main.rate_limit  # read per block: a test may lift it while a file streams
                n = min(limit - sent, 8 << 20 if paced is None else PACED_BLOCK)
                # Counted before the send: the client may read the last byte and ask the test for
                # the count before this thread runs again; a short send takes back what it did not send.
                srv._count(fi, n)
                k = sock.sendfile(f, offset=start + sent, count=n) if hasattr(sock, "sendfile") else 0
                if k != n:
                    srv._count(fi, k - n)
                if not k:
                    break
                sent += k
                if paced is not None:
                    srv._pace(k, paced)
        if sent >= length:
            return
        if drop is not None and sent >= drop:
            srv.drop_after_bytes = None  # one-shot: the next request gets everything
            self.close_connection = True
            return
        if stall is not None:
            srv.stall_release.wait(timeout=srv.stall_timeout)
            self.close_connection = True


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        addr,
        store: MirrorStore,
        *,
        token: str | None = None,
        page_size: int = 1000,
        verbose: bool = False,
        is_blob_server: bool = False,
    ):
        super().__init__(addr, _Handler)
        self.store = store
        self.token = token
        self.page_size = page_size
        self.verbose = verbose
        self.is_blob_server = is_blob_server
        self.blob_server: MirrorServer | None = None
        self._owner: MirrorServer | None = None  # the main listener, on a blob server
        # Test hooks: stop sending a body after N bytes (stall until released / drop the connection once).
        self.stall_after_bytes: int | None = None
        self.stall_release = threading.Event()
        self.stall_timeout = 60.0
        self.drop_after_bytes: int | None = None
        # Bytes per second over all connections (a home line's), None for no limit.
        self.rate_limit: float | None = None
        self._paced_until = 0.0
        self.bytes_sent: dict[str, int] = {}
        self._stats_lock = threading.Lock()
        self._serve_threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        h, p = self.server_address[:2]
        return f"http://{h!s}:{p}"

    def _count(self, fi: FileInfo, n: int):
        owner = self.main
        with owner._stats_lock:
            owner.bytes_sent[fi.path] = owner.bytes_sent.get(fi.path, 0) + n

    @property
    def main(self) -> MirrorServer:
        """The main listener (a blob server's owner), which holds the test hooks and counts."""
        return self._owner if self.is_blob_server and self._owner else self

    def _pace(self, n: int, rate: float) -> None:
        """Sleep until ``n`` more bytes fit the server's rate, its connections taken together."""
        owner = self.main
        with owner._stats_lock:
            now = time.monotonic()
            owner._paced_until = max(owner._paced_until, now) + n / rate
            delay = owner._paced_until - now
        time.sleep(delay)

    def total_sent(self) -> int:
        return sum(self.bytes_sent.values())

    def reset_stats(self):
        with self._stats_lock:
            self.bytes_sent.clear()

    def start(self) -> MirrorServer:
        for s in (self, self.blob_server):
            if s is not None:
                t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
                t.start()
                self._serve_threads.append(t)
        return self

    def stop(self):
        self.stall_release.set()
        for s in (self.blob_server, self):
            if s is not None:
                s.shutdown()
                s.server_close()


def serve(
    directory: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    page_size: int = 1000,
    lfs_redirect: bool = False,
    verbose: bool = False,
    start: bool = True,
) -> MirrorServer:
    """Start a mirror of ``directory`` (in background threads when ``start``); ``.stop()`` ends it."""
    store = MirrorStore(directory)
    srv = MirrorServer((host, port), store, token=token, page_size=page_size, verbose=verbose)
    if lfs_redirect:
        blob = MirrorServer((host, 0), store, verbose=verbose, is_blob_server=True)
        blob._owner = srv
        srv.blob_server = blob
        # the blob listener shares the test hooks of the main one
        blob.__dict__["stall_release"] = srv.stall_release
    if start:
        srv.start()
    return srv


def _notify_ready() -> None:
    """Tell systemd (a ``Type=notify`` unit, as a cluster's head runs the mirror) that the
    mirror listens and has indexed its models: the unit's start then ends."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect("\0" + target[1:] if target.startswith("@") else target)
        s.sendall(b"READY=1")


def mirror_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="rigkit mirror",
        description="Serve downloaded models over the subset of the Hugging Face Hub HTTP API that downloads use.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve DIR laid out as DIR/<org>/<name>/<files>")
    s.add_argument("dir")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--token-file", help="require 'Authorization: Bearer <token>' with the token in this file")
    s.add_argument("--lfs-redirect", action="store_true", help="302 LFS files to a second port, like the Hub's CDN")
    s.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.dir):
        print(f"rigkit mirror: error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip() or None
    srv = serve(
        args.dir, args.host, args.port, token=token, lfs_redirect=args.lfs_redirect, verbose=args.verbose, start=False
    )
    store = srv.store
    repos = sorted(
        f"{o}/{n}"
        for o in os.listdir(store.root)
        if os.path.isdir(os.path.join(store.root, o))
        for n in os.listdir(os.path.join(store.root, o))
        if store.repo_dir(f"{o}/{n}")
    )
    t0 = time.time()
    for r in repos:  # hash up front so the first client does not wait
        idx = store.index(r)
        if idx is None:
            continue
        print(f"rigkit mirror: {r} @ {idx.sha} ({len(idx.files)} files)", file=sys.stderr)
    print(
        f"rigkit mirror: serving {store.root} on {srv.url} (indexed in {time.time() - t0:.1f}s)"
        f"{' (token required)' if token else ''}; HF_ENDPOINT={srv.url}",
        file=sys.stderr,
    )
    if srv.blob_server is not None:
        threading.Thread(target=srv.blob_server.serve_forever, daemon=True).start()
    _notify_ready()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(mirror_main())
