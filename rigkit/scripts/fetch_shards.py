#!/usr/bin/env python3
"""Fetch model files with resume, parallelism and sha256 verification.  STDLIB ONLY.

Runs on the target host (Debian bookworm python3.11).  Usage::

    fetch_shards.py MANIFEST.json [--reverify] [--parallel N] [--progress-interval S]

Manifest::

    {"files": [{"url": "...", "size": 123, "sha256": "...", "dest": "/abs/path"}],
     "token_file": "/path/0600/file",      # optional; sent only as an Authorization header
     "parallel": 4, "margin_bytes": 1073741824, "reverify": false,
     "root": "/abs/model/dir",                      # every dest lies below it; names in progress lines are relative to it
     "state_file": "/abs/model/dir/.rigkit-verified.json",   # optional (default: in root); inside root
     "retries": 3, "timeout": 60,
     "repo_meta": {"dir": "/abs", "repo": "org/name", "revision": "main", "sha": "<40 hex>"}}  # optional

What it does: skip files recorded as verified (size + mtime_ns + sha256 in the
state file) without re-reading them; check free space against the bytes still
missing plus the margin before downloading anything; download into
``<dest>.partial`` with HTTP Range resume, hashing while streaming (a resumed
file re-hashes only the partial bytes on disk); rename into place only when
the sha256 matches; on a mismatch delete and retry, then fail.

Whatever the manifest says, it writes only below ``root`` (each dest's directory resolved
with its symlinks, ``os.path.realpath``, must stay inside root's), never through a symlink,
and deletes only files it placed (recorded in its state file) and its own ``.partial`` files:
a file in the way that it did not place and that does not match is left alone, and the run
fails naming it.

Exit codes: 0 ok, 1 download/verification failed, 2 bad manifest/usage,
3 not enough disk space, 4 authentication (HTTP 401/403), 5 not found (404).
The last line of stdout is a JSON summary.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20
STATE_VERSION = 1
STATE_NAME = ".rigkit-verified.json"  # in each model directory: what was verified
REPO_META = ".rigkit-repo.json"  # in each model directory: repo, revision, commit
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_SPACE, EXIT_AUTH, EXIT_NOTFOUND = 0, 1, 2, 3, 4, 5


class Fatal(Exception):
    def __init__(self, msg, code=EXIT_FAIL):
        super().__init__(msg)
        self.code = code


class Retryable(Exception):
    pass


# --------------------------------------------------------------------------- #
# where it may write: below root, never through a symlink
# --------------------------------------------------------------------------- #


def within(path, root):
    """``path`` is ``root`` or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def normal_abspath(path):
    """Absolute and normalised: no '..', '.', '//' parts, no trailing '/'."""
    return (
        isinstance(path, str)
        and path.startswith("/")
        and not path.startswith("//")
        and os.path.normpath(path) == path
        and ".." not in path.split("/")
    )


def check_below_root(path, root, what):
    """``path`` (absolute, normalised, strictly below ``root``) stays inside root once symlinks
    are resolved: the realpath of its deepest existing directory lies inside root's realpath,
    and ``path`` itself, when it exists, is no symlink. Raises Fatal(EXIT_USAGE) otherwise."""
    if not normal_abspath(path) or path == root or not within(path, root):
        raise Fatal("%s %r: expected a path below the manifest's root %s" % (what, path, root), EXIT_USAGE)
    real_root = os.path.realpath(root)
    have = existing_dir(os.path.dirname(path))
    real = os.path.realpath(have)
    # A root not made yet: what exists is above it, and all that is missing gets created below.
    if not (within(real, real_root) or (have != root and within(root, have))):
        raise Fatal(
            "%s %r: its directory resolves to %s, outside the manifest's root %s (a symlink?)"
            % (what, path, real, real_root),
            EXIT_USAGE,
        )
    if os.path.islink(path):
        raise Fatal("%s %r is a symbolic link: refusing to write through it" % (what, path), EXIT_USAGE)


def make_parent(path, root, what):
    """Create ``path``'s directory (checked before and after: a directory created on the way
    cannot lead outside root)."""
    check_below_root(path, root, what)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    check_below_root(path, root, what)


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def human(n):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


# --------------------------------------------------------------------------- #
# state file: what was verified, so a re-run does not re-hash 100 GB
# --------------------------------------------------------------------------- #


def entry_verified(entry, size, sha256, st_size, st_mtime_ns):
    """A state entry still vouches for a file: the size and sha256 wanted, and the file on disk
    unchanged since it was hashed (same size and mtime)."""
    return (
        bool(entry)
        and entry.get("size") == size
        and entry.get("sha256") == sha256
        and st_size == size
        and st_mtime_ns == entry.get("mtime_ns")
    )


class State:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.files: dict = {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") == STATE_VERSION:
                self.files = data.get("files") or {}
        except (OSError, ValueError):
            pass

    def is_verified(self, dest, size, sha256):
        try:
            st = os.stat(dest)
        except OSError:
            return False
        return entry_verified(self.files.get(dest), size, sha256, st.st_size, st.st_mtime_ns)

    def record(self, dest, size, sha256):
        st = os.stat(dest)
        with self.lock:
            self.files[dest] = {
                "size": size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256,
                "verified_at": int(time.time()),
            }
            self._save()

    def placed(self, dest):
        """Whether this fetcher placed ``dest`` (its state file records it)."""
        with self.lock:
            return dest in self.files

    def forget(self, dest):
        with self.lock:
            if self.files.pop(dest, None) is not None:
                self._save()

    def _save(self):
        d = os.path.dirname(self.path)
        os.makedirs(d, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": STATE_VERSION, "files": self.files}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- #
# HTTP
# --------------------------------------------------------------------------- #


def _origin(url):
    """(scheme, host, port); a URL with userinfo or a bad port (a redirect's Location is the
    server's to write) is no origin the token goes to."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return ("invalid", url, 0)
    if "@" in u.netloc:
        return ("userinfo", url, 0)
    return (u.scheme, (u.hostname or "").lower(), port)


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects (the Hub sends LFS files to a CDN), dropping the token when leaving the origin."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        for k in list(new.headers):
            if k.lower() == "authorization":
                del new.headers[k]
        auth = req.unredirected_hdrs.get("Authorization")
        if auth and _origin(newurl) == _origin(req.full_url) and may_carry_token(newurl):
            new.add_unredirected_header("Authorization", auth)
        return new


_OPENER = urllib.request.build_opener(_Redirect())


def may_carry_token(url):
    """The token goes over https, or plain http only to this host's loopback interface (as
    rigkit.transport.may_carry_token decides on the deploying machine)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        return True
    host = (u.hostname or "").lower()
    if u.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_url(url, token, offset, timeout):
    req = urllib.request.Request(url, headers={"User-Agent": "rigkit-fetch/1", "Accept-Encoding": "identity"})
    if token and may_carry_token(url):
        # unredirected: urllib does not copy it onto redirects; _Redirect re-adds it for the same origin only
        req.add_unredirected_header("Authorization", "Bearer " + token)
    if offset:
        req.add_header("Range", "bytes=%d-" % offset)
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        code = e.code
        err = e.headers.get("X-Error-Code", "") if e.headers else ""
        e.close()
        safe = _strip_query(url)
        if code in (401, 403):
            hint = "token rejected or lacks access" if token else "no token configured (token_file)"
            raise Fatal("HTTP %d for %s: %s" % (code, safe, hint), EXIT_AUTH)
        if code == 404:
            raise Fatal("HTTP 404 for %s%s" % (safe, " (%s)" % err if err else ""), EXIT_NOTFOUND)
        if code == 416:
            raise Retryable("HTTP 416 (range not satisfiable)")
        if code in (408, 429) or code >= 500:
            raise Retryable("HTTP %d" % code)
        raise Fatal("HTTP %d for %s" % (code, safe))
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
        raise Retryable("%s: %s" % (type(e).__name__, getattr(e, "reason", e)))


def _strip_query(url):
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, "", ""))


# --------------------------------------------------------------------------- #
# downloading
# --------------------------------------------------------------------------- #


class Progress:
    def __init__(self, total_files, interval):
        self.total_files = total_files
        self.interval = interval
        self.lock = threading.Lock()
        self.active = {}  # idx -> [name, done, size, t0, done0]
        self.stop = threading.Event()
        self.fetched = 0

    def start(self, idx, name, done, size):
        with self.lock:
            self.active[idx] = [name, done, size, time.time(), done]

    def add(self, idx, n):
        a = self.active.get(idx)
        if a is not None:
            a[1] += n
        self.fetched += n

    def reset(self, idx, done):
        a = self.active.get(idx)
        if a is not None:
            a[1] = a[4] = done
            a[3] = time.time()

    def finish(self, idx):
        with self.lock:
            self.active.pop(idx, None)

    def line(self, idx):
        name, done, size, t0, done0 = self.active[idx]
        rate = (done - done0) / max(time.time() - t0, 1e-6)
        unit, div = ("GB", 1e9) if size >= 1e9 else ("MB", 1e6)
        return "[%d/%d] %s %.1f/%.1f %s %d MB/s" % (
            idx,
            self.total_files,
            name,
            done / div,
            size / div,
            unit,
            rate / 1e6,
        )

    def run(self):
        while not self.stop.wait(self.interval):
            with self.lock:
                for idx in sorted(self.active):
                    log(self.line(idx))


def hash_file(path, *also):
    """The file's sha256 hasher; ``also``: more hashers fed in the same pass."""
    h = hashlib.sha256()
    hashers = (h,) + also
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for hasher in hashers:
                hasher.update(mv[:n])
    return h


def download(idx, item, ctx):
    """Download one file to <dest>.partial, verify, rename (bytes fetched are counted by Progress)."""
    dest, size, want = item["dest"], item["size"], item["sha256"]
    name = os.path.relpath(dest, ctx["root"]) if ctx.get("root") else os.path.basename(dest)
    partial = dest + ".partial"
    make_parent(dest, ctx["root"], "files[].dest")
    check_below_root(partial, ctx["root"], "partial file")
    retries = ctx["retries"]
    mismatches = 0
    stalls = 0
    prog = ctx["progress"]
    track: dict = {"h": None, "pos": -1}  # hasher of the partial's first pos bytes, kept across in-process retries
    while True:
        # Resume: re-hash only what is already in the partial file (not even that after an in-process retry).
        try:
            have = os.path.getsize(partial)
        except OSError:
            have = 0
        if have > size:
            os.unlink(partial)
            have = 0
        if track["h"] is not None and track["pos"] == have:
            h = track["h"]
        else:
            h = hash_file(partial) if have else hashlib.sha256()
        track["h"], track["pos"] = None, -1
        prog.start(idx, name, have, size)
        if have:
            log("[%d/%d] %s resuming at %s of %s" % (idx, ctx["n"], name, human(have), human(size)))
        try:
            if have < size:
                h = fetch_into(idx, item, partial, have, h, ctx, track)
        except Retryable as e:
            stalls += 1
            if stalls > retries:
                raise Fatal("%s: giving up after %d attempts: %s" % (name, stalls, e))
            log("[%d/%d] %s: %s; retrying (%d/%d)" % (idx, ctx["n"], name, e, stalls, retries))
            time.sleep(min(2**stalls * 0.25, 10))
            continue
        if size == 0 and not os.path.exists(partial):
            open(partial, "wb").close()
        got = h.hexdigest()
        actual = os.path.getsize(partial) if os.path.exists(partial) else 0
        if actual == size and got == want:
            check_below_root(dest, ctx["root"], "files[].dest")  # still no symlink in the way
            if ctx["fsync"]:
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(partial, dest)
            ctx["state"].record(dest, size, want)
            prog.finish(idx)
            log("[%d/%d] %s %s sha256 ok" % (idx, ctx["n"], name, human(size)))
            return
        os.unlink(partial)
        mismatches += 1
        msg = (
            "%s: sha256 mismatch (expected %s, got %s, %d bytes)" % (name, want, got, actual)
            if actual == size
            else "%s: size mismatch (expected %d bytes, got %d)" % (name, size, actual)
        )
        if mismatches > retries:
            prog.finish(idx)
            raise Fatal(msg + "; deleted, failed after %d attempts" % mismatches)
        log("[%d/%d] %s; deleted, retrying (%d/%d)" % (idx, ctx["n"], msg, mismatches, retries))


def fetch_into(idx, item, partial, have, h, ctx, track):
    """Stream item's URL from byte ``have`` into partial, updating h; returns the hasher.

    Raises Retryable on a dropped stream (what was written stays in the partial file)."""
    size = item["size"]
    resp = open_url(item["url"], ctx["token"], have, ctx["timeout"])
    prog = ctx["progress"]
    with resp:
        status = resp.status
        restarted = bool(have) and status == 200  # server ignored Range: start over
        if restarted:
            have = 0
            h = hashlib.sha256()
        if status == 206:
            cr = resp.headers.get("Content-Range", "")
            if not cr.startswith("bytes %d-" % have):
                raise Retryable("unexpected Content-Range %r for offset %d" % (cr, have))
        mode = "r+b" if have else "wb"
        if have and not os.path.exists(partial):
            mode = "wb"
        with open(partial, mode, buffering=0) as out:
            out.seek(have)
            out.truncate()
            if restarted:
                prog.reset(idx, 0)
            pos = have
            track["h"], track["pos"] = h, pos
            try:
                while pos < size:
                    # read1: whatever has arrived (up to CHUNK), so a stalled stream still lands on disk
                    chunk = resp.read1(min(CHUNK, size - pos))
                    n = len(chunk)
                    if not n:
                        break
                    if out.write(chunk) != n:
                        raise Fatal("short write to %s (disk full?)" % partial, EXIT_SPACE)
                    h.update(chunk)
                    pos += n
                    track["pos"] = pos
                    prog.add(idx, n)
            except (TimeoutError, ConnectionError, OSError) as e:
                if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
                    raise Fatal("disk full while writing %s" % partial, EXIT_SPACE)
                raise Retryable("%s after %s" % (type(e).__name__, human(pos)))
            if pos < size:
                raise Retryable("connection closed after %s of %s" % (human(pos), human(size)))
    return h


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def existing_dir(path):
    d = os.path.abspath(path)
    while not os.path.isdir(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def check_space(todo, margin):
    """todo: list of (item, missing_bytes). Raises Fatal(EXIT_SPACE) if any filesystem is short."""
    per_dev: dict = {}
    for item, missing in todo:
        d = existing_dir(os.path.dirname(item["dest"]))
        dev = os.stat(d).st_dev
        e = per_dev.setdefault(dev, [d, 0])
        e[1] += missing
    for _dev, (d, missing) in per_dev.items():
        st = os.statvfs(d)
        free = st.f_bavail * st.f_frsize
        need = missing + margin
        if free < need:
            raise Fatal(
                "not enough disk space on the filesystem of %s: need %d bytes (%s: %d bytes still missing + %d "
                "margin), free %d bytes (%s); nothing was downloaded"
                % (d, need, human(need), missing, margin, free, human(free)),
                EXIT_SPACE,
            )


def load_manifest(path):
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise Fatal("cannot read manifest %s: %s" % (path, e), EXIT_USAGE)
    files = m.get("files")
    if not isinstance(files, list) or not files:
        raise Fatal("manifest %s: expected a non-empty 'files' list" % path, EXIT_USAGE)
    for i, f in enumerate(files):
        for k, t in (("url", str), ("size", int), ("sha256", str), ("dest", str)):
            if not isinstance(f.get(k), t):
                raise Fatal("manifest %s: files[%d].%s: expected %s" % (path, i, k, t.__name__), EXIT_USAGE)
        f["sha256"] = f["sha256"].lower()
    root = m.get("root")
    if not normal_abspath(root) or root == "/":
        raise Fatal(
            "manifest %s: root: expected the model's directory (absolute, normalised), got %r" % (path, root),
            EXIT_USAGE,
        )
    # Every path the manifest names, checked before anything is written.
    for i, f in enumerate(files):
        if not normal_abspath(f["dest"]) or f["dest"] == root or not within(f["dest"], root):
            raise Fatal(
                "manifest %s: files[%d].dest: expected a path below root %s (absolute, normalised, no '..'), got %r"
                % (path, i, root, f["dest"]),
                EXIT_USAGE,
            )
    state_file = m.get("state_file")
    if state_file is not None and not (normal_abspath(state_file) and within(state_file, root) and state_file != root):
        raise Fatal(
            "manifest %s: state_file: expected a file below root %s, got %r" % (path, root, state_file), EXIT_USAGE
        )
    meta = m.get("repo_meta")
    if meta and meta.get("dir") != root:
        raise Fatal("manifest %s: repo_meta.dir: expected root %s, got %r" % (path, root, meta.get("dir")), EXIT_USAGE)
    return m


def read_token(path):
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise Fatal("cannot read token file %s: %s" % (path, e.strerror), EXIT_USAGE)


def run(argv=None):
    ap = argparse.ArgumentParser(description="Download model files with resume and sha256 verification.")
    ap.add_argument("manifest")
    ap.add_argument("--reverify", action="store_true", help="re-hash every placed file, repair mismatches")
    ap.add_argument("--parallel", type=int)
    ap.add_argument("--progress-interval", type=float, default=5.0)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args(argv)

    m = load_manifest(args.manifest)
    files = m["files"]
    n = len(files)
    root = m["root"]
    state_file = m.get("state_file") or os.path.join(root, STATE_NAME)
    for f in files:  # symlinks that lead out of root, before anything is written
        check_below_root(f["dest"], root, "files[].dest")
    check_below_root(state_file, root, "state_file")
    state = State(state_file)
    reverify = args.reverify or bool(m.get("reverify"))
    parallel = max(1, args.parallel or int(m.get("parallel") or 4))
    margin = int(m.get("margin_bytes", 1 << 30))
    t0 = time.time()

    # 1. What is already in place?
    verified, todo, rehash = [], [], []
    for i, f in enumerate(files, 1):
        if not reverify and state.is_verified(f["dest"], f["size"], f["sha256"]):
            verified.append(f)
        elif os.path.lexists(f["dest"]):
            rehash.append((i, f))
        else:
            todo.append((i, f))

    def check_existing(pair):
        i, f = pair
        name = os.path.relpath(f["dest"], root)
        st = os.stat(f["dest"])
        ok = st.st_size == f["size"] and hash_file(f["dest"]).hexdigest() == f["sha256"]
        if ok:
            state.record(f["dest"], f["size"], f["sha256"])
            log("[%d/%d] %s verified (%s)" % (i, n, name, human(f["size"])))
        elif not state.placed(f["dest"]):
            # Not ours: another file in the way is left as it is, whatever it holds.
            raise Fatal(
                "%s exists, does not match the lock (size or sha256) and was not placed by rigkit "
                "(not in %s): move it away; nothing was deleted" % (f["dest"], state.path)
            )
        else:
            log("[%d/%d] %s does not match the lock (size or sha256); deleting it and fetching again" % (i, n, name))
            state.forget(f["dest"])
            os.unlink(f["dest"])
        return ok

    if rehash:
        log("verifying %d file(s) already present (%s)" % (len(rehash), human(sum(f["size"] for _, f in rehash))))
        with ThreadPoolExecutor(max_workers=parallel) as ex:
            for pair, ok in zip(rehash, ex.map(check_existing, rehash)):
                (verified if ok else todo).append(pair[1] if ok else pair)
    todo.sort(key=lambda p: p[0])
    if verified and not rehash:
        log("%d/%d file(s) already verified, skipped without hashing" % (len(verified), n))

    # 2. Free space before any download.
    missing = []
    for _i, f in todo:
        try:
            have = os.path.getsize(f["dest"] + ".partial")
        except OSError:
            have = 0
        missing.append((f, f["size"] - have if have <= f["size"] else f["size"]))
    if todo:
        check_space(missing, margin)

    # 3. Download.
    token = read_token(m.get("token_file"))
    progress = Progress(n, args.progress_interval)
    ctx = {
        "token": token,
        "timeout": float(m.get("timeout", 60)),
        "retries": int(m.get("retries", 3)),
        "state": state,
        "progress": progress,
        "n": n,
        "root": root,
        "fsync": not args.no_fsync,
    }
    if todo:
        log(
            "downloading %d file(s), %s missing, %d in parallel"
            % (len(todo), human(sum(b for _, b in missing)), parallel)
        )
        pt = threading.Thread(target=progress.run, daemon=True)
        pt.start()
        failures = []
        try:
            with ThreadPoolExecutor(max_workers=parallel) as ex:
                futs = {ex.submit(download, i, f, ctx): (i, f) for i, f in todo}
                for fut in futs:
                    try:
                        fut.result()
                    except Fatal as e:
                        failures.append(e)
                        ctx["retries"] = -1  # stop the others quickly
                    except Exception as e:  # noqa: BLE001 - report, never print a traceback with headers
                        failures.append(Fatal("%s: %s" % (type(e).__name__, e)))
        finally:
            progress.stop.set()
        if failures:
            worst = max(failures, key=lambda f: (f.code in (EXIT_AUTH, EXIT_SPACE, EXIT_NOTFOUND), f.code))
            for failure in failures:
                log("error: %s" % failure)
            raise Fatal(str(worst), worst.code)

    meta = m.get("repo_meta")
    if meta and meta.get("dir") and meta.get("sha"):
        check_below_root(os.path.join(meta["dir"], REPO_META), root, "repo_meta")
        write_repo_meta(meta)

    dt = time.time() - t0
    summary = {
        "ok": True,
        "files": n,
        "skipped": len(verified),
        "downloaded": len(todo),
        "bytes_fetched": progress.fetched,
        "seconds": round(dt, 3),
    }
    log(
        "done: %d file(s), %d already verified, %d downloaded (%s in %.1f s)"
        % (n, len(verified), len(todo), human(progress.fetched), dt)
    )
    print(json.dumps(summary))
    return EXIT_OK


def write_repo_meta(meta):
    path = os.path.join(meta["dir"], REPO_META)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    refs = data.get("refs") or {}
    if meta.get("revision"):
        refs[meta["revision"]] = meta["sha"]
    data.update({"repo": meta.get("repo"), "sha": meta["sha"], "refs": refs})
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def record_upload(state_file, staged, dest, size, sha256):
    """An uploaded file (``staged``, its sha256 known to the deploying machine, which hashed
    it) moved into place and recorded as verified, so later runs skip it without hashing."""
    directory = os.path.dirname(dest)
    if not (normal_abspath(dest) and os.path.dirname(staged) == directory and os.path.dirname(state_file) == directory):
        raise Fatal("record-upload: expected the staged file, dest and state file in one directory", EXIT_USAGE)
    if os.path.islink(dest) or os.path.islink(staged):
        raise Fatal(
            "record-upload: %s or %s is a symbolic link: refusing to write through it" % (staged, dest), EXIT_USAGE
        )
    if os.path.getsize(staged) != size:
        raise Fatal("%s: %d bytes uploaded, expected %d" % (staged, os.path.getsize(staged), size), EXIT_FAIL)
    os.replace(staged, dest)
    State(state_file).record(dest, size, sha256)
    log("recorded %s (%d bytes)" % (dest, size))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["record-upload"]:  # record-upload STATE STAGED DEST SIZE SHA256
            state_file, staged, dest, size, sha256 = argv[1:]
            return record_upload(state_file, staged, dest, int(size), sha256)
        return run(argv)
    except Fatal as e:
        log("fetch_shards: error: %s" % e)
        print(json.dumps({"ok": False, "exit": e.code, "error": str(e)}))
        return e.code
    except KeyboardInterrupt:
        log("fetch_shards: interrupted; partial files are kept and resumed on the next run")
        return 130


if __name__ == "__main__":
    sys.exit(main())
