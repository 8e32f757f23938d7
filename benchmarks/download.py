#!/usr/bin/env python3
"""Download benchmark: rigkit's fetch_shards.py vs huggingface_hub's snapshot_download,
beside this machine's ceiling for the same bytes.

Both fetch the same generated shards from ``rigkit mirror`` on loopback, in one run, each
timed until its files are on disk (fetch_shards fsyncs each file before it places it, as on
a host; snapshot_download's files are fsynced after it returns, in its time). Two references,
measured in the same round: the ceiling, the mirror's files read (from the page cache, as the mirror
sends them) and sha256-ed, one thread per file on every CPU (``--parallel`` files at once),
which no fetcher that verifies can beat here; and, for what the disk takes, the same while
the bytes are also written into the work directory with direct I/O (the fetcher's buffers
and ranges, ``--parallel`` writers) and fsynced, no network. A fetcher can beat that one
where the page cache takes part of its writes (the bytes it lands ahead of its hash).
The baseline, when given, runs first in odd rounds and after rigkit's in even ones (a run
right after another's 2 GB were written and deleted finds the disk slower). Also a re-run
(verified files skipped without hashing) and a ``--reverify`` run (every file re-hashed).

    python benchmarks/download.py --total-gb 2 --shards 4 [--workdir /var/tmp/rigkit-bench]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rigkit.models import hub, lockfile, mirror  # noqa: E402
from rigkit.operations.models import manifest_for  # noqa: E402
from rigkit.scripts import fetch_shards  # noqa: E402
from rigkit.scripts.fetch_shards import hash_file  # noqa: E402

SCRIPT = ROOT / "rigkit" / "scripts" / "fetch_shards.py"
REPO = "bench/shards-GGUF"


def generate(root: Path, total: int, shards: int) -> None:
    d = root / REPO / "Q8"
    d.mkdir(parents=True, exist_ok=True)
    per = total // shards
    block = os.urandom(1 << 24)
    for i in range(1, shards + 1):
        p = d / f"bench-{i:05d}-of-{shards:05d}.gguf"
        if p.exists() and p.stat().st_size == per:
            continue
        with open(p, "wb") as f:
            left = per
            while left:
                # vary each block so files differ and nothing dedups
                chunk = hashlib.sha256(f"{i}-{left}".encode()).digest() + block[32 : min(len(block), left)]
                chunk = chunk[:left]
                f.write(chunk)
                left -= len(chunk)


def drop_dir(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def run_fetch(man: Path, extra=(), script: Path = SCRIPT) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fetch_shards run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(script), str(man), "--progress-interval", "3600", *extra],
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"fetch_shards failed: {r.stderr}")
    return dt, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def run_hf(url: str, dest: Path, workers: int) -> float:
    code = (
        "import sys, huggingface_hub as h;"
        f"h.snapshot_download({REPO!r}, local_dir={str(dest)!r}, endpoint={url!r}, max_workers={workers})"
    )
    env = dict(
        os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(dest.parent / "hf-home")
    )
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"snapshot_download failed: {r.stderr[-2000:]}")
    fsync_tree(dest)  # on disk, as fetch_shards leaves its files
    return time.perf_counter() - t


def ceiling(paths: list[Path], parallel: int) -> float:
    """Seconds to read and sha256 ``paths``, ``parallel`` files at once (hashlib lets go of the
    GIL, so the threads use every CPU)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as ex:
        list(ex.map(hash_file, paths))
    return time.perf_counter() - t


def land_ceiling(paths: list[Path], dest: Path, parallel: int) -> float:
    """Seconds to sha256 ``paths`` (as :func:`ceiling`) and, at the same time, write their bytes
    into ``dest`` and fsync them: ``parallel`` writers in ranges of the fetcher's size, with its
    buffers and direct I/O where the filesystem takes it (what the disk takes: a fetcher does
    both, at once)."""
    drop_dir(dest)
    dest.mkdir(parents=True)
    outs = {src: dest / src.name for src in paths}
    for out in outs.values():
        out.touch()
    step = fetch_shards.RANGE_BYTES
    pieces = [(src, a, min(a + step, src.stat().st_size)) for src in paths for a in range(0, src.stat().st_size, step)]

    def write(piece: tuple[Path, int, int]) -> None:
        src, a, b = piece
        buf = fetch_shards._buffer()
        rd = os.open(src, os.O_RDONLY)
        fd = os.open(outs[src], os.O_WRONLY)
        direct = fetch_shards.open_direct(str(outs[src]), os.O_WRONLY)
        try:
            pos = a
            while pos < b and (n := os.preadv(rd, [buf[: min(len(buf), b - pos)]], pos)):
                fetch_shards.write_at(fd, direct, buf[:n], pos)
                pos += n
        finally:
            for f in (rd, fd, direct):
                if f is not None:
                    os.close(f)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as hashers, ThreadPoolExecutor(max_workers=parallel) as writers:
        hashed = hashers.map(hash_file, paths)
        list(writers.map(write, pieces))
        list(writers.map(fsync_file, outs.values()))
        list(hashed)
    dt = time.perf_counter() - t
    drop_dir(dest)
    return dt


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fsync_file(p)


def sha256_rate(nbytes: int = 512 << 20) -> float:
    buf = os.urandom(1 << 20)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(nbytes >> 20):
        h.update(buf)
    return nbytes / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total-gb", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--hf-workers", type=int, default=8, help="snapshot_download max_workers (its default: 8)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rigkit-bench"))
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another fetch_shards.py (e.g. git show main:rigkit/scripts/fetch_shards.py) run in each round too",
    )
    ap.add_argument("--out", type=Path, help="also write the rounds (rounds.json) and their chart (download.png) here")
    ap.add_argument("--chart", type=Path, help="only draw the chart of a rounds.json that --out wrote, beside it")
    args = ap.parse_args()
    if args.chart:
        print(chart(json.loads(args.chart.read_text()), args.chart.with_name("download.png")))
        return 0

    work = Path(args.workdir)
    total = int(args.total_gb * 1e9)
    src = work / "mirror"
    t = time.perf_counter()
    generate(src, total, args.shards)
    gen_s = time.perf_counter() - t
    srv = mirror.serve(str(src))
    try:
        t = time.perf_counter()
        ref = hub.ModelRef(REPO, "main", ("Q8/*.gguf",), str(work / "rigkit-out"))
        res = hub.HubClient(srv.url).resolve(ref)  # mirror hashes once (index)
        index_s = time.perf_counter() - t
        entry = lockfile.LockEntry(
            ref.repo,
            ref.revision,
            ref.include,
            res.sha,
            tuple(lockfile.LockedFile(f.path, f.size, f.sha256) for f in res.files),
        )
        man = work / "manifest.json"
        m = manifest_for(ref, entry, endpoint=srv.url, parallel=args.parallel, margin_bytes=0)
        man.write_text(json.dumps(m))
        nbytes = entry.total_bytes

        sources = [src / REPO / f.path for f in entry.files]
        rows = []
        for rnd in range(args.rounds):
            top = ceiling(sources, args.parallel)
            landed = land_ceiling(sources, work / "land-out", args.parallel)
            r = {"ceiling": top, "with_direct_write": landed, "baseline": None, "baseline_cpu": None}
            if args.baseline and rnd % 2 == 0:  # the baseline first in every other round
                drop_dir(work / "rigkit-out")
                r["baseline"], r["baseline_cpu"] = run_fetch(man, script=args.baseline)
            drop_dir(work / "rigkit-out")
            r["rigkit"], r["rigkit_cpu"] = run_fetch(man)
            if args.baseline and rnd % 2:
                drop_dir(work / "rigkit-out")
                r["baseline"], r["baseline_cpu"] = run_fetch(man, script=args.baseline)
                drop_dir(work / "rigkit-out")
                run_fetch(man)  # what the re-runs below start from
            r["rerun"] = run_fetch(man)[0]  # verified files skipped without hashing
            r["reverify"] = run_fetch(man, ["--reverify"])[0]
            drop_dir(work / "hf-out")
            drop_dir(work / "hf-home")
            r["hf"] = run_hf(srv.url, work / "hf-out", args.hf_workers)
            rows.append(r)
            # byte-identical outputs
            for f in entry.files:
                a, b = work / "rigkit-out" / f.path, work / "hf-out" / f.path
                assert a.stat().st_size == b.stat().st_size == f.size
        rate = sha256_rate()
    finally:
        srv.stop()

    gb = nbytes / 1e9
    print(
        f"\n{args.shards} shards, {gb:.2f} GB from rigkit mirror on 127.0.0.1, {os.cpu_count()} CPUs; "
        f"generate {gen_s:.1f}s, mirror index (sha256 of all) {index_s:.1f}s\n"
    )
    print(
        "| round | ceiling: read + sha256 | + direct write, fsync (no network) | rigkit fetch_shards "
        "(fetch + sha256) | of ceiling | of + direct write | its CPU "
        "| huggingface_hub snapshot_download (no hash) | rigkit / hf speed | re-run (skip verified) "
        "| --reverify (re-hash all) |" + (" baseline fetch_shards | its CPU |" if args.baseline else "")
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.baseline else ""))
    for i, r in enumerate(rows, 1):
        top, landed, rk, hf, b = r["ceiling"], r["with_direct_write"], r["rigkit"], r["hf"], r["baseline"]
        print(
            f"| {i} | {top:.2f} s ({gb / top:.2f} GB/s) | {landed:.2f} s ({gb / landed:.2f} GB/s) "
            f"| {rk:.2f} s ({gb / rk:.2f} GB/s) | {100 * top / rk:.0f} % | {100 * landed / rk:.0f} % "
            f"| {r['rigkit_cpu']:.2f} s | {hf:.2f} s ({gb / hf:.2f} GB/s) | {hf / rk:.2f}x "
            f"| {r['rerun']:.2f} s | {r['reverify']:.2f} s |"
            + (f" {b:.2f} s ({gb / b:.2f} GB/s) | {r['baseline_cpu']:.2f} s |" if args.baseline else "")
        )
    best_rk = min(r["rigkit"] for r in rows)
    best_hf = min(r["hf"] for r in rows)
    best_top = min(r["ceiling"] for r in rows)
    best_land = min(r["with_direct_write"] for r in rows)
    print(
        f"\nbest: ceiling {gb / best_top:.2f} GB/s, + direct write {gb / best_land:.2f} GB/s, "
        f"rigkit {gb / best_rk:.2f} GB/s ({100 * best_top / best_rk:.0f} % of ceiling, "
        f"{100 * best_land / best_rk:.0f} % of + direct write), huggingface_hub {gb / best_hf:.2f} GB/s "
        f"(rigkit {best_hf / best_rk:.2f}x)"
    )
    print(f"sha256 on one core: {rate / 1e9:.2f} GB/s")
    if args.out:
        run = {
            "shards": args.shards,
            "gb": gb,
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
            "rounds": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rounds.json").write_text(json.dumps(run, indent=1) + "\n")
        print(chart(run, args.out / "download.png"))
    return 0


def chart(run: dict, png: Path) -> Path:
    """GB/s of every fetcher and both references, round by round (matplotlib, rigkit's bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("ceiling: read + sha256", "ceiling", "#999999"),
        ("+ direct write, fsync (no network)", "with_direct_write", "#cccccc"),
        ("rigkit fetch_shards", "rigkit", "#1f77b4"),
        ("baseline fetch_shards", "baseline", "#9ecae1"),
        ("huggingface_hub snapshot_download", "hf", "#ff7f0e"),
    ]
    series = [s for s in series if all(r.get(s[1]) for r in run["rounds"])]
    n = len(run["rounds"])
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for k, (label, key, color) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [run["gb"] / r[key] for r in run["rounds"]], width, label=label, color=color)
    first = ("baseline first", "rigkit first") if any(s[1] == "baseline" for s in series) else ("", "")
    ax.set_xticks(range(n), [f"round {i + 1}\n{first[i % 2]}" for i in range(n)])
    ax.set_ylabel("GB/s (a fetcher: until its files are on disk)")
    files = f"{run['shards']} shard" + ("s" if run["shards"] > 1 else "")
    ax.set_title(f"{run['gb']:.0f} GB in {files} from rigkit mirror on loopback, {run['cpus']} CPUs ({run['date']})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
