#!/usr/bin/env python3
"""
rigkit's host-side tool for services in containers, whatever the engine (stdlib only;
uploaded to /opt/rigkit/bin beside check_service.py and last_good.py).

    container_host.py build --engine E --context DIR --tag rigkit/E:HASH --base REF
                            [--build-arg NAME=VALUE ...] [--selfcheck "CMD ARG..."]
    container_host.py verify  --engine E --manifest /etc/rigkit/E/services.json [--rollback]
    container_host.py restore --engine E --manifest ...   (explicit rollback)
    container_host.py status  --engine E --manifest ...   (JSON: unit, container, image, health)
    container_host.py prune   --engine E --manifest ... --repository rigkit/E --keep N

``build`` does nothing when the tag exists; otherwise it pulls the base if it is missing,
builds with the base image's ID as a label (``org.rigkit.<E>.base-id``: a cluster's nodes
compare it), runs the image's self-check (``--selfcheck``: the argv run in the image, its
entrypoint replaced by the first word) and removes the tag again if that fails. ``verify``
runs check_service.py's checks; on failure it puts back the engine's last verified units and
keys (which name the previous image), restarts, verifies that and fails with the container's
log tail. ``prune`` removes the engine's images beyond the newest ``--keep`` ones, never one
that a unit on this host names (what serves, the last verified state, another service's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

try:  # on the host: the sibling scripts in /opt/rigkit/bin; in the package: their modules
    from check_service import check_all, request, unit_state
    from last_good import LastGood
except ImportError:
    from rigkit.scripts.check_service import check_all, request, unit_state
    from rigkit.scripts.last_good import LastGood

DOCKER = "docker"
UNIT_DIR = Path("/etc/systemd/system")
#: The self-check's report per image, kept at build time (``rigkit status`` shows it).
SELFCHECK_DIR = "/var/lib/rigkit/{engine}/selfcheck"


def selfcheck_record(engine: str, tag: str) -> Path:
    """Where the build keeps ``tag``'s self-check report (a tag is ``rigkit/<engine>:<hash>``)."""
    return Path(SELFCHECK_DIR.format(engine=engine)) / (re.sub(r"[^A-Za-z0-9_.-]", "_", tag) + ".json")


def log(message: str) -> None:
    print(f"[rigkit] {message}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"[rigkit] ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def docker(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


def image_present(tag: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", tag).returncode == 0


# --- build -------------------------------------------------------------------------------

#: Seconds between two progress lines of a build at most; a step that runs on is named again
#: every HEARTBEAT_S.
PROGRESS_S = 5.0
HEARTBEAT_S = 30.0
# "Step 3/7 : RUN ..." (the classic builder), "#9 [stage 3/7] RUN ..." (BuildKit's plain output)
_STEP = re.compile(r"^(?:Step (\d+)/(\d+) : ([A-Z]+)|#\d+ \[(?:[^\]\s]+ )?(\d+)/(\d+)\] ([A-Z]+))", re.ASCII)


def build_step(line: str) -> tuple[int, int, str] | None:
    """(step, steps, instruction) when ``line`` of docker build's output starts a step."""
    m = _STEP.match(line)
    if m is None:
        return None
    n, total, word = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5), m.group(6))
    return int(n), int(total), word


class BuildProgress:
    """What of a build's output to show: the step it is at (its number and instruction word
    only: a RUN line could hold anything), at most once per PROGRESS_S, and again every
    HEARTBEAT_S while one step runs on. The clock is the caller's."""

    def __init__(self, tag: str, started: float):
        self.tag = tag
        self.started = started
        self.step: tuple[int, int, str] | None = None
        self.shown: tuple[int, int, str] | None = None
        self.shown_at = started

    def feed(self, line: str) -> None:
        step = build_step(line)
        if step is not None:
            self.step = step

    def due(self, now: float) -> str | None:
        """The line to show now, if any."""
        if self.step is None or now - self.shown_at < PROGRESS_S:
            return None
        if self.step == self.shown and now - self.shown_at < HEARTBEAT_S:
            return None
        self.shown, self.shown_at = self.step, now
        n, total, word = self.step
        return f"building {self.tag}: step {n}/{total} ({word}), {now - self.started:.0f}s"


def run_build(argv: list[str], tag: str) -> tuple[int, str]:
    """Run docker build, showing its progress (BuildProgress) as it goes; (exit status, output)."""
    started = time.monotonic()
    progress = BuildProgress(tag, started)
    lines: list[str] = []
    env = {**os.environ, "BUILDKIT_PROGRESS": "plain"}  # one line per event, not a redrawn screen
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            progress.feed(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(1.0)
        shown = progress.due(time.monotonic())
        if shown:
            log(shown)
    return proc.wait(), "".join(lines)


def build(args: argparse.Namespace) -> None:
    if image_present(args.tag):
        log(f"{args.tag} is present: nothing to build")
        return
    build_args = list(args.build_arg or [])
    log(f"building {args.tag} FROM {args.base}" + "".join(f", {a}" for a in build_args))
    started = time.monotonic()
    if not image_present(args.base):
        log(f"pulling {args.base}")
        pulled = docker("pull", args.base)
        if pulled.returncode != 0:
            fail(f"pulling {args.base} failed:\n{pulled.stdout[-2000:]}{pulled.stderr[-2000:]}")
    # What the base reference resolved to here: the nodes of a cluster compare it.
    base_id = docker("image", "inspect", "--format", "{{.Id}}", args.base).stdout.strip()
    argv = [DOCKER, "build", "--network", "host", "--build-arg", f"BASE={args.base}"]
    for build_arg in build_args:
        argv += ["--build-arg", build_arg]
    argv += [
        "--label",
        f"org.rigkit.{args.engine}.tag={args.tag}",
        "--label",
        f"org.rigkit.{args.engine}.base-id={base_id}",
        "-t",
        args.tag,
        args.context,
    ]
    returncode, output = run_build(argv, args.tag)
    if returncode != 0:
        patch_lines = [line for line in output.splitlines() if "PATCH FAILED" in line]
        tail = "\n".join(output.splitlines()[-30:])
        fail(
            f"building {args.tag} failed"
            + (":\n" + "\n".join(patch_lines) if patch_lines else "")
            + f"\n--- build output (last lines) ---\n{tail}"
        )
    if args.selfcheck:
        # The self-check's argv in the image: a string of the command line, or a wrapper's list.
        entry, *rest = shlex.split(args.selfcheck) if isinstance(args.selfcheck, str) else args.selfcheck
        check = docker("run", "--rm", "--network", "none", "--entrypoint", entry, args.tag, *rest)
        if check.returncode != 0:
            docker("image", "rm", args.tag)
            fail(f"{args.tag} failed its self-check (tag removed):\n{check.stdout}{check.stderr}")
        record = selfcheck_record(args.engine, args.tag)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(check.stdout)
        log(f"built {args.tag} in {time.monotonic() - started:.0f}s; self-check: {check.stdout.strip()}")
    else:
        log(f"built {args.tag} in {time.monotonic() - started:.0f}s")


# --- verification and rollback -------------------------------------------------------------


def container_tail(container: str, lines: int = 40) -> str:
    result = docker("logs", "--tail", str(lines), container)
    return (result.stdout + result.stderr).strip() or f"(no log from container {container})"


def check(services: list[dict]) -> list[str]:
    problems = check_all(services)
    by_name = {s["name"]: s for s in services}
    out = []
    for problem in problems:
        svc = by_name[problem.split(":", 1)[0]]
        out.append(
            f"{problem}\n--- container {svc['container']} ({svc['image']}), last lines ---\n"
            f"{container_tail(svc['container'])}"
        )
    return out


def restore_good(good: LastGood, manifest_path: Path) -> dict | None:
    """The last verified units and keys back (so the previous image), and the manifest that
    named them; None when this host has none."""
    failed = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"services": []}
    state = good.restore(failed)
    if state is None:
        return None
    manifest_path.write_text(json.dumps(state["manifest"], indent=2, sort_keys=True) + "\n")
    return state["manifest"]


def verify(args: argparse.Namespace) -> None:
    good = LastGood(args.engine)
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text())
    title = manifest.get("title", args.engine)
    problems = check(manifest["services"])
    if not problems:
        good.save(manifest)
        log(f"{title} services verified: " + ", ".join(f"{s['name']} ({s['image']})" for s in manifest["services"]))
        return
    report = "\n".join(problems)
    if not args.rollback:
        fail("verification failed:\n" + report)
    old = restore_good(good, manifest_path)
    if old is None:
        fail(f"verification failed (no verified {title} state on this host to roll back to):\n" + report)
    log("verification failed; back to the last verified units and keys (previous image)")
    subprocess.run(["systemctl", "restart", *(s["unit"] for s in old["services"])], check=False)
    again = check(old["services"])
    images = ", ".join(f"{s['name']} on {s['image']}" for s in old["services"])
    state = (
        f"the previous image is serving and verified ({images})"
        if not again
        else "the last verified state ALSO fails:\n" + "\n".join(again)
    )
    if not again:
        good.save(old)
    fail(f"verification of the new {title} deploy failed and it was rolled back; {state}.\nWhat failed:\n{report}")


def restore(args: argparse.Namespace) -> None:
    """Explicit rollback (deploys/rollback.py): the last verified units and keys back, and
    their units restarted, when what is on the host differs from them; else nothing (a
    restart would reload the model for minutes)."""
    good = LastGood(args.engine)
    manifest_path = Path(args.manifest)
    state = good.state()
    if state is None:
        fail(f"no verified {args.engine} state on this host to roll back to")
    saved = good.link / "units"
    differs = [
        s["unit"]
        for s in state["manifest"]["services"]
        if not (UNIT_DIR / s["unit"]).exists()
        or (UNIT_DIR / s["unit"]).read_bytes() != (saved / s["unit"]).read_bytes()
    ]
    if not differs and manifest_path.exists() and json.loads(manifest_path.read_text()) == state["manifest"]:
        log(f"{args.engine} services are at their last verified state; nothing to put back")
        return
    restore_good(good, manifest_path)
    units = [s["unit"] for s in state["manifest"]["services"]]
    subprocess.run(["systemctl", "restart", *units], check=False)
    log(f"put back the last verified {args.engine} units and keys: " + ", ".join(units))


# --- images ---------------------------------------------------------------------------------

IMAGE_IN_UNIT = re.compile(r"(rigkit/[a-z0-9-]+:[0-9a-f]{16})")


def images_in_units() -> set[str]:
    """Every rigkit image a unit on this host names: each engine's serving and last verified
    units and the Ray units of a cluster (the last-good copies included)."""
    found: set[str] = set()
    for directory in (UNIT_DIR, *Path("/var/lib/rigkit/last-good").glob("*/units")):
        for unit in directory.glob("rigkit-*.service"):
            try:
                found |= set(IMAGE_IN_UNIT.findall(unit.read_text()))
            except OSError:
                continue
    return found


def prune(args: argparse.Namespace) -> None:
    """The engine's images beyond the newest ``--keep`` that no unit names."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.CreatedAt}}", args.repository)
    if listed.returncode != 0:
        fail(f"docker image ls failed: {listed.stderr.strip()}")
    images = []
    for line in listed.stdout.splitlines():
        tag, _, created = line.partition(" ")
        if tag.startswith(args.repository + ":"):
            images.append((created, tag))
    in_use = images_in_units()
    spare = [tag for _, tag in sorted(images, reverse=True) if tag not in in_use]
    for tag in spare[args.keep :]:
        removed = docker("image", "rm", tag)
        log(f"removed {tag}" if removed.returncode == 0 else f"could not remove {tag}: {removed.stderr.strip()}")


# --- status --------------------------------------------------------------------------------


def read_selfcheck(engine: str, tag: str) -> dict | None:
    """The self-check report the build kept for ``tag`` (its version and patch states), or None."""
    try:
        report = json.loads(selfcheck_record(engine, tag).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def status(args: argparse.Namespace) -> None:
    try:
        manifest = json.loads(Path(args.manifest).read_text())
    except (OSError, ValueError):
        print(json.dumps({"services": []}))
        return
    saved = LastGood(args.engine).state()
    good = {s["name"]: s["image"] for s in saved["manifest"]["services"]} if saved else None
    out = []
    for svc in manifest["services"]:
        inspect = docker("inspect", "--format", "{{.State.Status}} {{.Config.Image}}", svc["container"])
        state, _, image = inspect.stdout.strip().partition(" ") if inspect.returncode == 0 else ("absent", "", "")
        code, _ = request(f"http://127.0.0.1:{svc['port']}/health", None, timeout=3)
        out.append(
            {
                "name": svc["name"],
                "unit": svc["unit"],
                "port": svc["port"],
                "active": unit_state(svc["unit"]).get("ActiveState"),
                "container": state,
                "image": image or svc["image"],
                "declared_image": svc["image"],
                "verified_image": (good or {}).get(svc["name"]),
                "healthy": code == 200,
                "selfcheck": read_selfcheck(args.engine, image or svc["image"]),
            }
        )
    print(json.dumps({"services": out}))


COMMANDS = {"build": build, "verify": verify, "restore": restore, "status": status, "prune": prune}


def parser(prog: str = "container_host.py", engine: str | None = None):
    """The tool's arguments and its subcommands (a wrapper adds its own to the second);
    ``engine``: the one a wrapper serves (its default)."""
    top = argparse.ArgumentParser(prog=prog)
    sub = top.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name)
        p.add_argument("--engine", default=engine, required=engine is None)
        if name == "build":
            p.add_argument("--context", required=True)
            p.add_argument("--tag", required=True)
            p.add_argument("--base", required=True)
            p.add_argument("--build-arg", action="append")
            p.add_argument("--selfcheck", help="the self-check's command line in the image")
        else:
            p.add_argument("--manifest", default=f"/etc/rigkit/{engine}/services.json" if engine else None)
        if name == "verify":
            p.add_argument("--rollback", action="store_true")
        if name == "prune":
            p.add_argument("--repository", required=True)
            p.add_argument("--keep", type=int, default=2)
    return top, sub


def main() -> None:
    args = parser()[0].parse_args()
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
