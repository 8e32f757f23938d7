#!/usr/bin/env python3
"""Fetch model files with resume, parallelism and sha256 verification.  STDLIB ONLY.

Runs on the target host (Debian bookworm python3.11).  Usage::

    fetch_shards.py MANIFEST.json [--reverify] [--parallel N] [--progress-interval S]
    fetch_shards.py start MANIFEST.json   # the same, in the background (a transient unit)
    fetch_shards.py wait MANIFEST.json... # follow background downloads to their end
    fetch_shards.py running MANIFEST_DIR  # those running now (JSON), for rigkit status

Manifest::

    {"files": [{"url": "...", "size": 123, "sha256": "...", "dest": "/abs/path"}],
     "token_file": "/path/0600/file",      # optional; sent only as an Authorization header
     "parallel": 4, "margin_bytes": 1073741824, "reverify": false,
     "root": "/abs/model/dir",                      # every dest lies below it; names in progress lines are relative to it
     "state_file": "/abs/model/dir/.rigkit-verified.json",   # optional (default: in root); inside root
     "retries": 3, "timeout": 60,
     "range_bytes": 67108864,                       # optional: a larger file comes in ranges of this size
     "repo_meta": {"dir": "/abs", "repo": "org/name", "revision": "main", "sha": "<40 hex>"}}  # optional

What it does: skip files recorded as verified (size + mtime_ns + sha256 in the
state file) without re-reading them; check free space against the bytes still
missing plus the margin before downloading anything; download into
``<dest>.partial`` with HTTP Range resume over ``parallel`` connections shared by all
files (a file larger than ``range_bytes`` in several ranges at once, written in place
and hashed in order as they land; their progress kept in the state file), hashing
while the bytes arrive (a resumed file re-hashes only the partial bytes on disk);
rename into place only when the sha256 matches; on a mismatch delete and retry, then
fail. Progress: one line per model every ``--progress-interval`` seconds.

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
import errno
import hashlib
import json
import mmap
import os
import re
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

try:  # on the host: the sibling uploaded beside this script; in the package: its module
    from token_origin import OPENER, may_carry_token
except ImportError:
    from rigkit.scripts.token_origin import OPENER, may_carry_token

CHUNK = 8 << 20  # bytes received before a write, into one of the two buffers each connection reuses
HASH_CHUNK = 4 << 20  # bytes re-read from the page cache per sha256 update
# Bytes received at the hashed position are hashed from the receive buffer and go to disk
# with O_DIRECT where the filesystem takes it, skipping the copy into the page cache (the
# largest cost after sha256 on a small host; nothing reads them again; a Spark's GPU shares
# that memory), written by the connection's writer thread while the next bytes arrive. Bytes
# that land ahead of the hash (another range of the file) go through the page cache, where
# the hash re-reads them soon. Direct I/O's buffers, offsets and lengths are multiples of
# this (512 B and 4 KiB logical blocks); what is not aligned (a file's last block, a resumed
# range's first) is written through the page cache too.
DIRECT_ALIGN = 4096
# What has been received lands at least this often, and when the stream is silent this long
# (a slow line's progress shows, a stall keeps nothing back).
LAND_MS = 250
RANGE_BYTES = 64 << 20  # a larger file is fetched in ranges of this size, several at once
CHECKPOINT_S = 1.0  # how often a ranged file's written segments are recorded
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
        # dest -> {"size", "sha256", "segments": [[start, end, written up to], ...]}: a ranged
        # file's partial file, which has holes, so its length says nothing
        self.partials: dict = {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") == STATE_VERSION:
                self.files = data.get("files") or {}
                self.partials = data.get("partials") or {}
        except (OSError, ValueError, AttributeError):
            pass
        if not (isinstance(self.files, dict) and isinstance(self.partials, dict)):
            self.files, self.partials = {}, {}

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
            self.partials.pop(dest, None)
            self._save()

    def partial(self, dest):
        with self.lock:
            rec = self.partials.get(dest)
            return rec if isinstance(rec, dict) else None

    def set_partial(self, dest, rec):
        self.set_partials({dest: rec})

    def set_partials(self, records):
        """Record ranged partial files (never one already placed: its record came first)."""
        with self.lock:
            records = {d: r for d, r in records.items() if d not in self.files}
            if records and any(self.partials.get(d) != r for d, r in records.items()):
                self.partials.update(records)
                self._save()

    def forget_partial(self, dest):
        with self.lock:
            if self.partials.pop(dest, None) is not None:
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
            data = {"version": STATE_VERSION, "files": self.files}
            if self.partials:
                data["partials"] = self.partials
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- #
# HTTP
# --------------------------------------------------------------------------- #


def open_url(url, token, offset, timeout, last=None):
    """GET ``url`` from byte ``offset`` (to byte ``last`` included, when given)."""
    req = urllib.request.Request(url, headers={"User-Agent": "rigkit-fetch/1", "Accept-Encoding": "identity"})
    if token and may_carry_token(url):
        # unredirected: urllib does not copy it onto redirects; TokenRedirect re-adds it for the same origin only
        req.add_unredirected_header("Authorization", "Bearer " + token)
    if offset or last is not None:
        req.add_header("Range", "bytes=%d-%s" % (offset, "" if last is None else last))
    try:
        return OPENER.open(req, timeout=timeout)
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
    """Bytes per file and for the whole model; one line per interval for the model (its
    bytes, the rate since the downloads began, the files done and in flight), so a long
    download shows it is moving without a line per file per interval."""

    def __init__(self, total_files, interval, model="model", total_bytes=0, have_bytes=0):
        self.total_files = total_files
        self.interval = interval
        self.model = model
        self.total_bytes = total_bytes
        self.lock = threading.Lock()
        self.active = {}  # idx -> [name, done, size]
        self.stop = threading.Event()
        self.fetched = 0
        self.have = have_bytes  # of total_bytes, on disk and verified or in partial files
        self.files_done = 0
        self.t0 = time.time()

    def start(self, idx, name, done, size):
        with self.lock:
            old = self.active.get(idx)
            self.have += done - (old[1] if old else 0)
            self.active[idx] = [name, done, size]

    def add(self, idx, n):
        with self.lock:
            a = self.active.get(idx)
            if a is not None:
                a[1] += n
            self.fetched += n
            self.have += n

    def reset(self, idx, done):
        with self.lock:
            a = self.active.get(idx)
            if a is not None:
                self.have -= a[1] - done
                a[1] = done

    def finish(self, idx, ok=True):
        with self.lock:
            self.active.pop(idx, None)
            self.files_done += ok

    def line(self):
        with self.lock:
            total = max(self.total_bytes, 1)
            unit, div = ("GB", 1e9) if self.total_bytes >= 1e9 else ("MB", 1e6)
            rate = self.fetched / max(time.time() - self.t0, 1e-6)
            return "%s: %.1f/%.1f %s (%d%%) %d MB/s, %d/%d file(s) done, %d in flight" % (
                self.model,
                self.have / div,
                self.total_bytes / div,
                unit,
                100 * self.have // total,
                rate / 1e6,
                self.files_done,
                self.total_files,
                len(self.active),
            )

    def run(self):
        while not self.stop.wait(self.interval):
            log(self.line())


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


class NoRanges(Exception):
    """The server answered a request for bytes past 0 with the whole file (it ignores Range)."""


class Segment:
    """Bytes [start, end) of a file, fetched by one request; ``done``: written up to here."""

    __slots__ = ("start", "end", "done")

    def __init__(self, start, end, done):
        self.start, self.end, self.done = start, end, done


class Plan:
    """How one file is fetched: its segments (one for a file up to ``range_bytes``, else ranges
    fetched at once and written in place) and what has been written of each. sha256 is
    sequential: the file's driver hashes the contiguous written prefix (``frontier``) while
    the ranges after it are still arriving."""

    def __init__(self, size, segments):
        self.size = size
        self.segments = segments
        self.cond = threading.Condition()  # guards everything below and the segments' done
        self.abort = False
        self.h = hashlib.sha256()
        self.hashed = 0  # bytes fed to h, front to back
        self.hashing = False  # a thread is feeding h
        self.pending = []  # segments no connection has taken yet
        self.inflight = 0  # connections on it
        self.results = []  # (segment, error or None) of ranges that ended short
        self.idx, self.item, self.partial = 0, None, None
        self.first = 0  # the first segment not written whole

    @classmethod
    def fresh(cls, size, range_bytes):
        if size <= range_bytes:
            return cls(size, [Segment(0, size, 0)])
        return cls(size, [Segment(a, min(a + range_bytes, size), a) for a in range(0, size, range_bytes)])

    @property
    def ranged(self):
        return len(self.segments) > 1

    def frontier(self):
        """Where the written prefix ends (segments only grow, so the search resumes)."""
        while self.first < len(self.segments) and self.segments[self.first].done >= self.segments[self.first].end:
            self.first += 1
        return self.segments[self.first].done if self.first < len(self.segments) else self.size

    def have(self):
        return sum(seg.done - seg.start for seg in self.segments)

    def record(self):
        with self.cond:
            return [[seg.start, seg.end, seg.done] for seg in self.segments]

    @classmethod
    def from_record(cls, size, segments, on_disk):
        """A plan from the state file's record of a ranged partial file, or None when it does not
        describe this file (segments that tile [0, size), each written no further than the file)."""
        if not isinstance(segments, list) or len(segments) < 2:
            return None
        pos = 0
        out = []
        for seg in segments:
            if not (isinstance(seg, list) and len(seg) == 3 and all(type(v) is int for v in seg)):
                return None
            a, b, d = seg
            if a != pos or not (a <= d <= b) or b <= a or (d > a and d > on_disk):
                return None
            out.append(Segment(a, b, d))
            pos = b
        return cls(size, out) if pos == size else None


def resume_plan(item, partial, ctx):
    """What of ``partial`` can be kept: a ranged file's recorded segments (the state file holds
    them from before its first byte), else the partial's length, written front to back."""
    size = item["size"]
    try:
        on_disk = os.path.getsize(partial)
    except OSError:
        on_disk = -1
    state = ctx["state"]
    rec = state.partial(item["dest"])
    if on_disk < 0:
        if rec is not None:
            state.forget_partial(item["dest"])
        return Plan.fresh(size, ctx["range_bytes"])
    if rec is not None:
        plan = None
        if rec.get("size") == size and rec.get("sha256") == item["sha256"]:
            plan = Plan.from_record(size, rec.get("segments"), on_disk)
        if plan is not None:
            written_since_record(plan, partial)
            return plan
        state.forget_partial(item["dest"])  # a record that does not describe it: start over
        os.unlink(partial)
        return Plan.fresh(size, ctx["range_bytes"])
    if on_disk > size:
        os.unlink(partial)
        on_disk = 0
    plan = Plan.fresh(size, ctx["range_bytes"])
    if plan.ranged and on_disk:
        # written front to back by a one-stream fetch (no record): its prefix is kept
        for seg in plan.segments:
            seg.done = max(seg.start, min(seg.end, on_disk))
    else:
        plan.segments[0].done = on_disk
    return plan


def written_since_record(plan, partial):
    """Extend each recorded segment by what its connection wrote after the last record (a
    killed run records at most every CHECKPOINT_S): a connection writes its segment front to
    back, so the file's data that runs on from a segment's recorded end, as the file system
    reports it (SEEK_DATA/SEEK_HOLE, in whole blocks), was written by it, all but the last
    block, which may be written in part and is fetched again. Only where the file system
    shows the partial file's holes at all; elsewhere the record alone counts."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if os.lseek(fd, 0, os.SEEK_HOLE) >= st.st_size:
            return  # no hole reported: no way to tell written bytes from a hole
        block = max(st.st_blksize, 4096)
        for seg in plan.segments:
            if seg.done >= seg.end or seg.done >= st.st_size:
                continue
            try:
                if os.lseek(fd, seg.done, os.SEEK_DATA) != seg.done:
                    continue
                hole = os.lseek(fd, seg.done, os.SEEK_HOLE)
            except OSError:
                continue
            last_block = (min(hole, seg.end) - 1) // block * block  # where the last block written begins
            seg.done = max(seg.done, last_block)
    except OSError:
        return
    finally:
        os.close(fd)


def download(idx, item, ctx):
    """Download one file to <dest>.partial (ranges at once for a large one), hash it in order
    as its bytes land, verify, rename (bytes fetched are counted by Progress)."""
    dest, size, want = item["dest"], item["size"], item["sha256"]
    name = os.path.relpath(dest, ctx["root"]) if ctx.get("root") else os.path.basename(dest)
    partial = dest + ".partial"
    make_parent(dest, ctx["root"], "files[].dest")
    check_below_root(partial, ctx["root"], "partial file")
    retries = ctx["retries"]
    mismatches = 0
    prog = ctx["progress"]
    plan = resume_plan(item, partial, ctx)
    while True:
        have = plan.have()
        prog.start(idx, name, have, size)
        if have:
            log("[%d/%d] %s resuming at %s of %s" % (idx, ctx["n"], name, human(have), human(size)))
        if plan.ranged:  # recorded before any byte is written: a killed run resumes from it
            ctx["state"].set_partial(dest, {"size": size, "sha256": want, "segments": plan.record()})
            ctx["ranged"][dest] = (plan, partial, item)
        try:
            h = fetch_and_hash(idx, item, plan, partial, name, ctx)
        except NoRanges:
            mismatches += 1  # a start over, like a mismatch: a server cannot make it loop
            if mismatches > retries:
                prog.finish(idx, ok=False)
                raise Fatal("%s: the server ignores Range; failed after %d attempts" % (name, mismatches))
            log(
                "[%d/%d] %s: the server ignores Range; fetching it in one stream from the start" % (idx, ctx["n"], name)
            )
            ctx["ranged"].pop(dest, None)
            ctx["state"].forget_partial(dest)
            _unlink(partial)
            prog.reset(idx, 0)
            plan = Plan(size, [Segment(0, size, 0)])
            continue
        except BaseException:
            prog.finish(idx, ok=False)
            raise
        ctx["ranged"].pop(dest, None)
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
        ctx["state"].forget_partial(dest)
        prog.reset(idx, 0)
        mismatches += 1
        msg = (
            "%s: sha256 mismatch (expected %s, got %s, %d bytes)" % (name, want, got, actual)
            if actual == size
            else "%s: size mismatch (expected %d bytes, got %d)" % (name, size, actual)
        )
        if mismatches > retries:
            prog.finish(idx, ok=False)
            raise Fatal(msg + "; deleted, failed after %d attempts" % mismatches)
        log("[%d/%d] %s; deleted, retrying (%d/%d)" % (idx, ctx["n"], msg, mismatches, retries))
        plan = Plan.fresh(size, ctx["range_bytes"])


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fetch_and_hash(idx, item, plan, partial, name, ctx):
    """Fetch the plan's missing bytes (its segments, on the shared connections of
    ``ctx["ranges"]``) and hash the file front to back as they land. The connection writing
    at the hashed position hashes from its own buffer; bytes written ahead of it (another
    range, or faster than one core hashes) are hashed here, re-read from the page cache,
    while the connections read the next ones (hashlib lets go of the GIL on large updates).
    Returns the hasher of the whole file.

    A dropped or stalled range is fetched again from where it stopped (``retries`` times per
    file in all); what was written stays."""
    size = item["size"]
    ranges = ctx["ranges"]
    plan.item, plan.partial, plan.idx = item, partial, idx
    if not size:
        return plan.h
    if not os.path.exists(partial):
        # created before the hashing below opens it (a range may still be connecting)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666))
    reader = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        ranges.add(plan, [seg for seg in plan.segments if seg.done < seg.end])
        try:
            return _hash_as_written(plan, reader, name, ctx)
        finally:
            ranges.remove(plan)
            with plan.cond:  # stop its connections (an error or an interrupt) and wait for them
                plan.abort = True
                while plan.inflight:
                    plan.cond.wait(1.0)
                plan.abort = False
    finally:
        os.close(reader)


def _hash_as_written(plan, reader, name, ctx):
    """fetch_and_hash's loop: hash what lands, retry the ranges that end short."""
    size, idx, retries, ranges = plan.size, plan.idx, ctx["retries"], ctx["ranges"]
    mv = memoryview(bytearray(HASH_CHUNK))
    stalls = 0
    while True:
        with plan.cond:
            while True:
                if ctx["stop"].is_set():
                    raise Fatal("%s: stopped" % name)
                results, plan.results = plan.results, []
                frontier = plan.frontier()
                if results:
                    break
                if not plan.hashing and frontier > plan.hashed:
                    plan.hashing = True
                    break
                if not plan.pending and not plan.inflight and plan.hashed >= frontier:
                    if plan.hashed >= size:
                        return plan.h
                    raise Fatal("%s: no range left to fetch at byte %d" % (name, plan.hashed))
                plan.cond.wait(1.0)
        for seg, error in results:
            if isinstance(error, Retryable):
                stalls += 1
                if stalls > ctx["retries"] or ctx["retries"] < 0:
                    raise Fatal("%s: giving up after %d attempts: %s" % (name, stalls, error))
                log("[%d/%d] %s: %s; retrying (%d/%d)" % (idx, ctx["n"], name, error, stalls, retries))
                if ctx["stop"].wait(min(2**stalls * 0.25, 10)):
                    raise Fatal("%s: stopped" % name)
                ranges.add(plan, [seg])
            elif error is not None:
                raise error
        if not results:  # this thread holds plan.hashing: what was written ahead, from disk
            try:
                while plan.hashed < frontier:
                    n = os.preadv(reader, [mv[: min(HASH_CHUNK, frontier - plan.hashed)]], plan.hashed)
                    if not n:
                        raise Fatal("%s: shorter on disk than written (changed under the fetcher?)" % name)
                    plan.h.update(mv[:n])
                    with plan.cond:
                        plan.hashed += n
            finally:
                with plan.cond:
                    plan.hashing = False
                    plan.cond.notify_all()


class Ranges:
    """The ``parallel`` connections shared by every file in flight. A free connection takes,
    first, the front of a file that no connection is on (the bytes it receives are hashed
    from its buffer and written once, with direct I/O); only when every file has its front
    taken and none is still to start, the next missing segment of the file with the fewest
    connections (written ahead of its hash through the page cache, which the hash re-reads:
    two more copies, worth it where one stream is slower than the hash). So many files go one
    connection each and a few large ones get several ranges at once."""

    def __init__(self, ctx, connections, files=()):
        self.ctx = ctx
        self.cond = threading.Condition()
        self.plans = []
        self.waiting = set(files)  # indices of the files that have not reached the connections yet
        self.threads = [
            threading.Thread(target=self.serve, name="range-%d" % i, daemon=True) for i in range(connections)
        ]
        for t in self.threads:
            t.start()

    def add(self, plan, segments):
        with self.cond:
            self.waiting.discard(plan.idx)
            with plan.cond:
                plan.pending.extend(segments)
                plan.pending.sort(key=lambda seg: seg.start)
            if plan not in self.plans:
                self.plans.append(plan)
            self.cond.notify_all()

    def remove(self, plan):
        with self.cond:
            if plan in self.plans:
                self.plans.remove(plan)
            with plan.cond:
                plan.pending = []

    def settled(self, idx):
        """File ``idx`` needs no connection (done, nothing missing, or failed)."""
        with self.cond:
            self.waiting.discard(idx)
            self.cond.notify_all()

    def _next(self):
        with self.cond:
            while not self.ctx["stop"].is_set():
                ready = [p for p in self.plans if p.pending and not p.abort]
                front = [p for p in ready if not p.inflight]
                if front or ready and not self.waiting:
                    plan = min(front or ready, key=lambda p: (p.inflight, p.idx))
                    with plan.cond:
                        plan.inflight += 1
                        return plan, plan.pending.pop(0)
                self.cond.wait(1.0)
        return None, None

    def serve(self):
        # this connection's disk writer: a buffer is written while the next one arrives
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=threading.current_thread().name) as writer:
            while True:
                plan, seg = self._next()
                if plan is None:
                    return
                self._fetch(plan, seg, writer)

    def _fetch(self, plan, seg, writer):
        error = None
        try:
            fetch_range(plan.idx, plan.item, plan, seg, plan.partial, self.ctx, writer)
        except BaseException as e:  # noqa: BLE001 - the file's own thread raises it
            error = e
        with plan.cond:
            plan.inflight -= 1
            if error is not None or seg.done < seg.end and not plan.abort:
                plan.results.append((seg, error or Retryable("range ended early")))
            plan.cond.notify_all()

    def stop(self):
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join()


_BUFFERS = threading.local()


def _buffer(i=0):
    """This thread's receive buffer ``i`` (a connection has two: one is written while the
    other fills), reused for every range it fetches (page-aligned, as direct I/O needs)."""
    bufs = getattr(_BUFFERS, "bufs", None)
    if bufs is None:
        bufs = _BUFFERS.bufs = {}
    if i not in bufs:
        bufs[i] = memoryview(mmap.mmap(-1, CHUNK))
    return bufs[i]


def open_direct(path, flags):
    """``path`` opened with O_DIRECT added, or None where the filesystem refuses it (tmpfs)."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | os.O_NOFOLLOW | direct)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


def write_at(fd, direct_fd, data, pos):
    """Write ``data`` (a buffer from :func:`_buffer`) at ``pos``: its aligned part with direct
    I/O when ``direct_fd`` is open and ``pos`` aligned, the rest through ``fd``."""
    if direct_fd is not None and pos % DIRECT_ALIGN == 0:
        k = len(data) - len(data) % DIRECT_ALIGN
        if k:
            if os.pwrite(direct_fd, data[:k], pos) != k:
                raise OSError(errno.ENOSPC, "short write (disk full?)")
            data, pos = data[k:], pos + k
    if len(data) and os.pwrite(fd, data, pos) != len(data):
        raise OSError(errno.ENOSPC, "short write (disk full?)")


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$", re.ASCII)


def fetch_range(idx, item, plan, seg, partial, ctx, writer):
    """Fetch ``seg`` from where it stopped into its place in ``partial`` (a connection's thread;
    ``writer``, its disk writer).

    The answer is checked whole before a byte is written: a 206 names exactly the bytes asked
    for and the file's size; a 200 (the whole file) is taken only from byte 0; a body longer
    than asked is not read past its end. Raises Retryable on a dropped or stalled stream,
    Fatal when the disk refuses a write."""
    if plan.abort or ctx["stop"].is_set():
        return
    size = item["size"]
    start, end = seg.done, seg.end
    whole = start == 0 and end == size  # the file in one request: no Range header at all
    resp = open_url(item["url"], ctx["token"], start, ctx["timeout"], None if whole else end - 1)
    prog = ctx["progress"]
    with resp:
        status = resp.status
        if status == 200 and start:
            raise NoRanges()
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not (m and int(m.group(1)) == start and int(m.group(2)) == end - 1 and m.group(3) in ("*", str(size))):
                raise Retryable(
                    "unexpected Content-Range %r for bytes %d-%d of %d"
                    % (resp.headers.get("Content-Range", "")[:80], start, end - 1, size)
                )
        elif status != 200:
            raise Retryable("unexpected HTTP %d" % status)
        # Straight from the socket into this thread's buffers (not a new bytes object per read);
        # a chunked body goes through http.client's decoding instead. A buffer fills to a whole
        # chunk before it is written (direct I/O wants aligned lengths); a stream that pauses,
        # stalls or drops lands what it has received. While one buffer is written (by
        # ``writer``, and hashed here when it is at the hashed position) the other fills: the
        # network, the disk and sha256 work at once. One write in flight, so the segment's
        # written bytes (what a checkpoint records) grow in order.
        readinto = resp.fp.readinto1 if not resp.chunked else None
        quiet = select.poll()
        quiet.register(resp.fp.fileno(), select.POLLIN)
        bufs = (_buffer(0), _buffer(1))
        pos = start  # where the next received byte goes
        filled = 0
        writing = None  # the write in flight
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        direct_fd = open_direct(partial, os.O_WRONLY)
        turn = 0
        try:
            while pos < end:
                if plan.abort or ctx["stop"].is_set():
                    return
                mv = bufs[turn]  # not the one being written
                # a chunk ends on an aligned offset (the first of a resumed range is short)
                want = min(CHUNK - pos % DIRECT_ALIGN, end - pos)
                ended = False
                land_by = time.monotonic() + LAND_MS / 1000
                try:
                    while filled < want and not ended:
                        if filled and (time.monotonic() > land_by or not quiet.poll(LAND_MS)):
                            break
                        if readinto is not None:
                            n = readinto(mv[filled:want])
                        else:
                            chunk = resp.read1(want - filled)
                            n = len(chunk)
                            mv[filled : filled + n] = chunk
                        filled += n
                        ended = not n
                finally:
                    if filled:  # what has arrived, also when the stream broke off
                        _written(plan, writing)  # the other buffer's, so it may fill again
                        writing = _start_write(idx, plan, seg, writer, fd, direct_fd, mv[:filled], pos, prog)
                        _hash_inline(plan, mv[:filled], pos)  # while it is written
                        pos += filled
                        filled = 0
                        turn ^= 1
                if ended:
                    break
        except (TimeoutError, ConnectionError, OSError) as e:
            raise Retryable("%s after %s" % (type(e).__name__, human(pos)))
        finally:
            try:
                _written(plan, writing)  # before its file descriptors close
            finally:
                os.close(fd)
                if direct_fd is not None:
                    os.close(direct_fd)
        if pos < end:
            raise Retryable("connection closed after %s of %s" % (human(pos), human(size)))


def _start_write(idx, plan, seg, writer, fd, direct_fd, data, pos, prog):
    """Start writing received ``data`` at ``pos`` in ``writer``'s thread, which counts the
    bytes as written once they are (a stalled stream's bytes count, and a checkpoint records
    them); returns the write, for :func:`_written`."""
    n = len(data)
    # read before the hash moves it, and without the lock: a wrong guess costs only a re-read
    # from disk or a page-cache copy
    direct = direct_fd if plan.hashed == pos else None

    def write():
        write_at(fd, direct, data, pos)
        with plan.cond:
            seg.done = pos + n
            if not plan.hashing and plan.frontier() > plan.hashed:
                plan.cond.notify_all()
        prog.add(idx, n)

    return writer.submit(write), pos


def _hash_inline(plan, data, pos):
    """Hash ``data`` from its buffer when it is at the hashed position and no other thread is
    hashing (else the file's thread re-reads it once written). The file's thread is woken only
    when there is something for it to hash (each wake-up costs a GIL hand-over)."""
    with plan.cond:
        if plan.hashing or plan.hashed != pos:
            return
        plan.hashing = True
    try:
        plan.h.update(data)
    finally:
        with plan.cond:
            plan.hashed = pos + len(data)
            plan.hashing = False
            if plan.frontier() > plan.hashed:
                plan.cond.notify_all()


def _written(plan, writing):
    """Wait for the write :func:`_start_write` started. A write the disk refuses is fatal, not
    retried: its bytes may already be in the file's hash."""
    if writing is None:
        return
    started, pos = writing
    try:
        started.result()
    except OSError as e:
        code = EXIT_SPACE if e.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_FAIL
        raise Fatal("%s: writing at byte %d: %s" % (os.path.basename(plan.partial), pos, e.strerror or e), code)


def checkpoint(ctx):
    """Record what the ranged files in flight have written (their data first on disk when
    fsync is on), so a killed run re-fetches at most what arrived since the last record."""
    ranged = list(ctx["ranged"].values())
    if not ranged:
        return
    records = {}
    for plan, partial, item in ranged:
        rec = plan.record()
        if ctx["fsync"]:
            try:
                fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        records[item["dest"]] = {"size": item["size"], "sha256": item["sha256"], "segments": rec}
    ctx["state"].set_partials(records)


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


def kept_bytes(item, state):
    """Bytes of ``item`` already in its partial file (a ranged one's from its record)."""
    partial = item["dest"] + ".partial"
    try:
        on_disk = os.path.getsize(partial)
    except OSError:
        return 0
    rec = state.partial(item["dest"])
    if rec is not None:
        plan = None
        if rec.get("size") == item["size"] and rec.get("sha256") == item["sha256"]:
            plan = Plan.from_record(item["size"], rec.get("segments"), on_disk)
        return plan.have() if plan else 0
    return on_disk if on_disk <= item["size"] else 0


def tick(ctx):
    """The model's progress line every interval; the ranged files' record every CHECKPOINT_S."""
    progress = ctx["progress"]
    next_line = time.time() + progress.interval
    next_checkpoint = time.time() + CHECKPOINT_S
    while not progress.stop.wait(max(0.01, min(next_line, next_checkpoint) - time.time())):
        now = time.time()
        if now >= next_checkpoint:
            checkpoint(ctx)
            next_checkpoint = now + CHECKPOINT_S
        if now >= next_line:
            log(progress.line())
            next_line = now + progress.interval


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
    range_bytes = m.get("range_bytes", RANGE_BYTES)
    if type(range_bytes) is not int or range_bytes < 1 << 16:
        raise Fatal("manifest %s: range_bytes: expected an integer of at least 65536" % args.manifest, EXIT_USAGE)
    meta = m.get("repo_meta") or {}
    model = meta.get("repo") if isinstance(meta.get("repo"), str) else os.path.basename(root)
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
    missing = [(f, f["size"] - kept_bytes(f, state)) for _i, f in todo]
    if todo:
        check_space(missing, margin)

    # 3. Download.
    token = read_token(m.get("token_file"))
    total = sum(f["size"] for f in files)
    progress = Progress(n, args.progress_interval, model, total, sum(f["size"] for f in verified))
    progress.files_done = len(verified)
    ctx = {
        "token": token,
        "timeout": float(m.get("timeout", 60)),
        "retries": int(m.get("retries", 3)),
        "state": state,
        "progress": progress,
        "n": n,
        "root": root,
        "fsync": not args.no_fsync,
        "range_bytes": range_bytes,
        "stop": threading.Event(),  # set on the first failure: the other files stop quickly
        "ranged": {},  # dest -> (plan, partial, item) of the ranged files in flight
    }
    if todo:
        log(
            "%s: downloading %d file(s), %s missing, %d connection(s)"
            % (model, len(todo), human(sum(b for _, b in missing)), parallel)
        )
        pt = threading.Thread(target=tick, args=(ctx,), daemon=True)
        pt.start()
        failures = []
        # ``parallel`` connections in all (ctx["ranges"]), shared by the files being fetched;
        # each file's own thread (ex) hashes what its connections do not.
        ranges = ctx["ranges"] = Ranges(ctx, parallel, [i for i, _f in todo])

        def fetch(i, f):
            try:
                download(i, f, ctx)
            finally:
                ranges.settled(i)

        try:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="file") as ex:
                futs = {ex.submit(fetch, i, f): (i, f) for i, f in todo}
                for fut in futs:
                    try:
                        fut.result()
                    except Fatal as e:
                        failures.append(e)
                        ctx["retries"] = -1  # stop the others quickly
                        ctx["stop"].set()
                    except Exception as e:  # noqa: BLE001 - report, never print a traceback with headers
                        failures.append(Fatal("%s: %s" % (type(e).__name__, e)))
                        ctx["stop"].set()
        finally:
            ctx["stop"].set()
            progress.stop.set()
            ranges.stop()
            checkpoint(ctx)  # what the ranged files have written, for the next run
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
        "done: %s: %d file(s), %d already verified, %d downloaded (%s in %.1f s, %d MB/s)"
        % (model, n, len(verified), len(todo), human(progress.fetched), dt, progress.fetched / max(dt, 1e-6) / 1e6)
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


# --------------------------------------------------------------------------- #
# in the background: a bare box's download runs while the deploy builds llama.cpp
# --------------------------------------------------------------------------- #

UNIT_PREFIX = "rigkit-fetch-"
MANIFEST_NAME = re.compile(r"[0-9a-f]{16}\.json")  # as rigkit names them (rigkit.operations.models)
#: Progress.line()'s shape: the periodic line a waiter shows only the latest of.
PROGRESS_LINE = re.compile(r".+: [\d.]+/[\d.]+ [MG]B \(\d+%\) \d+ MB/s, \d+/\d+ file\(s\) done, \d+ in flight")
WAIT_POLL_S = 0.5


def background_names(manifest):
    """The transient unit and the log of ``manifest``'s background download (beside it)."""
    name = os.path.basename(manifest)
    if not MANIFEST_NAME.fullmatch(name):
        raise Fatal("%s: expected a manifest named <16 hex digits>.json" % manifest, EXIT_USAGE)
    stem = name[: -len(".json")]
    return UNIT_PREFIX + stem + ".service", os.path.join(os.path.dirname(os.path.abspath(manifest)), stem + ".log")


# The background download's sandbox: it writes below its model's root and nowhere else (the
# log is opened by systemd, outside it), reads what it needs (the manifest, the token file),
# and keeps of root's powers only file access (model directories may belong to other users).
DOWNLOAD_HARDENING = (
    "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
)
# What a root may hold to be named in the unit's ReadWritePaths= (quoted there, so spaces are
# fine; quotes, backslashes, specifiers and control characters are not).
UNIT_PATH = re.compile(r"/[^\x00-\x1f\x7f\"\\%]*")


def read_write_paths(root):
    """The ``ReadWritePaths=`` property of a download into ``root`` (created if missing: a
    path named there must exist when the unit starts)."""
    # the path as given and as it resolves (a symlink on the way may lead to another name)
    resolved = os.path.realpath(root)
    for path in (root, resolved):
        if not UNIT_PATH.fullmatch(path):
            raise Fatal(
                "root %r: not a path a unit can name (quotes, backslashes, %% or control characters)" % path,
                EXIT_USAGE,
            )
    os.makedirs(root, exist_ok=True)
    return 'ReadWritePaths="%s"' % resolved


def _systemctl(*args):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True)


def start(manifest, progress_interval=5.0):
    """Check the manifest and the free space now, then download in a transient unit that
    outlives this command, its output in the log ``wait`` follows. An earlier deploy's
    download of the same model (a deploy interrupted while it ran) is stopped first: its
    partial files are resumed."""
    m = load_manifest(manifest)
    root = m["root"]
    for f in m["files"]:
        check_below_root(f["dest"], root, "files[].dest")
    state = State(m.get("state_file") or os.path.join(root, STATE_NAME))
    # Files present but not recorded are re-hashed by the run itself; only absent ones count here.
    missing = [
        (f, f["size"] - kept_bytes(f, state))
        for f in m["files"]
        if not state.is_verified(f["dest"], f["size"], f["sha256"]) and not os.path.lexists(f["dest"])
    ]
    check_space(missing, int(m.get("margin_bytes", 1 << 30)))
    unit, log_path = background_names(manifest)
    writable = read_write_paths(root)
    _systemctl("stop", unit)
    _systemctl("reset-failed", unit)
    _unlink(log_path)
    meta = m.get("repo_meta") or {}
    model = meta.get("repo") if isinstance(meta.get("repo"), str) else os.path.basename(root)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(log_path, "w", encoding="utf-8") as f:
        f.write("%s: download started at %s in %s\n" % (model, since, unit))
    argv = [
        "systemd-run",
        "--unit=" + unit,
        "--collect",
        "--quiet",
        "--description=rigkit: model download (%s)" % os.path.basename(manifest),
        "--property=StandardOutput=append:" + log_path,
        "--property=StandardError=append:" + log_path,
        "--property=" + writable,
        *("--property=" + p for p in DOWNLOAD_HARDENING),
        sys.executable,
        os.path.abspath(__file__),
        manifest,
        "--progress-interval=%g" % progress_interval,
    ]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise Fatal("systemd-run could not start the download: %s" % r.stderr.strip())
    log(
        "%s: %s to download, in the background (%s) while the deploy goes on"
        % (model, human(sum(b for _, b in missing)), unit)
    )
    return EXIT_OK


LIVE_STATES = ("active", "activating", "deactivating", "reloading")


def _running(unit):
    return _systemctl("is-active", unit).stdout.strip() in LIVE_STATES


def _live_units():
    """The background download units running now, asked of systemd in one call."""
    out = _systemctl("list-units", "--all", "--plain", "--no-legend", "--type=service", UNIT_PREFIX + "*").stdout
    return {parts[0] for parts in map(str.split, out.splitlines()) if len(parts) >= 3 and parts[2] in LIVE_STATES}


def follow(unit, log_path, progress_interval=5.0, poll=WAIT_POLL_S):
    """Show the background download's lines as they come (of its periodic progress lines,
    the latest, at most once per interval: a long build's worth of them is not replayed),
    until its unit ends; its exit code, read from its last line (the JSON summary)."""
    pos, pending, latest, shown_at, result = 0, b"", None, 0.0, None
    while True:
        running = _running(unit)  # before reading: what it wrote before it ended is read below
        try:
            with open(log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        pos += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if PROGRESS_LINE.fullmatch(line):
                latest = line
                continue
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                except ValueError:
                    pass
            print(line, flush=True)
        if latest is not None and (not running or time.time() - shown_at >= progress_interval):
            if result is None:  # the summary says the rest
                print(latest, flush=True)
            latest, shown_at = None, time.time()
        if not running:
            break
        time.sleep(poll)
    if not isinstance(result, dict):
        log("error: the download in %s ended without its summary (see journalctl -u %s)" % (unit, unit))
        return EXIT_FAIL
    if result.get("ok") is True:
        return EXIT_OK
    code = result.get("exit")
    return code if type(code) is int and 0 < code < 128 else EXIT_FAIL


def wait(manifests, progress_interval=5.0):
    """Follow each manifest's background download to its end; the first failure's code."""
    names = [background_names(m) for m in manifests]
    codes = [follow(unit, log_path, progress_interval) for unit, log_path in names]
    return next((c for c in codes if c), EXIT_OK)


def running(manifest_dir):
    """The background downloads running now, as JSON: per download its unit, its log's first
    line (the model, since when) and its latest progress line."""
    out = []
    try:
        names = sorted(os.listdir(manifest_dir))
    except OSError:
        names = []
    live = _live_units() if any(MANIFEST_NAME.fullmatch(name) for name in names) else set()
    for name in names:
        if not MANIFEST_NAME.fullmatch(name):
            continue
        unit, log_path = background_names(os.path.join(manifest_dir, name))
        if unit not in live:
            continue
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        progress = next((line for line in reversed(lines) if PROGRESS_LINE.fullmatch(line)), None)
        out.append({"unit": unit, "started": lines[0] if lines else None, "progress": progress})
    print(json.dumps(out))
    return EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["record-upload"]:  # record-upload STATE STAGED DEST SIZE SHA256
            state_file, staged, dest, size, sha256 = argv[1:]
            return record_upload(state_file, staged, dest, int(size), sha256)
        if argv[:1] == ["start"] and len(argv) == 2:
            return start(argv[1])
        if argv[:1] == ["wait"] and len(argv) >= 2:
            return wait(argv[1:])
        if argv[:1] == ["running"] and len(argv) == 2:
            return running(argv[1])
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
