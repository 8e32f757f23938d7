#!/usr/bin/env python3
"""
rigkit's host-side tool for vLLM services in containers (stdlib only; uploaded to
/opt/rigkit/bin beside check_service.py).

    vllm_host.py build  --context DIR --tag rigkit/vllm:HASH --base REF [--patches a,b]
    vllm_host.py mtp-check --model DIR      (MTP weights present and referenced by the index)
    vllm_host.py verify --manifest /etc/rigkit/vllm/services.json [--rollback]
    vllm_host.py status --manifest ...      (JSON: per service unit, container, image, health)

``build`` does nothing when the tag exists; otherwise it builds (a patch that does not apply
fails with its file and hunk), runs the image's self-check and removes the tag again if that
fails. Images are never removed by rigkit here, so the previous one is there for rollback.
``verify`` runs check_service.py's checks; on failure it puts back the last verified units and
keys (which name the previous image), restarts, verifies that and fails with the container's
log tail.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

try:  # on the host: the sibling scripts in /opt/rigkit/bin; in the package: their modules
    from check_service import check_all, request, unit_state
    from last_good import LastGood
except ImportError:
    from rigkit.scripts.check_service import check_all, request, unit_state
    from rigkit.scripts.last_good import LastGood

#: vLLM's last verified state, beside the other engines' (rigkit/scripts/last_good.py).
GOOD = LastGood("vllm")
DOCKER = "docker"
UNIT_DIR = Path("/etc/systemd/system")
SELFCHECK = "/opt/rigkit/vllm/rigkit_vllm_patches/selfcheck.py"


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


def build(args: argparse.Namespace) -> None:
    if image_present(args.tag):
        log(f"{args.tag} is present: nothing to build")
        return
    log(f"building {args.tag} FROM {args.base} with patches: {args.patches or 'none'}")
    started = time.monotonic()
    if not image_present(args.base):
        log(f"pulling {args.base}")
        pulled = docker("pull", args.base)
        if pulled.returncode != 0:
            fail(f"pulling {args.base} failed:\n{pulled.stdout[-2000:]}{pulled.stderr[-2000:]}")
    # What the base reference resolved to here: the nodes of a cluster compare it.
    base_id = docker("image", "inspect", "--format", "{{.Id}}", args.base).stdout.strip()
    result = subprocess.run(
        [
            DOCKER,
            "build",
            "--network",
            "host",
            "--build-arg",
            f"BASE={args.base}",
            "--build-arg",
            f"PATCHES={args.patches}",
            "--label",
            f"org.rigkit.vllm.tag={args.tag}",
            "--label",
            f"org.rigkit.vllm.base-id={base_id}",
            "-t",
            args.tag,
            args.context,
        ],
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        patch_lines = [line for line in output.splitlines() if "PATCH FAILED" in line]
        tail = "\n".join(output.splitlines()[-30:])
        fail(
            f"building {args.tag} failed"
            + (":\n" + "\n".join(patch_lines) if patch_lines else "")
            + f"\n--- build output (last lines) ---\n{tail}"
        )
    check = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", args.tag, SELFCHECK)
    if check.returncode != 0:
        docker("image", "rm", args.tag)
        fail(f"{args.tag} failed its self-check (tag removed):\n{check.stdout}{check.stderr}")
    log(f"built {args.tag} in {time.monotonic() - started:.0f}s; self-check: {check.stdout.strip()}")


# --- MTP weights ---------------------------------------------------------------------------


def safetensors_names(path: Path) -> set[str]:
    """The tensor names in a safetensors file's header (the header only is read)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path.name}: header of {length} bytes")
        header = json.loads(f.read(length))
    return {k for k in header if k != "__metadata__"}


def mtp_weights_problem(model: Path) -> str | None:
    """Why ``model`` cannot serve MTP speculative decoding, or None: the index
    (``model.safetensors.index.json``) must reference ``mtp.*`` tensors, and every file it
    maps them to (``model_extra_tensors.safetensors`` in Intel's AutoRound) must exist and
    hold them."""
    index_path = model / "model.safetensors.index.json"
    if not index_path.is_file():
        return f"{index_path} is missing (MTP weights must be referenced by the index)"
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{index_path}: no weight_map ({exc})"
    mtp = {name: file for name, file in weight_map.items() if name.startswith(("mtp.", "model.mtp."))}
    if not mtp:
        extra = model / "model_extra_tensors.safetensors"
        hint = f" ({extra.name} is there but not referenced: add its tensors to the index)" if extra.exists() else ""
        return f"{index_path.name} references no mtp.* tensors: the model has no MTP weights{hint}"
    by_file: dict[str, set[str]] = {}
    for name, file in mtp.items():
        by_file.setdefault(file, set()).add(name)
    for file, names in sorted(by_file.items()):
        path = model / file
        if not path.is_file():
            return f"{file} is missing ({len(names)} MTP tensors of the index live there)"
        try:
            present = safetensors_names(path)
        except (OSError, ValueError, struct.error) as exc:
            return f"{file}: not a readable safetensors file ({exc})"
        absent = sorted(names - present)
        if absent:
            return f"{file} lacks {len(absent)} MTP tensor(s) the index names, e.g. {absent[0]}"
    return None


def mtp_check(args: argparse.Namespace) -> None:
    problem = mtp_weights_problem(Path(args.model))
    if problem:
        fail(f"MTP asked for, but {args.model}: {problem}")
    log(f"{args.model}: MTP weights present and referenced by the index")


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


def save_good(manifest_path: Path, manifest: dict) -> None:
    """The verified units, keys and manifest, for the next failed deploy to come back to."""
    GOOD.save(manifest)


def restore_good(manifest_path: Path) -> dict | None:
    """The last verified units and keys back (so the previous image), and the manifest that
    named them; None when this host has none."""
    failed = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"services": []}
    good = GOOD.restore(failed, lambda unit: unit.removeprefix("rigkit-").removesuffix(".service"))
    if good is None:
        return None
    manifest_path.write_text(json.dumps(good["manifest"], indent=2, sort_keys=True) + "\n")
    return good["manifest"]


def verify(args: argparse.Namespace) -> None:
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text())
    problems = check(manifest["services"])
    if not problems:
        save_good(manifest_path, manifest)
        log("vLLM services verified: " + ", ".join(f"{s['name']} ({s['image']})" for s in manifest["services"]))
        return
    report = "\n".join(problems)
    if not args.rollback:
        fail("verification failed:\n" + report)
    old = restore_good(manifest_path)
    if old is None:
        fail("verification failed (no verified vLLM state on this host to roll back to):\n" + report)
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
        save_good(manifest_path, old)
    fail(f"verification of the new vLLM deploy failed and it was rolled back; {state}.\nWhat failed:\n{report}")


def restore(args: argparse.Namespace) -> None:
    """Explicit rollback (deploys/rollback.py): the last verified units and keys back, and
    their units restarted, when what is on the host differs from them; else nothing (a
    restart would reload the model for minutes)."""
    manifest_path = Path(args.manifest)
    state = GOOD.state()
    if state is None:
        fail("no verified vLLM state on this host to roll back to")
    saved = GOOD.link / "units"
    differs = [
        s["unit"]
        for s in state["manifest"]["services"]
        if not (UNIT_DIR / s["unit"]).exists()
        or (UNIT_DIR / s["unit"]).read_bytes() != (saved / s["unit"]).read_bytes()
    ]
    if not differs and manifest_path.exists() and json.loads(manifest_path.read_text()) == state["manifest"]:
        log("vLLM services are at their last verified state; nothing to put back")
        return
    restore_good(manifest_path)
    units = [s["unit"] for s in state["manifest"]["services"]]
    subprocess.run(["systemctl", "restart", *units], check=False)
    log("put back the last verified vLLM units and keys: " + ", ".join(units))


# --- status --------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> None:
    try:
        manifest = json.loads(Path(args.manifest).read_text())
    except (OSError, ValueError):
        print(json.dumps({"services": []}))
        return
    state = GOOD.state()
    good = {s["name"]: s["image"] for s in state["manifest"]["services"]} if state else None
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
            }
        )
    print(json.dumps({"services": out}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="vllm_host.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("--context", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--patches", default="")
    p = sub.add_parser("mtp-check")
    p.add_argument("--model", required=True)
    for name in ("verify", "status", "restore"):
        p = sub.add_parser(name)
        p.add_argument("--manifest", default="/etc/rigkit/vllm/services.json")
        if name == "verify":
            p.add_argument("--rollback", action="store_true")
    args = parser.parse_args()
    commands = {"build": build, "mtp-check": mtp_check, "verify": verify, "status": status, "restore": restore}
    commands[args.command](args)


if __name__ == "__main__":
    main()
