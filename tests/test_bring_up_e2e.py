"""
A bare box's bring-up overlaps its two long waits (issue 27), on a real sandbox host: the
model's download, from a throttled Hub mirror (a home line; the Hub is a stand-in here:
rigkit's own mirror over the Hub's download API), runs on the host in the background (a
transient unit) while the deploy installs the build packages and compiles llama.cpp; the
serve step waits for it before any unit or build switch, then the service is verified.

The mirror's throttle is lifted only once the host's build has finished, so the download
outlasts the build whatever this machine's speed (the shared ccache keeps the compile short
here; benchmarks/bring_up.py measures the wall times against the serial ones).

Then a new build and a new model at once, the mirror's copy of the model changed since it
was locked (the pinned commit is gone: a 404): the build is done beside the current one and
the download fails, so nothing is switched: the old build, unit and model keep serving. With the mirror mended, the next run switches both
without compiling again.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import shutil
import textwrap
import threading
import time
import urllib.request

import pytest
from pyinfra_run import run_pyinfra, ssh

from rigkit import sandbox
from rigkit.models import lock_command, lockfile, mirror
from rigkit.models.hub import ModelRef
from rigkit.operations.models import manifest_path

pytestmark = pytest.mark.e2e

BARE = "sandbox-3"
REPO, NEXT_REPO = "rigkit-test/tiny-qwen-bring-up", "rigkit-test/tiny-qwen-next"
DEST, NEXT_DEST = "/srv/models/tiny-bring-up", "/srv/models/tiny-next"
ROOT = "/opt/rigkit/llama.cpp"
UNIT = "/etc/systemd/system/rigkit-llama-tiny.service"
SLOW = 16_000  # bytes/s until the build is done: 25 MB would take half an hour
VERIFY = "Serve llama.cpp | Verify services (health, chat, tool-call replay)"
NEXT_FLAGS = ["-DCMAKE_BUILD_TYPE=Release"]  # what the build passes anyway: a new key, the same compile


def inventory_text(endpoint: str, lock: str, next_model: bool) -> str:
    model, repo, dest = ("tiny2", NEXT_REPO, NEXT_DEST) if next_model else ("tiny", REPO, DEST)
    flags = NEXT_FLAGS if next_model else []
    return textwrap.dedent(f"""
        from rigkit.sandbox import pyinfra_hosts

        def rig_data(data):
            return {{
                "model_lock": {lock!r},
                "hf_endpoint": {endpoint!r},
                "hf_insecure_http": True,  # the test's mirror: plain http, no token
                "gpus": {{"count": 0}},
                "llama_cpp": {{"ref": "b11312", "git_url": data["sandbox_git_url"] + "/llama.cpp.git",
                               "cuda": False, "cmake_flags": {flags!r}}},
                "models": [{{"name": {model!r}, "repo": {repo!r}, "revision": "main", "include": ["*.gguf"],
                             "dest": {dest!r}}}],
                "services": [{{"name": "tiny", "model": "ref:{model}", "host": "0.0.0.0",
                               "allow_unauthenticated": True, "port": 8000, "ctx": 2048, "parallel": 2,
                               "n_gpu_layers": 0, "extra_args": ["--no-warmup"]}}],
            }}

        hosts = [(name, {{**data, **rig_data(data)}}) for name, data in pyinfra_hosts()]
    """)


@pytest.fixture(scope="module")
def bare(sandbox_hosts, tmp_path_factory):
    """A freshly booted host, the model in a throttled mirror on the sandbox bridge, both
    inventories (the first deploy's, the next change's) locked against it."""
    tmp = tmp_path_factory.mktemp("bring-up")
    tiny = sandbox.cache_dir() / "models" / "tiny-qwen"
    for repo in (REPO, NEXT_REPO):
        shutil.copytree(tiny, tmp / "hub" / repo)
    sb = sandbox.up(hosts=3)
    host = next(h for h in sb.hosts if h.name == BARE)
    srv = mirror.serve(str(tmp / "hub"), host=sb.gateway, port=0)
    try:
        assert ssh(sb, host, f"test -e {ROOT} || test -e {DEST} || echo bare") == "bare"
        inventories = {}
        for next_model in (False, True):
            inv = tmp / f"{'next' if next_model else 'first'}.py"
            lock = tmp / f"{inv.stem}.lock.yaml"
            inv.write_text(inventory_text(srv.url, str(lock), next_model))
            entries = lock_command.lock_refs(lock_command.collect_model_refs(inv), endpoint=srv.url, log=lambda _: None)
            lockfile.dump(entries, lock, inventory=str(inv))
            inventories[next_model] = str(inv)
        yield sb, host, srv, inventories, tmp
    finally:
        srv.stop()
        sandbox.up(hosts=2)  # the session's two hosts again, for the modules after this one


def host_time(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def download_interval(sb, host, ref: ModelRef) -> tuple[float, float]:
    """When the host's background download of ``ref`` started and ended (its log's first line
    and its summary's seconds)."""
    log = manifest_path(ref).removesuffix(".json") + ".log"
    lines = ssh(sb, host, f"cat {log}").splitlines()
    started = host_time(re.search(r"download started at (\S+) in rigkit-fetch-", lines[0]).group(1))
    summary = json.loads(lines[-1])
    assert summary["ok"] is True, lines
    return started, started + summary["seconds"]


def build_interval(sb, host) -> tuple[float, float, str]:
    """The one compile in the host's builds.log: (start, end, key)."""
    (line,) = [x for x in ssh(sb, host, f"cat {ROOT}/builds.log").splitlines() if " built in " in x]
    stamp, key, seconds = re.fullmatch(r"(\S+) (\S+) built in ([\d.]+)s", line).groups()
    return host_time(stamp) - float(seconds), host_time(stamp), key


@pytest.fixture(scope="module")
def first(bare):
    """The first deploy of the bare host, its mirror slow until the build is done."""
    sb, host, srv, inventories, _ = bare
    srv.rate_limit = SLOW
    done = threading.Event()

    def lift_after_the_build():
        while not done.wait(2):
            if " built in " in ssh(sb, host, f"cat {ROOT}/builds.log 2>/dev/null || true"):
                time.sleep(5)  # the download is still going on after the build
                srv.rate_limit = None
                return

    lifter = threading.Thread(target=lift_after_the_build, daemon=True)
    lifter.start()
    started = time.monotonic()
    try:
        run = run_pyinfra(inventories[False], "deploys/rig.py", "--limit", BARE)
    finally:
        done.set()
        srv.rate_limit = None
    wall = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-5000:]
    return run, wall


def test_a_bare_box_downloads_while_it_builds_then_serves(bare, first):
    sb, host, srv, inventories, _ = bare
    run, wall = first
    ref = ModelRef(REPO, "main", ("*.gguf",), DEST)
    fetch_start, fetch_end = download_interval(sb, host, ref)
    build_start, build_end, _ = build_interval(sb, host)
    # The build ran while the model downloaded (one-second stamps on the host's clock).
    assert fetch_start <= build_start + 1 and build_end <= fetch_end + 1, (fetch_start, build_start, build_end)
    # Nothing was switched before the download was done: the unit was written after it.
    assert float(ssh(sb, host, f"stat -c %Y {UNIT}")) >= fetch_end - 1
    order = [op["name"] for op in run.results["operations"]]
    steps = [
        next(i for i, name in enumerate(order) if name.startswith(prefix))
        for prefix in (
            "Models | Model tiny (",
            "Build llama.cpp | Build llama.cpp b11312",
            "Wait for model tiny",
            "Serve llama.cpp | Unit rigkit-llama-tiny",
        )
    ]
    assert steps == sorted(steps), order
    assert set(run.changed[VERIFY]) == {BARE}
    hub = bare[4] / "hub" / REPO
    want = {f"{DEST}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(hub.iterdir())}
    sums = ssh(sb, host, f"cd / && sha256sum {' '.join(sorted(want))}")
    assert dict(reversed(line.split()) for line in sums.splitlines()) == want
    assert ssh(sb, host, "systemctl is-active rigkit-llama-tiny") == "active"
    assert ssh(sb, host, "systemctl list-units --all --no-legend 'rigkit-fetch-*' | wc -l") == "0"
    # The download's lines, shown by the wait: its start, its files, its summary.
    shown = [line for line in run.stderr.splitlines() if line.startswith(f"[{BARE}] ")]
    assert any("in the background (rigkit-fetch-" in line for line in shown), shown
    assert any(re.search(rf"done: {REPO}: 2 file\(s\), 0 already verified, 2 downloaded", x) for x in shown), shown
    print(
        f"\nfirst deploy {wall:.0f} s: the download {fetch_end - fetch_start:.0f} s, the build "
        f"{build_end - build_start:.0f} s from {build_start - fetch_start:.0f} s after the download began"
    )

    again = run_pyinfra(inventories[False], "deploys/rig.py", "--limit", BARE)
    assert again.returncode == 0 and again.changed == {}, again.changed


def test_a_failed_download_beside_a_new_build_switches_nothing(bare, first):
    sb, host, srv, inventories, tmp = bare
    served = ssh(sb, host, f"readlink {ROOT}/current")
    unit = ssh(sb, host, f"sha256sum {UNIT}")
    pid = ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny")
    shard = tmp / "hub" / NEXT_REPO / "tiny-qwen-00001-of-00002.gguf"
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # the mirror no longer has the locked commit
    try:
        failed = run_pyinfra(inventories[True], "deploys/rig.py", "--limit", BARE)
    finally:
        shard.write_bytes(good)
    assert failed.returncode != 0
    # The deploy stopped at the wait, the download's error shown (pyinfra writes no results then).
    waited = failed.stderr.split("--> Starting operation: Wait for model tiny2", 1)
    assert len(waited) == 2 and "Starting operation: Serve" not in waited[1], failed.stderr[-5000:]
    assert re.search(r'\{"ok": false, "exit": 5, "error": "HTTP 404 for ', waited[1]), failed.stderr[-5000:]
    # The new build was done meanwhile, beside the current one; nothing was switched.
    log = ssh(sb, host, f"cat {ROOT}/builds.log").splitlines()
    assert sum(" built in " in line for line in log) == 2, log
    assert ssh(sb, host, f"readlink {ROOT}/current") == served
    assert ssh(sb, host, f"sha256sum {UNIT}") == unit
    assert ssh(sb, host, "systemctl show -p MainPID --value rigkit-llama-tiny") == pid
    health = urllib.request.urlopen(f"http://{host.address}:8000/health", timeout=10)
    assert health.status == 200
    assert ssh(sb, host, f"test -e {NEXT_DEST}/tiny-qwen-00001-of-00002.gguf || echo absent") == "absent"

    mended = run_pyinfra(inventories[True], "deploys/rig.py", "--limit", BARE)
    assert mended.returncode == 0, mended.stderr[-5000:]
    log_after = ssh(sb, host, f"cat {ROOT}/builds.log").splitlines()
    assert sum(" built in " in line for line in log_after) == 2, log_after  # found built, not compiled
    assert ssh(sb, host, f"readlink {ROOT}/current") != served
    assert f"-m {NEXT_DEST}/tiny-qwen-00001-of-00002.gguf" in ssh(sb, host, f"cat {UNIT}")
    assert set(mended.changed[VERIFY]) == {BARE}
