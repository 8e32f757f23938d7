#!/usr/bin/env python3
"""
rigkit's host-side tool for llama.cpp (stdlib only; uploaded to /opt/rigkit/bin).

    llama_host.py build    --root R --url URL --ref REF --flags-hash H [--targets T,..]
                           [--cache URL [--cache-token-file F]] -- -DFLAG=..
                           (with --cache: fetched and verified from the fleet's build cache
                           when another host built the same identity, else built and published)
    llama_host.py activate --root R --ref REF --flags-hash H
    llama_host.py rollback --root R
    llama_host.py prune    --root R --keep N
    llama_host.py verify   --manifest /etc/rigkit/llama/services.json [--rollback]
                           (check_service.py's checks; on failure back to the last verified state)
    llama_host.py status   (JSON: builds, services active/healthy, models)

Builds live in R/builds/<b{build}-{commit9}-{flags hash}>/ with bin/ and build.json;
R/current and R/previous are symlinks. A build is only moved into place once it compiled,
so a failed build leaves the running one untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

try:  # on the host: the sibling scripts in /opt/rigkit/bin; in the package: their modules
    import build_cache
    from check_service import check_all, model_bytes, request, router_models, service_key, unit_state
    from last_good import LastGood
except ImportError:
    from rigkit.scripts import build_cache
    from rigkit.scripts.check_service import (
        check_all,
        model_bytes,
        request,
        router_models,
        service_key,
        unit_state,
    )
    from rigkit.scripts.last_good import LastGood

CCACHE_DIR = "/var/cache/rigkit/ccache"


def log(message: str) -> None:
    print(f"[rigkit] {message}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"[rigkit] ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def read_build(path: Path) -> dict | None:
    try:
        return json.loads((path / "build.json").read_text())
    except (OSError, ValueError):
        return None


def matches(info: dict, ref: str, flags_hash: str) -> bool:
    return info["flags_hash"] == flags_hash and (info["ref"] == ref or info["commit"].startswith(ref))


def find_build(root: Path, ref: str, flags_hash: str) -> Path | None:
    for build_dir in sorted((root / "builds").glob("b*")):
        info = read_build(build_dir)
        if info and matches(info, ref, flags_hash):
            return build_dir
    return None


# --- build -------------------------------------------------------------------------------


def fetch(root: Path, url: str) -> Path:
    repo = root / "repo.git"
    if not (repo / "HEAD").exists():
        log(f"cloning {url} (full history: llama.cpp's build number is its commit count)")
        tmp = root / "repo.git.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        git("clone", "--quiet", "--mirror", url, str(tmp))
        tmp.rename(repo)
    else:
        git("remote", "set-url", "origin", url, cwd=repo)
        log(f"fetching {url}")
        git("fetch", "--quiet", "--prune", "--tags", "origin", "+refs/heads/*:refs/heads/*", cwd=repo)
    return repo


def history(root: Path, event: str) -> None:
    """One line per build decision in ROOT/builds.log: what a deploy built or found built."""
    with open(root / "builds.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {event}\n")


def fa_flags(ggml_cmake: str, flags: list[str]) -> list[str]:
    """GGML_CUDA_FA_ALL_QUANTS became GGML_CUDA_FA_QUANTS=all: use what the source knows
    (``ggml_cmake``: the commit's ggml/CMakeLists.txt)."""
    if "GGML_CUDA_FA_QUANTS" in ggml_cmake:
        return ["-DGGML_CUDA_FA_QUANTS=all" if f == "-DGGML_CUDA_FA_ALL_QUANTS=ON" else f for f in flags]
    return flags


#: Where the compiler is told the tree is (-ffile-prefix-map): __FILE__ in ggml's asserts and
#: the unity sources' #include lines named the build directory, so two builds of one commit
#: and flags under different roots differed in those bytes alone.
REPRODUCIBLE_TREE = "/rigkit/llama.cpp"


def reproducible_flags(tree: Path, flags: list[str]) -> list[str]:
    mapping = f"-ffile-prefix-map={tree}={REPRODUCIBLE_TREE}"
    extra = [f"-DCMAKE_C_FLAGS={mapping}", f"-DCMAKE_CXX_FLAGS={mapping}"]
    if "-DGGML_CUDA=ON" in flags:
        extra.append(f"-DCMAKE_CUDA_FLAGS=-Xcompiler={mapping}")
    return extra


PROGRESS_EVERY = 10.0  # seconds between two progress lines of one build
# "[ 45%] Building CXX object ..." (Unix Makefiles) or "[123/456] Building ..." (Ninja).
MAKE_PROGRESS = re.compile(r"\[\s*(\d{1,3})%\]")
NINJA_PROGRESS = re.compile(r"\[(\d+)/(\d+)\]")


def percent_of(line: str) -> int | None:
    if match := MAKE_PROGRESS.match(line):
        return int(match[1])
    if (match := NINJA_PROGRESS.match(line)) and int(match[2]):
        return 100 * int(match[1]) // int(match[2])
    return None


def run_logged(step: list[str], logf, env: dict, label: str, started: float, clock=time.monotonic) -> int:
    """Run a build step into its log; a progress line at most every PROGRESS_EVERY seconds
    (rigkit prints this tool's output at pyinfra's default verbosity, so a 5-minute compile
    shows where it is instead of nothing)."""
    logf.write(f"$ {' '.join(step)}\n")
    logf.flush()
    proc = subprocess.Popen(
        step, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
    )
    assert proc.stdout is not None
    shown_at, shown = float("-inf"), None  # the first percentage at once, then every PROGRESS_EVERY
    for line in proc.stdout:
        logf.write(line)
        percent = percent_of(line)
        now = clock()
        if percent is not None and percent != shown and now - shown_at >= PROGRESS_EVERY:
            log(f"{label}: {percent}% compiled ({now - started:.0f}s)")
            shown_at, shown = now, percent
    return proc.wait()


def build(args: argparse.Namespace) -> None:
    root = Path(args.root)
    (root / "builds").mkdir(parents=True, exist_ok=True)
    repo = fetch(root, args.url)
    resolved = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{args.ref}^{{commit}}"], cwd=repo, capture_output=True, text=True
    )
    if resolved.returncode != 0:
        fail(f"llama_cpp.ref {args.ref} is not a tag or commit of {args.url}")
    commit = resolved.stdout.strip()
    number = int(git("rev-list", "--count", commit, cwd=repo))
    key = f"b{number}-{commit[:9]}-{args.flags_hash}"
    final = root / "builds" / key
    if read_build(final):
        log(f"{key} is already built")
        history(root, f"{key} already built")
        return
    work = root / "builds" / f".{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    flags = fa_flags(git("show", f"{commit}:ggml/CMakeLists.txt", cwd=repo), args.flags)
    targets = args.targets.split(",")
    info = {
        "ref": args.ref,
        "commit": commit,
        "build": number,
        "url": args.url,
        "flags": flags,
        "flags_hash": args.flags_hash,
        "targets": targets,
    }
    claim = None
    if args.cache:
        ident = build_cache.identity(commit, flags, targets, build_cache.toolchain(cuda="-DGGML_CUDA=ON" in flags))
        try:
            token = Path(args.cache_token_file).read_text().strip() if args.cache_token_file else None
            cache = CachedBuild(args.cache, ident, f"llama.cpp b{number} ({commit[:9]})", root, key, token)
        except (build_cache.CacheError, OSError) as err:
            fail(f"--cache: {err}")
        started = time.monotonic()
        fetched, claim = cache.fetch_or_claim(work, info)
        if fetched is not None:
            seconds = round(time.monotonic() - started, 1)
            finish(work, final, {**info, "fetched": {"cache": args.cache, "key": cache.key, "built_by": fetched}})
            log(f"fetched {key} from the build cache in {seconds}s (sha256 verified)")
            history(
                root, f"{key} fetched from {args.cache} in {seconds}s (cache key {cache.key[:16]}, sha256 verified)"
            )
            return
    if claim is None:
        compile_build(root, repo, commit, number, key, work, final, info, args)
        return
    with build_cache.Renewer(cache.client, claim):
        try:
            compile_build(root, repo, commit, number, key, work, final, info, args)
        except BaseException:
            with contextlib.suppress(build_cache.CacheError):
                cache.client.release(claim)
            raise
    cache.publish(claim, final)


def finish(work: Path, final: Path, info: dict) -> None:
    """The build directory in place: build.json written last, then one rename."""
    for binary in (work / "bin").iterdir():
        binary.chmod(0o755)
    info = {
        **info,
        "built_at": info.get("built_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verified_at": None,
    }
    tmp = work / "build.json.new"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(work / "build.json")
    work.rename(final)


def compile_build(
    root: Path, repo: Path, commit: str, number: int, key: str, work: Path, final: Path, info: dict, args
) -> None:
    # Compiled at one path whatever the build key (builds take turns under the host lock): paths
    # end up in what ccache hashes (llama.cpp's unity sources #include absolute paths, __FILE__),
    # so a tree under the key's own directory would never hit objects compiled under another.
    tree = root / "builds" / ".tree"
    shutil.rmtree(tree, ignore_errors=True)
    src = tree / "src"
    git("clone", "--quiet", "--shared", "--no-checkout", str(repo), str(src))
    git("-c", "advice.detachedHead=false", "checkout", "--quiet", commit, cwd=src)
    flags = info["flags"]
    # ccache hashes the locale (LANG, LC_ALL, LC_CTYPE, LC_MESSAGES): a build run by pyinfra (no
    # LANG) and one from a shell over ssh (LANG sent along) never shared an object. One locale.
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE") and not k.startswith("LC_")}
    env.update(CCACHE_DIR=CCACHE_DIR, CCACHE_BASEDIR=str(tree), CCACHE_NOHASHDIR="1", LC_ALL="C")
    jobs = args.jobs or os.cpu_count() or 2
    configure = [
        "cmake",
        "-S",
        str(src),
        "-B",
        str(tree / "build"),
        "-DCMAKE_BUILD_TYPE=Release",
        *reproducible_flags(tree, flags),
        *flags,
    ]
    label = f"llama.cpp b{number} ({commit[:9]})"
    log(f"building {label} with {' '.join(flags)}; log: {work}/build.log")
    started = time.monotonic()
    with open(work / "build.log", "w") as logf:
        for step in (
            configure,
            ["cmake", "--build", str(tree / "build"), "-j", str(jobs), "--target", *info["targets"]],
        ):
            if run_logged(step, logf, env, label, started) != 0:
                logf.close()
                tail = (work / "build.log").read_text().splitlines()[-40:]
                failed = root / "builds" / f".{key}.failed.log"
                shutil.copy(work / "build.log", failed)
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(tree, ignore_errors=True)
                fail(
                    f"{label} did not build; the running build is "
                    f"untouched. Full log: {failed}. Last lines:\n" + "\n".join(tail)
                )
    (work / "bin").mkdir()
    for target in info["targets"]:
        shutil.copy2(tree / "build/bin" / target, work / "bin" / target)
    seconds = round(time.monotonic() - started, 1)
    shutil.rmtree(tree)
    finish(work, final, {**info, "build_seconds": seconds, "built_by": socket.gethostname()})
    log(f"built {key} in {seconds}s")
    history(root, f"{key} built in {seconds}s")


def clear(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)


class CachedBuild:
    """This build's entry in the fleet's build cache: fetched and verified when another host
    built it, else claimed (this host compiles it and publishes), waiting while another host
    holds the claim. A cache that fails in any way leaves the host to compile."""

    WAIT_LIMIT = 3 * 3600.0  # a claimant renews while it compiles; one that died frees the key

    def __init__(self, url: str, ident: dict, label: str, root: Path, build_key: str, token: str | None = None):
        self.url, self.ident, self.label = url, ident, label
        self.root, self.build_key = root, build_key
        self.key = build_cache.key_of(ident)
        self.client = build_cache.Client(url, self.key, token=token)

    def fetch_or_claim(self, work: Path, info: dict) -> tuple[str | None, str | None]:
        """(who built it, None) when fetched into ``work``; (None, claim) when this host builds
        and publishes; (None, None) when it builds without the cache."""
        holder = f"{socket.gethostname()} pid {os.getpid()}"[:120]
        deadline, noted = time.monotonic() + self.WAIT_LIMIT, 0.0
        try:
            while True:
                try:
                    manifest = self.client.manifest()
                    if manifest is not None:
                        return self._fetch(manifest, work, info), None
                except build_cache.EntryRefused as err:
                    return None, self._refused(work, err, holder)
                state, claim, age = self.client.claim(holder)
                if state == "claimed":
                    log(f"{self.label}: not in the build cache; building it here for the fleet")
                    return None, claim
                if state == "held":
                    if time.monotonic() > deadline:
                        log(f"{self.label}: {claim} has been building it for too long; building here")
                        return None, None
                    if time.monotonic() - noted >= PROGRESS_EVERY:
                        log(f"{self.label}: waiting for {claim}, which is building it ({age:.0f}s so far)")
                        noted = time.monotonic()
                    time.sleep(2)
        except build_cache.CacheError as err:
            clear(work)
            log(f"{self.label}: the build cache cannot be used ({err}); building here")
            return None, None

    def _refused(self, work: Path, err: Exception, holder: str) -> str | None:
        """Nothing of a refused entry kept; the server asked to hash it again (it moves a bad
        entry aside) and this host's build claimed to take its place."""
        clear(work)
        log(f"{self.label}: REFUSED the build cache's copy ({err}); compiling here instead")
        history(self.root, f"{self.build_key} cache entry refused: {err}")
        try:
            self.client.check()
            state, claim, _ = self.client.claim(holder)
        except build_cache.CacheError:
            return None
        return claim if state == "claimed" else None

    def _fetch(self, manifest: dict, work: Path, info: dict) -> str:
        self.client.fetch(manifest, work)
        try:
            cached = json.loads((work / "build.json").read_text())
        except ValueError:
            raise build_cache.CacheError("build.json: not JSON") from None
        if not isinstance(cached, dict) or any(
            cached.get(k) != info[k] for k in ("commit", "build", "flags", "targets")
        ):
            raise build_cache.CacheError("build.json: not this commit, build number, flags and targets")
        by = cached.get("built_by")
        return by if isinstance(by, str) and len(by) <= 120 else "another host"

    def publish(self, claim: str, final: Path) -> None:
        try:
            self.client.publish(claim, final, build_cache.manifest_of(final, self.key, self.ident))
        except build_cache.CacheError as err:
            log(f"{self.label}: built here, but publishing to the build cache failed ({err})")
            with contextlib.suppress(build_cache.CacheError):
                self.client.release(claim)
            return
        log(f"published {self.build_key} to the build cache {self.url}")
        history(self.root, f"{self.build_key} published to {self.url} (cache key {self.key[:16]})")


# --- switching ---------------------------------------------------------------------------


def point(link: Path, target: Path | str) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.rename(link)  # atomic: the link is never missing


def activate(args: argparse.Namespace) -> None:
    root = Path(args.root)
    build_dir = find_build(root, args.ref, args.flags_hash)
    if build_dir is None:
        fail(f"no finished build of {args.ref} with flags {args.flags_hash} in {root}/builds")
    current = root / "current"
    target = Path("builds") / build_dir.name
    if current.is_symlink() and Path(os.readlink(current)) == target:
        log(f"current is already {build_dir.name}")
        return
    if current.is_symlink():
        point(root / "previous", os.readlink(current))
    point(current, target)
    log(f"current -> {build_dir.name}")


def rollback(args: argparse.Namespace) -> None:
    root = Path(args.root)
    current, previous = root / "current", root / "previous"
    if not previous.is_symlink():
        # Nothing older to go back to: the current build stays (and is verified again).
        log(f"no previous build in {root}: the current one stays")
        return
    old_current = os.readlink(current) if current.is_symlink() else None
    point(current, os.readlink(previous))
    if old_current:
        point(previous, old_current)
    log(f"rolled back: current -> {os.readlink(current)}")


def prune(args: argparse.Namespace) -> None:
    root = Path(args.root)
    keep = {Path(os.readlink(root / n)).name for n in ("current", "previous") if (root / n).is_symlink()}
    infos = {b: info for b in (root / "builds").glob("b*") if (info := read_build(b))}
    builds = sorted(infos, key=lambda b: infos[b]["built_at"], reverse=True)
    kept = 0
    for build_dir in builds:
        if build_dir.name in keep or kept < args.keep - len(keep):
            kept += build_dir.name not in keep
            continue
        log(f"pruning {build_dir.name}")
        shutil.rmtree(build_dir)


# --- verification and the last good state ----------------------------------------------
# After every verified deploy the units, key files and build that served are recorded as
# llama.cpp's last good state (rigkit/scripts/last_good.py: its own directory, beside the
# other engines'); a failed verification puts all of them back together, restarts and
# verifies again.

GOOD = LastGood("llama.cpp")
UNIT_DIR = Path("/etc/systemd/system")
#: Where router presets live (rigkit.host_paths: key_dir("llama"), named <service>.<sha16>.ini).
PRESET_DIR = Path("/etc/rigkit/llama")
PRESET_NAME = re.compile(r"[A-Za-z0-9_.-]+\.[0-9a-f]{16}\.ini")


def mark_verified(root: Path) -> None:
    current = root / "current"
    info = read_build(current)
    if info is not None:
        info["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = current / "build.json.new"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.rename(current / "build.json")


def save_good(manifest: dict, root: Path) -> None:
    """Record what serves now (verified) as the state to return to."""
    GOOD.save(manifest, build=os.readlink(root / "current") if (root / "current").is_symlink() else None)


def prune_presets() -> list[str]:
    """Router presets that neither an installed unit nor a last verified one names, removed.
    Each change of a router's models writes its preset beside the old one (the unit names it
    by content, so a rollback finds the old one); once a deploy is verified and saved, only
    the presets of the units now installed can be rolled back to."""
    named: set[str] = set()
    path = re.compile(re.escape(str(PRESET_DIR)) + r"/([A-Za-z0-9_.-]+?\.[0-9a-f]{16}\.ini)")
    for unit in [*UNIT_DIR.glob("rigkit-*.service"), *(GOOD.link / "units").glob("rigkit-*.service")]:
        try:
            named |= set(path.findall(unit.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    removed = []
    for preset in sorted(PRESET_DIR.glob("*.ini")):
        if PRESET_NAME.fullmatch(preset.name) and preset.name not in named and preset.is_file():
            preset.unlink()
            removed.append(preset.name)
    return removed


def restore_good(manifest: dict, root: Path) -> dict | None:
    """Put back the last good units, keys and build; the manifest that served then, or None."""
    good = GOOD.restore(manifest)
    if good is None:
        return None
    current = root / "current"
    if good.get("build") and (not current.is_symlink() or os.readlink(current) != good["build"]):
        if current.is_symlink():
            point(root / "previous", os.readlink(current))
        point(current, good["build"])
    return good["manifest"]


def verify(args: argparse.Namespace) -> None:
    manifest = json.loads(Path(args.manifest).read_text())
    root = Path(manifest["llama_root"])
    problems = check_all(manifest["services"])
    if not problems:
        mark_verified(root)
        save_good(manifest, root)
        removed = prune_presets()
        if removed:
            log(f"removed router presets no unit names: {', '.join(removed)}")
        return
    report = "\n".join(problems)
    if not args.rollback:
        fail("verification failed:\n" + report)
    old = restore_good(manifest, root)
    if old is None:
        fail("verification failed (no verified state on this host to roll back to):\n" + report)
    log("verification failed; rolled back to the last verified units, keys and build")
    units = [s["unit"] for s in old["services"]]
    subprocess.run(["systemctl", "restart", *units], check=False)
    again = check_all(old["services"])
    state = (
        "the previous build is serving and verified, with the last verified units and keys"
        if not again
        else "the last verified state ALSO fails:\n" + "\n".join(again)
    )
    if not again:
        mark_verified(root)
    fail(f"verification of the new deploy failed and it was rolled back; {state}.\nWhat failed:\n{report}")


def status(args: argparse.Namespace) -> None:
    """What is on this host, as JSON: builds, the last verified state, services (active,
    healthy, unit hash, watchdog), models in place, rigkit units the manifest does not name."""
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"services": []}
    root = Path(manifest.get("llama_root", args.root))
    good = GOOD.state()
    last_good = (
        {"build": Path(good["build"]).name if good.get("build") else None, "at": GOOD.verified_at()}
        if good is not None
        else None
    )
    report: dict = {
        "current": read_build(root / "current"),
        "previous": read_build(root / "previous"),
        "builds": sorted(b.name for b in (root / "builds").glob("b*") if read_build(b)),
        "last_verified": last_good,
        "services": [],
    }
    declared = {svc["unit"] for svc in manifest["services"]}
    report["orphans"] = sorted(
        p.name
        for p in UNIT_DIR.glob("rigkit-*-*.service")
        if not p.name.startswith("rigkit-watchdog-") and p.name not in declared
    )
    for svc in manifest["services"]:
        active = unit_state(svc["unit"]).get("ActiveState", "unknown")
        health, _ = request(f"http://127.0.0.1:{svc['port']}/health", None, timeout=3)
        model = Path(svc["model"])
        unit_file = UNIT_DIR / svc["unit"]
        try:
            watchdog = json.loads((Path("/var/lib/rigkit/watchdog") / f"{svc['name']}.json").read_text())
        except (OSError, ValueError):
            watchdog = None
        timer = unit_state(f"rigkit-watchdog-{svc['name']}.timer").get("ActiveState", "unknown")
        report["services"].append(
            {
                "name": svc["name"],
                "unit": svc["unit"],
                "port": svc["port"],
                "active": active,
                # Its own unit active and the port answering: an orphan on the port is not this service.
                "healthy": active == "active" and health == 200,
                "model": svc["model"],
                "model_present": model.exists(),
                "model_bytes": model_bytes(svc["model"]),
                "unit_sha256": hashlib.sha256(unit_file.read_bytes()).hexdigest() if unit_file.exists() else None,
                "watchdog": {"timer": timer, **(watchdog or {})},
                # A router's models: each one's state (loaded, unloaded, sleeping, ...).
                **({"models": router_state(svc)} if svc.get("models") else {}),
            }
        )
    print(json.dumps(report))


def router_state(svc: dict) -> list[dict]:
    """Each model of a router service: its id, state (the router's ``GET /models``; None when
    the router does not answer) and whether its file is there."""
    try:
        key = service_key(svc)
    except OSError:
        key = None
    states = router_models(f"http://127.0.0.1:{svc['port']}", key, timeout=3) or {}
    return [
        {"id": m["model_id"], "state": states.get(m["model_id"]), "present": Path(m["model"]).exists()}
        for m in svc["models"]
    ]


# --- the host lock ------------------------------------------------------------------------
# Everything that builds, switches, restarts or verifies holds it, so two deploys at once
# take turns (the second finds the build done) instead of deleting each other's work.

LOCK = Path("/run/rigkit/host.lock")


@contextlib.contextmanager
def host_lock(what: str, wait: float):
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    holder_file = LOCK.with_suffix(".holder")
    with open(LOCK, "a+") as lock:
        deadline, next_note = time.monotonic() + wait, 0.0
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                try:
                    holder = holder_file.read_text().strip()
                except OSError:
                    holder = "unknown"
                if time.monotonic() >= deadline:
                    fail(
                        f"another rigkit deploy holds this host's lock ({holder}); waited {wait:.0f}s. "
                        f"Run again when it is done.",
                        code=75,
                    )
                if time.monotonic() >= next_note:
                    log(f"waiting for the host lock held by {holder}")
                    next_note = time.monotonic() + 30
                time.sleep(0.5)
        client = (os.environ.get("SSH_CLIENT") or "local").split()[0]
        holder_file.write_text(
            f"{what}, pid {os.getpid()}, from {client}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        try:
            yield
        finally:
            holder_file.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--lock-wait", type=float, default=3600, help="seconds to wait for another deploy's host lock (0: fail at once)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("--root", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--flags-hash", required=True)
    p.add_argument("--targets", default="llama-server")
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--cache", help="the fleet's build cache (rigkit cache serve), e.g. http://10.0.0.2:8093")
    p.add_argument("--cache-token-file", help="the file holding the cache's publish token")
    p.add_argument("flags", nargs="*")
    p = sub.add_parser("activate")
    p.add_argument("--root", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--flags-hash", required=True)
    p = sub.add_parser("rollback")
    p.add_argument("--root", required=True)
    p = sub.add_parser("prune")
    p.add_argument("--root", required=True)
    p.add_argument("--keep", type=int, default=3)
    p = sub.add_parser("verify")
    p.add_argument("--manifest", required=True)
    p.add_argument("--rollback", action="store_true")
    p = sub.add_parser("status")
    p.add_argument("--root", default="/opt/rigkit/llama.cpp")
    p.add_argument("--manifest", default="/etc/rigkit/llama/services.json")
    args = parser.parse_args()
    command = {
        "build": build,
        "activate": activate,
        "rollback": rollback,
        "prune": prune,
        "verify": verify,
        "status": status,
    }[args.cmd]
    if args.cmd == "status":  # reads only
        return command(args)
    with host_lock(args.cmd, args.lock_wait):
        command(args)


if __name__ == "__main__":
    main()
