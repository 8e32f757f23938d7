#!/usr/bin/env python3
"""
rigkit's host-side tool for llama.cpp (stdlib only; uploaded to /opt/rigkit/bin).

    llama_host.py build    --root R --url URL --ref REF --flags-hash H [--targets T,..] -- -DFLAG=..
    llama_host.py activate --root R --ref REF --flags-hash H
    llama_host.py rollback --root R
    llama_host.py prune    --root R --keep N
    llama_host.py verify   --manifest /etc/rigkit/llama/services.json [--rollback]
    llama_host.py status   (JSON: builds, services active/healthy, models)

Builds live in R/builds/<b{build}-{commit9}-{flags hash}>/ with bin/ and build.json;
R/current and R/previous are symlinks. A build is only moved into place once it compiled,
so a failed build leaves the running one untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CCACHE_DIR = "/var/cache/rigkit/ccache"


def log(message: str) -> None:
    print(f"[rigkit] {message}", flush=True)


def fail(message: str, code: int = 1) -> "None":
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


def fa_flags(src: Path, flags: list[str]) -> list[str]:
    """GGML_CUDA_FA_ALL_QUANTS became GGML_CUDA_FA_QUANTS=all: use what the source knows."""
    ggml = (src / "ggml/CMakeLists.txt").read_text()
    if "GGML_CUDA_FA_QUANTS" in ggml:
        return ["-DGGML_CUDA_FA_QUANTS=all" if f == "-DGGML_CUDA_FA_ALL_QUANTS=ON" else f for f in flags]
    return flags


def build(args: argparse.Namespace) -> None:
    root = Path(args.root)
    (root / "builds").mkdir(parents=True, exist_ok=True)
    repo = fetch(root, args.url)
    resolved = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.ref}^{{commit}}"],
                              cwd=repo, capture_output=True, text=True)
    if resolved.returncode != 0:
        fail(f"llama_cpp.ref {args.ref} is not a tag or commit of {args.url}")
    commit = resolved.stdout.strip()
    number = int(git("rev-list", "--count", commit, cwd=repo))
    key = f"b{number}-{commit[:9]}-{args.flags_hash}"
    final = root / "builds" / key
    if read_build(final):
        log(f"{key} is already built")
        return
    work = root / "builds" / f".{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "src"
    git("clone", "--quiet", "--shared", "--no-checkout", str(repo), str(src))
    git("-c", "advice.detachedHead=false", "checkout", "--quiet", commit, cwd=src)
    flags = fa_flags(src, args.flags)
    env = dict(os.environ, CCACHE_DIR=CCACHE_DIR, CCACHE_BASEDIR=str(root / "builds"),
               CCACHE_NOHASHDIR="1")
    jobs = args.jobs or os.cpu_count() or 2
    configure = ["cmake", "-S", str(src), "-B", str(work / "build"), "-DCMAKE_BUILD_TYPE=Release",
                 *flags]
    log(f"building llama.cpp b{number} ({commit[:9]}) with {' '.join(flags)}; log: {work}/build.log")
    started = time.monotonic()
    with open(work / "build.log", "w") as logf:
        for step in (configure, ["cmake", "--build", str(work / "build"), "-j", str(jobs),
                                 "--target", *args.targets.split(",")]):
            logf.write(f"$ {' '.join(step)}\n")
            logf.flush()
            if subprocess.run(step, stdout=logf, stderr=subprocess.STDOUT, env=env).returncode != 0:
                tail = (work / "build.log").read_text().splitlines()[-40:]
                failed = root / "builds" / f".{key}.failed.log"
                shutil.copy(work / "build.log", failed)
                shutil.rmtree(work, ignore_errors=True)
                fail(f"llama.cpp b{number} ({commit[:9]}) did not build; the running build is "
                     f"untouched. Full log: {failed}. Last lines:\n" + "\n".join(tail))
    (work / "bin").mkdir()
    for target in args.targets.split(","):
        shutil.copy2(work / "build/bin" / target, work / "bin" / target)
    info = {
        "ref": args.ref, "commit": commit, "build": number, "url": args.url,
        "flags": flags, "flags_hash": args.flags_hash, "targets": args.targets.split(","),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1), "verified_at": None,
    }
    shutil.rmtree(work / "build")
    shutil.rmtree(src)
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    work.rename(final)
    log(f"built {key} in {info['build_seconds']}s")


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
        fail(f"no previous build in {root} to roll back to")
    old_current = os.readlink(current) if current.is_symlink() else None
    point(current, os.readlink(previous))
    if old_current:
        point(previous, old_current)
    log(f"rolled back: current -> {os.readlink(current)}")


def prune(args: argparse.Namespace) -> None:
    root = Path(args.root)
    keep = {Path(os.readlink(root / n)).name for n in ("current", "previous") if (root / n).is_symlink()}
    infos = {b: read_build(b) for b in (root / "builds").glob("b*")}
    builds = sorted((b for b, info in infos.items() if info), key=lambda b: infos[b]["built_at"], reverse=True)
    kept = 0
    for build_dir in builds:
        if build_dir.name in keep or kept < args.keep - len(keep):
            kept += build_dir.name not in keep
            continue
        log(f"pruning {build_dir.name}")
        shutil.rmtree(build_dir)


# --- verification ------------------------------------------------------------------------

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]
# Seed 001: b7991 crashed rendering exactly this (arguments as a JSON *string*).
TOOL_REPLAY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature_c\": 18, \"sky\": \"sunny\"}"},
]


def request(url: str, key: str | None, body: dict | None = None, timeout: float = 600) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)


def model_bytes(first_shard: str) -> int:
    path = Path(first_shard)
    stem = path.name.split("-00001-of-")[0] if "-00001-of-" in path.name else None
    shards = list(path.parent.glob(f"{stem}-*-of-*.gguf")) if stem else [path]
    return sum(p.stat().st_size for p in shards if p.exists())


def unit_state(unit: str) -> dict:
    out = subprocess.run(["systemctl", "show", "-p", "ActiveState,SubState,NRestarts", unit],
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def verify_service(svc: dict) -> str | None:
    """None when the service is healthy and answers; else what went wrong."""
    key = Path(svc["key_file"]).read_text().strip() if svc.get("key_file") else None
    base = f"http://127.0.0.1:{svc['port']}"
    # Loading reads the whole model: allow 60 s plus 15 s per GB (slow disks, 100 GB models).
    timeout = 60 + 15 * model_bytes(svc["model"]) / 1e9
    deadline = time.monotonic() + timeout
    status, body = 0, ""
    restarts = unit_state(svc["unit"])["NRestarts"]
    while time.monotonic() < deadline:
        state = unit_state(svc["unit"])
        # Restart=on-failure turns a crash into "activating (auto-restart)": catch it at once.
        if state["SubState"] in ("failed", "dead", "auto-restart") or state["NRestarts"] != restarts:
            return f"{svc['unit']} did not stay up ({state['ActiveState']}/{state['SubState']})"
        status, body = request(f"{base}/health", None, timeout=5)
        if status == 200:
            break
        time.sleep(0.5)  # 503 while the model loads
    else:
        return f"/health did not turn 200 within {timeout:.0f}s (last: {status} {body[:200]})"
    status, body = request(f"{base}/v1/chat/completions", key, {
        "model": svc["model_id"], "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]})
    if status != 200:
        return f"chat completion returned {status}: {body[:300]}"
    if "choices" not in json.loads(body):
        return f"chat completion without choices: {body[:300]}"
    status, body = request(f"{base}/v1/chat/completions", key, {
        "model": svc["model_id"], "max_tokens": 8, "temperature": 0,
        "messages": TOOL_REPLAY, "tools": TOOLS})
    if status != 200:
        return f"tool-call replay returned {status}: {body[:300]}"
    return None


def journal_tail(unit: str, lines: int = 40) -> str:
    return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout


def verify_all(manifest: dict) -> list[str]:
    problems = []
    for svc in manifest["services"]:
        problem = verify_service(svc)
        if problem:
            problems.append(f"{svc['name']}: {problem}\n--- journal of {svc['unit']} ---\n"
                            f"{journal_tail(svc['unit'])}")
        else:
            log(f"{svc['name']}: healthy, chat and tool-call replay answered 200")
    return problems


def mark_verified(root: Path) -> None:
    current = root / "current"
    info = read_build(current)
    if info is not None:
        info["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = current / "build.json.new"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.rename(current / "build.json")


def verify(args: argparse.Namespace) -> None:
    manifest = json.loads(Path(args.manifest).read_text())
    root = Path(manifest["llama_root"])
    problems = verify_all(manifest)
    if not problems:
        mark_verified(root)
        return
    report = "\n".join(problems)
    if not args.rollback or not (root / "previous").is_symlink():
        fail("verification failed:\n" + report)
    log("verification failed; rolling back to the previous build")
    rollback(argparse.Namespace(root=str(root)))
    units = [s["unit"] for s in manifest["services"]]
    subprocess.run(["systemctl", "restart", *units], check=False)
    again = verify_all(manifest)
    state = "the previous build is serving and verified" if not again else \
        "the previous build ALSO fails:\n" + "\n".join(again)
    if not again:
        mark_verified(root)
    fail(f"verification of the new build failed and it was rolled back; {state}.\n"
         f"What failed:\n{report}")


def status(args: argparse.Namespace) -> None:
    """What is on this host, as JSON: builds, services (active, healthy), models in place."""
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"services": []}
    root = Path(manifest.get("llama_root", args.root))
    report: dict = {"current": read_build(root / "current"), "previous": read_build(root / "previous"),
                    "builds": sorted(b.name for b in (root / "builds").glob("b*") if read_build(b)),
                    "services": []}
    for svc in manifest["services"]:
        active = unit_state(svc["unit"]).get("ActiveState", "unknown")
        health, _ = request(f"http://127.0.0.1:{svc['port']}/health", None, timeout=3)
        model = Path(svc["model"])
        report["services"].append({
            "name": svc["name"], "unit": svc["unit"], "port": svc["port"], "active": active,
            "healthy": health == 200, "model": svc["model"], "model_present": model.exists(),
            "model_bytes": model_bytes(svc["model"]),
        })
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("--root", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--flags-hash", required=True)
    p.add_argument("--targets", default="llama-server")
    p.add_argument("--jobs", type=int, default=0)
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
    {"build": build, "activate": activate, "rollback": rollback, "prune": prune,
     "verify": verify, "status": status}[args.cmd](args)


if __name__ == "__main__":
    main()
