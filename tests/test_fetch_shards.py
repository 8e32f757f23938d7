"""rigkit/scripts/fetch_shards.py as a subprocess against the mirror on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_mirror import REPO, make_repo

from rigkit.models import hub, lockfile, mirror
from rigkit.operations.models import manifest_for

SCRIPT = Path(__file__).resolve().parents[1] / "rigkit" / "scripts" / "fetch_shards.py"
TOKEN = "hf_FetchSecret_0987654321"
BIG = "Q4/tiny-00001-of-00002.gguf"


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "mirror"
    files = make_repo(root, sizes=(6_000_000, 2_000_000))
    s = mirror.serve(str(root))
    yield s, files, tmp_path
    s.stop()


def locked(s, include=("Q4/*.gguf", "README.md"), dest=None, tmp=None):
    ref = hub.ModelRef(REPO, "main", include, dest or str(tmp / "host" / "models" / REPO))
    res = hub.HubClient(s.url).resolve(ref)
    entry = lockfile.LockEntry(
        ref.repo,
        ref.revision,
        ref.include,
        res.sha,
        tuple(lockfile.LockedFile(f.path, f.size, f.sha256) for f in res.files),
    )
    return ref, entry


def write_manifest(tmp, ref, entry, endpoint, **kw):
    m = manifest_for(
        ref,
        entry,
        endpoint=endpoint,
        parallel=kw.pop("parallel", 3),
        margin_bytes=kw.pop("margin_bytes", 4096),
        token_file=kw.pop("token_file", None),
    )
    m.update(kw)
    p = tmp / f"manifest-{time.monotonic_ns()}.json"
    p.write_text(json.dumps(m))
    return p


def fetch(manifest, *args, timeout=60):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(manifest), "--progress-interval", "0.05", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    summary = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    return r, summary


def assert_placed(ref, entry, files):
    for f in entry.files:
        assert (Path(ref.dest) / f.path).read_bytes() == files[f.path]
    assert not list(Path(ref.dest).rglob("*.partial"))


def test_lock_then_deploy_then_skip(env):
    s, files, tmp = env
    ref, entry = locked(s, tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url)
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    assert summary["downloaded"] == 3 and summary["bytes_fetched"] == sum(f.size for f in entry.files)
    assert_placed(ref, entry, files)
    assert re.search(r"\[\d/3\] Q4/tiny-00001-of-00002.gguf 6.0 MB sha256 ok", r.stderr)
    state = json.loads((Path(ref.dest) / ".rigkit-verified.json").read_text())
    assert set(state["files"]) == {str(Path(ref.dest) / f.path) for f in entry.files}
    # the placed directory is itself servable with the upstream sha (a LAN mirror)
    assert json.loads((Path(ref.dest) / ".rigkit-repo.json").read_text())["sha"] == entry.sha
    # re-run: skipped without hashing, nothing fetched
    s.reset_stats()
    r, summary = fetch(man)
    assert r.returncode == 0 and summary["skipped"] == 3 and summary["bytes_fetched"] == 0
    assert "skipped without hashing" in r.stderr and "verified (" not in r.stderr
    assert s.total_sent() == 0


def test_kill_mid_file_then_resume(env):
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url)
    size = len(files[BIG])
    s.stall_after_bytes = 2_500_000
    partial = Path(ref.dest) / (BIG + ".partial")
    err = open(tmp / "stderr1", "w+")  # noqa: SIM115 - the child writes it
    p = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(man), "--progress-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not (partial.exists() and partial.stat().st_size >= 2_500_000):
            time.sleep(0.02)
        time.sleep(0.2)  # let a progress line out
        assert partial.stat().st_size == 2_500_000
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    err.seek(0)
    # one line per interval for the model: its bytes, rate, files done and in flight
    assert re.search(
        r"^rigtest/tiny-GGUF: 2\.5/6\.0 MB \(41%\) \d+ MB/s, 0/1 file\(s\) done, 1 in flight$", err.read(), re.M
    )
    assert not (Path(ref.dest) / BIG).exists()
    s.stall_after_bytes = None
    s.stall_release.set()
    s.reset_stats()
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    assert "resuming at 2.5 MB" in r.stderr
    refetched = s.bytes_sent[BIG]
    assert refetched == size - 2_500_000  # only the missing tail came again
    assert_placed(ref, entry, files)


def test_large_file_fetched_in_ranges_at_once(env):
    """A file larger than range_bytes comes in ranges (3 connections here): a server that
    stalls every response after 1.5 MB still delivers all 6 MB, each range being 1 MiB."""
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url, range_bytes=1 << 20, timeout=5)
    s.stall_after_bytes = 1_500_000
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    assert "retrying" not in r.stderr
    assert s.bytes_sent[BIG] == len(files[BIG])  # nothing fetched twice
    assert_placed(ref, entry, files)
    state = json.loads((Path(ref.dest) / ".rigkit-verified.json").read_text())
    assert "partials" not in state  # the ranges' record goes once the file is placed


def test_kill_mid_ranged_file_then_resume(env):
    """Killed while 3 ranges are in flight, a resumed run re-fetches less than 1 % of the file:
    the state file records each range's written bytes (the partial file has holes)."""
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url, range_bytes=1 << 20)
    size = len(files[BIG])
    s.stall_after_bytes = 500_000  # every range stops after 500 kB
    state_file = Path(ref.dest) / ".rigkit-verified.json"

    def written() -> int:
        try:
            (rec,) = json.loads(state_file.read_text())["partials"].values()
        except (OSError, ValueError, KeyError):
            return 0
        return sum(done - start for start, _end, done in rec["segments"])

    p = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(man), "--progress-interval", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while time.time() < deadline and written() < 1_500_000:
            time.sleep(0.05)
        assert written() == 1_500_000  # 3 connections at once, 500 kB each
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (Path(ref.dest) / BIG).exists()
    s.stall_after_bytes = None
    s.stall_release.set()
    s.reset_stats()
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    assert "resuming at 1.5 MB" in r.stderr
    assert s.bytes_sent[BIG] == size - 1_500_000  # < 1 % again: nothing written came twice
    assert_placed(ref, entry, files)
    assert "partials" not in json.loads(state_file.read_text())


def test_ranged_resume_keeps_what_was_written_after_the_last_record(env):
    """Killed before its record of the written bytes caught up (here: a record of none), a
    ranged file still resumes from what its connections wrote, as the file system's holes
    show: each range re-fetches at most one block."""
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url, range_bytes=1 << 20)
    size = len(files[BIG])
    s.stall_after_bytes = 500_000
    state_file = Path(ref.dest) / ".rigkit-verified.json"
    partial = Path(ref.dest) / (BIG + ".partial")
    p = subprocess.Popen([sys.executable, str(SCRIPT), str(man)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not (partial.exists() and partial.stat().st_blocks * 512 >= 1_500_000):
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    state = json.loads(state_file.read_text())
    (dest,) = state["partials"]
    rec = state["partials"][dest]
    rec["segments"] = [[a, b, a] for a, b, _done in rec["segments"]]  # as recorded before any byte
    state_file.write_text(json.dumps(state))
    s.stall_after_bytes = None
    s.stall_release.set()
    s.reset_stats()
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    block = max(os.statvfs(ref.dest).f_bsize, 4096)
    assert size - 1_500_000 <= s.bytes_sent[BIG] <= size - 1_500_000 + 3 * block, s.bytes_sent
    assert_placed(ref, entry, files)


def test_dropped_connection_resumes_in_run(env):
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url)
    s.drop_after_bytes = 1_000_000
    r, summary = fetch(man)
    assert r.returncode == 0, r.stderr
    assert "retrying" in r.stderr
    assert s.bytes_sent[BIG] == len(files[BIG])  # nothing fetched twice
    assert_placed(ref, entry, files)


def test_flipped_byte_detected_by_reverify(env):
    s, files, tmp = env
    ref, entry = locked(s, tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url)
    assert fetch(man)[0].returncode == 0
    target = Path(ref.dest) / BIG
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(1234)
        b = f.read(1)
        f.seek(1234)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # silent corruption: same size and mtime
    s.reset_stats()
    r, summary = fetch(man)
    assert summary["skipped"] == 3 and s.total_sent() == 0  # the fast path trusts the record
    r, summary = fetch(man, "--reverify")
    assert r.returncode == 0, r.stderr
    assert "does not match the lock" in r.stderr and BIG in r.stderr
    assert s.bytes_sent == {BIG: len(files[BIG])}
    assert_placed(ref, entry, files)
    # a changed mtime alone (e.g. a touched file) means re-hash, not re-download
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s.reset_stats()
    r, summary = fetch(man)
    assert r.returncode == 0 and "verified (6.0 MB)" in r.stderr and s.total_sent() == 0


def test_full_disk_fails_before_download(env):
    s, files, tmp = env
    mnt = tmp / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        ref, entry = locked(s, dest=str(mnt / "models"), tmp=tmp)
        man = write_manifest(tmp, ref, entry, s.url)
        s.reset_stats()
        r, summary = fetch(man)
        assert r.returncode == 3 and summary["exit"] == 3
        assert re.search(r"not enough disk space .* need \d+ bytes .* free \d+ bytes", r.stderr)
        assert s.total_sent() == 0
        assert list(mnt.iterdir()) == []  # nothing half-written
    finally:
        subprocess.run(["umount", str(mnt)])


def test_bad_hash_fails_loudly_and_cleans_up(env):
    s, files, tmp = env
    ref, entry = locked(s, include=("README.md",), tmp=tmp)
    bad = lockfile.LockEntry(
        entry.repo,
        entry.revision,
        entry.include,
        entry.sha,
        (lockfile.LockedFile("README.md", entry.files[0].size, "0" * 64),),
    )
    man = write_manifest(tmp, ref, bad, s.url, retries=1)
    r, summary = fetch(man)
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr and "failed after 2 attempts" in r.stderr
    assert not Path(ref.dest, "README.md").exists() and not Path(ref.dest, "README.md.partial").exists()
    # 404
    gone = lockfile.LockEntry(
        entry.repo, entry.revision, entry.include, entry.sha, (lockfile.LockedFile("nope.gguf", 10, "0" * 64),)
    )
    r, summary = fetch(write_manifest(tmp, ref, gone, s.url))
    assert r.returncode == 5 and "HTTP 404" in r.stderr


def test_token_sent_but_never_shown(tmp_path):
    root = tmp_path / "mirror"
    files = make_repo(root)
    s = mirror.serve(str(root), token=TOKEN, lfs_redirect=True)
    try:
        ref = hub.ModelRef(REPO, "main", ("Q4/*.gguf",), str(tmp_path / "host" / "m"))
        res = hub.HubClient(s.url, TOKEN).resolve(ref)
        entry = lockfile.LockEntry(
            ref.repo,
            ref.revision,
            ref.include,
            res.sha,
            tuple(lockfile.LockedFile(f.path, f.size, f.sha256) for f in res.files),
        )
        tf = tmp_path / "tok"
        tf.write_text(TOKEN)
        tf.chmod(0o600)
        outputs = []
        r, _ = fetch(write_manifest(tmp_path, ref, entry, s.url))  # no token -> 401
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 4 and "HTTP 401" in r.stderr and "no token" in r.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text(TOKEN[::-1])
        r, _ = fetch(write_manifest(tmp_path, ref, entry, s.url, token_file=str(wrong)))
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 4 and "rejected" in r.stderr
        r, _ = fetch(write_manifest(tmp_path, ref, entry, s.url, token_file=str(tf)))
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr
        for f in entry.files:
            assert Path(ref.dest, f.path).read_bytes() == files[f.path]
        for o in outputs:
            assert TOKEN not in o and TOKEN[::-1] not in o
        for p in Path(ref.dest).rglob("*"):
            if p.is_file() and ".rigkit" in p.name:
                assert TOKEN not in p.read_text()
        for p in tmp_path.glob("manifest-*.json"):
            assert TOKEN not in p.read_text()
    finally:
        s.stop()


def test_pyinfra_operation_local(env):
    """models.shards through pyinfra's @local connector: download, then a no-op."""
    s, files, tmp = env
    pyinfra_bin = Path(sys.executable).with_name("pyinfra")
    if not pyinfra_bin.exists():
        pytest.skip("pyinfra CLI not installed")
    ref, entry = locked(s, tmp=tmp)
    lp = tmp / "lock.yaml"
    lockfile.dump({ref.key: entry}, lp)
    deploy = tmp / "deploy.py"
    deploy.write_text(
        textwrap.dedent(f"""
        from rigkit.models import lockfile
        from rigkit.models.hub import ModelRef
        from rigkit.operations import models
        ref = ModelRef({ref.repo!r}, {ref.revision!r}, {ref.include!r}, {ref.dest!r})
        entry = lockfile.check([ref], lockfile.load({str(lp)!r}))[ref.key]
        models.fetcher(name="fetcher", use_token=False, remote_dir={str(tmp / "rigkit")!r})
        models.shards(name="tiny shards", ref=ref, lock_entry=entry, endpoint={s.url!r}, use_token=False,
                      remote_dir={str(tmp / "rigkit")!r}, margin_bytes=0)
    """)
    )
    cmd = [str(pyinfra_bin), "-y", "@local", str(deploy)]
    envv = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[2]))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=envv, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_placed(ref, entry, files)
    s.reset_stats()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=envv, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.total_sent() == 0
    assert "No changes" in r.stdout + r.stderr or "already verified" in r.stdout + r.stderr


# --- where the fetcher writes and what it deletes (issue 20) ---------------------------------


def hostile_manifest(tmp_path, root, dest, **more):
    """A manifest of one file for ``dest`` under ``root`` (the URL is never reached)."""
    m = {
        "files": [{"url": "http://127.0.0.1:9/x", "size": 3, "sha256": "0" * 64, "dest": str(dest)}],
        "root": str(root),
        **more,
    }
    p = tmp_path / f"manifest-{time.monotonic_ns()}.json"
    p.write_text(json.dumps(m))
    return p


@pytest.mark.parametrize(
    "dest",
    [
        "/etc/cron.d/rigkit-x",  # outside root
        "{root}/../escaped",  # '..' leading out
        "{root}/a/../../escaped",
        "{root}",  # root itself is no file
        "{root}//x",
        "{root}-sibling/x",  # a prefix of root's name is not root
        "relative/x",
    ],
)
def test_fetcher_refuses_dests_outside_root(tmp_path, dest):
    root = tmp_path / "models" / "m"
    r, summary = fetch(hostile_manifest(tmp_path, root, dest.format(root=root)))
    assert r.returncode == 2 and summary["exit"] == 2, r.stderr
    assert "files[0].dest" in r.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "escaped").exists()


def test_fetcher_refuses_a_symlink_out_of_root(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    r, summary = fetch(hostile_manifest(tmp_path, root, root / "sub" / "deeper" / "x.gguf"))
    assert r.returncode == 2 and "outside the manifest's root" in r.stderr, r.stderr
    assert list(outside.iterdir()) == []
    # A dest that is itself a symlink (to a file it must not touch) is not written through.
    victim = outside / "passwd"
    victim.write_text("root:x:0:0\n")
    (root / "x.gguf").symlink_to(victim)
    r, _ = fetch(hostile_manifest(tmp_path, root, root / "x.gguf"))
    assert r.returncode == 2 and "symbolic link" in r.stderr, r.stderr
    assert victim.read_text() == "root:x:0:0\n" and (root / "x.gguf").is_symlink()


@pytest.mark.parametrize(
    "more",
    [
        {"state_file": "/etc/rigkit-state.json"},
        {"state_file": "{root}/../state.json"},
        {"repo_meta": {"dir": "/etc", "repo": "a/b", "sha": "a" * 40}},
        {"root": "/"},
        {"root": None},
    ],
)
def test_fetcher_refuses_bookkeeping_outside_root(tmp_path, more):
    root = tmp_path / "models"
    more = {k: (v.format(root=root) if isinstance(v, str) else v) for k, v in more.items()}
    manifest = hostile_manifest(tmp_path, root, root / "x.gguf")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **more}))
    r, summary = fetch(manifest)
    assert r.returncode == 2 and summary["exit"] == 2, r.stderr
    assert not root.exists()


def test_fetcher_never_deletes_a_file_it_did_not_place(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    theirs = root / "x.gguf"
    theirs.write_text("someone else's file\n")
    r, summary = fetch(hostile_manifest(tmp_path, root, theirs))
    assert r.returncode == 1 and "was not placed by rigkit" in r.stderr and "nothing was deleted" in r.stderr
    assert theirs.read_text() == "someone else's file\n"
    assert not (root / "x.gguf.partial").exists()


class _RangeServer:
    """A stand-in for a download server that answers ranges wrongly: ``ignore`` sends the
    whole file to every request (no Range support), ``shift`` sends a 206 one byte later
    than asked (and says so in Content-Range)."""

    def __init__(self, data: bytes, mode: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
                if mode == "ignore" or not m:
                    body, status, headers = data, 200, {}
                else:
                    start = int(m.group(1)) + 1
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    body, status = data[start : end + 1], 206
                    headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.gguf"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _one_file_manifest(tmp_path, url, data, **kw):
    import hashlib

    root = tmp_path / "host" / "m"
    m = {
        "files": [
            {"url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "dest": str(root / "f.gguf")}
        ],
        "root": str(root),
        "parallel": 3,
        "margin_bytes": 0,
        "retries": 1,
        "range_bytes": 1 << 16,
        **kw,
    }
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(m))
    return p, root / "f.gguf"


def test_a_server_ignoring_range_gets_one_stream_from_the_start(tmp_path):
    data = os.urandom(300_000)  # 5 ranges of 64 KiB
    srv = _RangeServer(data, "ignore")
    try:
        man, dest = _one_file_manifest(tmp_path, srv.url, data)
        r, summary = fetch(man)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    assert "the server ignores Range; fetching it in one stream from the start" in r.stderr
    assert dest.read_bytes() == data and not dest.with_name("f.gguf.partial").exists()


def test_a_range_answered_with_other_bytes_is_refused(tmp_path):
    data = os.urandom(300_000)
    srv = _RangeServer(data, "shift")
    try:
        man, dest = _one_file_manifest(tmp_path, srv.url, data)
        r, summary = fetch(man)
    finally:
        srv.stop()
    assert r.returncode == 1 and summary["ok"] is False
    refused = re.findall(r"unexpected Content-Range 'bytes (\d+)-(\d+)/300000' for bytes (\d+)-(\d+) of", r.stderr)
    assert refused and all(int(a) == int(c) + 1 and b == d for a, b, c, d in refused), r.stderr
    assert not dest.exists()  # nothing placed from bytes that were not asked for


# --------------------------------------------------------------------------- in the background
# The transient unit itself runs on the sandbox hosts' systemd (tests/test_bring_up_e2e.py);
# this machine has none, so here the unit's state is a flag and its log a file written as
# the fetcher writes it.

from rigkit.scripts import fetch_shards as fs  # noqa: E402


def _follow(tmp_path, monkeypatch, capsys, log_lines, running_polls=2):
    """``follow`` over a log whose lines come in two writes, the unit ending after the second."""
    log = tmp_path / "0123456789abcdef.log"
    log.write_text("".join(f"{line}\n" for line in log_lines[:-2]))
    polls = {"n": 0}

    def running(unit):
        polls["n"] += 1
        if polls["n"] == running_polls:  # the rest arrives, then the unit ends
            with open(log, "a") as f:
                f.write("".join(f"{line}\n" for line in log_lines[-2:]))
        return polls["n"] <= running_polls

    monkeypatch.setattr(fs, "_running", running)
    code = fs.follow("rigkit-fetch-0123456789abcdef.service", str(log), progress_interval=3600, poll=0.01)
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def _progress(pct):
    return f"org/m: {pct / 10:.1f}/10.0 MB ({pct}%) 3 MB/s, 0/2 file(s) done, 2 in flight"


def test_a_caught_up_wait_shows_the_latest_progress_not_a_builds_worth(tmp_path, monkeypatch, capsys):
    assert fs.PROGRESS_LINE.fullmatch(_progress(40))  # the shape Progress.line() prints
    lines = [
        "org/m: download started at 2026-12-02T06:00:00Z in rigkit-fetch-0123456789abcdef.service",
        *[_progress(p) for p in range(1, 60)],  # minutes of lines while the build ran
        "[1/2] a.gguf 6.0 MB sha256 ok",
        _progress(80),
        "done: org/m: 2 file(s), 0 already verified, 2 downloaded (10.0 MB in 300.0 s, 0 MB/s)",
        '{"ok": true, "files": 2, "skipped": 0, "downloaded": 2, "bytes_fetched": 10000000, "seconds": 300.0}',
    ]
    code, shown, _ = _follow(tmp_path, monkeypatch, capsys, lines)
    assert code == 0
    assert shown == [lines[0], lines[-4], _progress(80), lines[-2], lines[-1]]


def test_a_failed_background_download_fails_the_wait_with_its_code(tmp_path, monkeypatch, capsys):
    lines = [
        "org/m: download started at 2026-12-02T06:00:00Z in rigkit-fetch-0123456789abcdef.service",
        "fetch_shards: error: HTTP 404 for https://hub.example/org/m/resolve/abc/a.gguf",
        '{"ok": false, "exit": 5, "error": "HTTP 404"}',
    ]
    code, shown, _ = _follow(tmp_path, monkeypatch, capsys, lines)
    assert code == fs.EXIT_NOTFOUND and shown == lines


def test_a_background_download_that_died_without_its_summary_fails_the_wait(tmp_path, monkeypatch, capsys):
    lines = ["org/m: download started at 2026-12-02T06:00:00Z in x", _progress(10), _progress(20)]
    code, shown, err = _follow(tmp_path, monkeypatch, capsys, lines)
    assert code == fs.EXIT_FAIL and shown == [lines[0], _progress(20)]
    assert "ended without its summary (see journalctl -u rigkit-fetch-0123456789abcdef.service)" in err


@pytest.mark.parametrize(
    "name",
    [
        "0123456789abcdef.json\n",
        "$(reboot).json",
        "0123456789ABCDEF.json",
        "0123456789abcde.json",
        "0123456789abcd\u0435f.json",  # a Cyrillic e
        "0123456789abcdef.json.service",
    ],
)
def test_background_names_take_only_rigkits_manifest_names(name, tmp_path):
    with pytest.raises(fs.Fatal, match="expected a manifest named"):
        fs.background_names(str(tmp_path / name))
    unit, log = fs.background_names("/var/lib/rigkit/manifests/0123456789abcdef.json")
    assert (unit, log) == ("rigkit-fetch-0123456789abcdef.service", "/var/lib/rigkit/manifests/0123456789abcdef.log")


def test_a_background_start_short_of_space_fails_before_any_unit(env, monkeypatch):
    s, files, tmp = env
    ref, entry = locked(s, tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url, margin_bytes=1 << 60)
    named = man.with_name("0123456789abcdef.json")
    man.rename(named)
    calls = []
    monkeypatch.setattr(fs.subprocess, "run", lambda argv, **kw: calls.append(argv))
    with pytest.raises(fs.Fatal, match="not enough disk space") as err:
        fs.start(str(named))
    assert err.value.code == fs.EXIT_SPACE and calls == []  # no systemctl, no systemd-run
    assert not named.with_suffix(".log").exists()


def test_running_lists_the_live_downloads_with_their_latest_line(tmp_path, monkeypatch, capsys):
    """What ``rigkit status`` reads (rigkit.facts.models.BackgroundDownloads): the downloads
    whose unit runs, each with its log's first line and its latest progress line; an ended
    one, a log of no manifest name and a missing directory list nothing."""
    from rigkit.facts.models import BackgroundDownloads

    live, ended = "0123456789abcdef", "fedcba9876543210"
    first = "org/m: download started at 2026-12-02T06:00:00Z in rigkit-fetch-0123456789abcdef.service"
    (tmp_path / f"{live}.log").write_text(f"{first}\n{_progress(10)}\n[1/2] a.gguf 6.0 MB sha256 ok\n{_progress(70)}\n")
    (tmp_path / f"{ended}.log").write_text(f"{first}\n{_progress(99)}\n")
    for stem in (live, ended, "not-a-manifest"):
        (tmp_path / f"{stem}.json").write_text("{}")
    listed = (  # systemctl list-units --all --plain --no-legend: UNIT LOAD ACTIVE SUB DESCRIPTION
        f"rigkit-fetch-{live}.service loaded active running rigkit: model download ({live}.json)\n"
        f"rigkit-fetch-{ended}.service loaded failed failed rigkit: model download ({ended}.json)\n"
    )
    asked = []

    def systemctl(*args):
        asked.append(args)
        return subprocess.CompletedProcess(args, 0, listed, "")

    monkeypatch.setattr(fs, "_systemctl", systemctl)
    assert fs.running(str(tmp_path)) == 0
    assert len(asked) == 1  # one call for every manifest
    out = capsys.readouterr().out
    assert json.loads(out) == [{"unit": f"rigkit-fetch-{live}.service", "started": first, "progress": _progress(70)}]
    assert BackgroundDownloads().process(out.splitlines()) == json.loads(out)
    assert BackgroundDownloads().process(["[]"]) == [] == BackgroundDownloads().process([])
    assert fs.running(str(tmp_path / "absent")) == 0 and json.loads(capsys.readouterr().out) == []


def test_status_shows_a_download_left_running_even_without_a_build():
    from rigkit.status import render_text

    progress = _progress(70)
    report = {
        "rig": {"reachable": True, "problems": [], "downloads": [{"unit": "u", "started": "s", "progress": progress}]}
    }
    assert render_text(report).splitlines() == ["rig: ", f"  model download in the background: {progress}"]
    report["rig"]["downloads"] = [{"unit": "u", "started": "org/m: download started at T in u", "progress": None}]
    assert (
        render_text(report).splitlines()[1] == "  model download in the background: org/m: download started at T in u"
    )


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_received_bytes_land_exactly_at_any_alignment(tmp_path, direct):
    """write_at puts the aligned part of a chunk on disk with O_DIRECT and the rest through the
    page cache: every byte lands where it belongs, whatever the offset and length (a file's
    last block, a resumed range's unaligned start), and without direct I/O the same."""
    from rigkit.scripts import fetch_shards as fs

    path = tmp_path / "f.partial"
    expected = bytearray(64 << 10)
    buf = fs._buffer()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    direct_fd = fs.open_direct(str(path), os.O_WRONLY) if direct else None
    if direct:
        assert direct_fd is not None, "the test directory's filesystem refuses O_DIRECT"
    try:
        for pos, n in ((0, 8192), (8192, 5000), (13192, 2904), (16384, 4097), (20481, 9000), (40960, 4096)):
            data = os.urandom(n)
            buf[:n] = data
            fs.write_at(fd, direct_fd, buf[:n], pos)
            expected[pos : pos + n] = data
    finally:
        os.close(fd)
        if direct_fd is not None:
            os.close(direct_fd)
    assert path.read_bytes() == bytes(expected[:45056])


def test_open_direct_falls_back_where_the_filesystem_refuses_it(tmp_path, monkeypatch):
    from rigkit.scripts import fetch_shards as fs

    with pytest.raises(FileNotFoundError):  # any other error is the caller's
        fs.open_direct(str(tmp_path / "missing"), os.O_WRONLY)
    real_open = os.open

    def refuse_direct(path, flags, *mode):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *mode)

    monkeypatch.setattr(os, "open", refuse_direct)
    (tmp_path / "f").write_bytes(b"")
    assert fs.open_direct(str(tmp_path / "f"), os.O_WRONLY) is None


@pytest.mark.parametrize(
    "root",
    [
        "/srv/models/tiny",
        "/srv/my models/Qwen3.5 (122B)",
        "/home/ana/modèles/q@v1+x",
        "/srv/models/a\u201d /etc",  # a look-alike quote is a letter to systemd: it cannot end the value
    ],
)
def test_a_background_download_may_write_only_below_its_root(tmp_path, monkeypatch, root):
    """start runs the download in a sandbox (the unit's properties) whose only writable path
    is the model's root, quoted, so legitimate names with spaces or accents pass through."""
    made = []
    monkeypatch.setattr(fs.os, "makedirs", lambda path, exist_ok: made.append(path))
    monkeypatch.setattr(fs.os.path, "realpath", lambda path: path)
    assert fs.read_write_paths(root) == f'ReadWritePaths="{root}"' and made == [root]
    assert "ProtectSystem=strict" in fs.DOWNLOAD_HARDENING and "NoNewPrivileges=yes" in fs.DOWNLOAD_HARDENING


@pytest.mark.parametrize(
    "root",
    ['/srv/models/a" /etc', "/srv/models/a\\x20/etc", "/srv/models/%h", "/srv/models/a\n/etc", "/srv/models/\x7f"],
)
def test_a_root_a_unit_cannot_name_is_refused_before_any_unit(root, monkeypatch):
    calls = []
    monkeypatch.setattr(fs.os, "makedirs", lambda *a, **kw: calls.append(a))
    with pytest.raises(fs.Fatal, match="not a path a unit can name") as err:
        fs.read_write_paths(root)
    assert err.value.code == fs.EXIT_USAGE and calls == []


def test_a_root_that_resolves_to_a_name_a_unit_cannot_hold_is_refused(tmp_path):
    """The property names the resolved path: a symlink on the way is checked where it leads."""
    odd = tmp_path / 'models" ReadWritePaths=x'
    odd.mkdir()
    (tmp_path / "models").symlink_to(odd)
    with pytest.raises(fs.Fatal, match="not a path a unit can name") as err:
        fs.read_write_paths(str(tmp_path / "models" / "tiny"))
    assert err.value.code == fs.EXIT_USAGE and list(odd.iterdir()) == []


def test_a_background_start_runs_the_download_in_its_sandbox(env, monkeypatch):
    s, files, tmp = env
    ref, entry = locked(s, tmp=tmp)
    named = write_manifest(tmp, ref, entry, s.url).rename(tmp / "0123456789abcdef.json")
    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(fs.subprocess, "run", run)
    assert fs.start(str(named)) == fs.EXIT_OK
    (argv,) = [c for c in calls if c[0] == "systemd-run"]
    props = [a.removeprefix("--property=") for a in argv if a.startswith("--property=")]
    assert f'ReadWritePaths="{os.path.realpath(ref.dest)}"' in props
    assert set(fs.DOWNLOAD_HARDENING) <= set(props)
    assert argv[argv.index(sys.executable) + 1 :][:2] == [os.path.abspath(fs.__file__), str(named)]


def test_a_free_connection_takes_a_files_front_before_going_ahead_of_a_hash():
    """Bytes received at a file's hashed position are hashed from the buffer and written once;
    bytes ahead of it cost a page-cache write and a re-read. So a free connection starts a
    file no connection is on, and waits for files still to start, before it takes a range
    ahead of another file's hash; once none is waiting, several ranges go at once."""
    import threading

    ctx = {"stop": threading.Event()}
    ranges = fs.Ranges(ctx, 0, files=[1, 2, 3])  # no connection threads: _next is called here

    def plan(idx):
        p = fs.Plan.fresh(4 << 20, 1 << 20)
        p.idx = idx
        ranges.add(p, list(p.segments))
        return p

    def take():
        got = []
        t = threading.Thread(target=lambda: got.append(ranges._next()), daemon=True)
        t.start()
        t.join(0.3)
        return t, got

    first = plan(1)
    assert ranges._next() == (first, first.segments[0])  # the front of the only file in flight
    waiting, got = take()
    assert not got  # file 1's next range is ahead of its hash, and files 2 and 3 have not started
    second = plan(2)
    waiting.join(5)
    assert got == [(second, second.segments[0])]
    ranges.settled(3)  # nothing missing in file 3: no file waits now
    assert ranges._next() == (first, first.segments[1])  # ahead, on the file with fewest connections
    assert ranges._next() == (second, second.segments[1])
    ctx["stop"].set()
    ranges.stop()


def test_a_write_the_disk_refuses_stops_the_file_and_counts_nothing_it_refused(env, monkeypatch, capsys):
    """Writes run beside the receive (a connection's writer), so a refused one is found after
    its bytes were hashed: fatal, not retried (a retry would land other bytes under that hash),
    named, and the partial's record holds only the bytes that reached the file."""
    s, files, tmp = env
    ref, entry = locked(s, include=(BIG,), tmp=tmp)
    man = write_manifest(tmp, ref, entry, s.url, range_bytes=1 << 20, parallel=1)
    real_write_at = fs.write_at
    written = []

    def disk_full_on_the_third(fd, direct_fd, data, pos):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        real_write_at(fd, direct_fd, data, pos)
        written.append((pos, len(data)))

    monkeypatch.setattr(fs, "write_at", disk_full_on_the_third)
    refused = r"tiny-00001-of-00002\.gguf\.partial: writing at byte \d+: No space left"
    with pytest.raises(fs.Fatal, match=refused) as err:
        fs.run([str(man), "--progress-interval", "3600"])
    assert err.value.code == fs.EXIT_SPACE
    assert "retrying" not in capsys.readouterr().err
    assert not (Path(ref.dest) / BIG).exists()
    state = json.loads((Path(ref.dest) / ".rigkit-verified.json").read_text())
    (record,) = state["partials"].values()
    assert sum(done - start for start, _end, done in record["segments"]) == sum(n for _pos, n in written)
