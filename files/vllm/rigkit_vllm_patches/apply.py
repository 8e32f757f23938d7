#!/usr/bin/env python3
"""
Apply rigkit's patches to the vLLM installed in an image (run by ``files/vllm/Dockerfile``).

    apply.py --patches inc-hybrid-fp8,rope-keys-set [--patch-dir /opt/rigkit/vllm/patches]

Each patch is a directory ``patches/<NN>-<name>/`` with ``patch.json``::

    {"name": "...",
     "versions": [                                      # one entry per vLLM line whose file differs
       {"vllm": ">=0.19,<0.20",                         # the versions this entry is for
        "edits": [{"file": "model_executor/.../inc.py", # relative to the vllm package
                   "diff": "inc-0.19.diff"}             # a unified diff, applied exactly
                  | {"file": "...", "transform": "rope_keys", "optional": true}]},
       {"vllm": ">=0.20,<0.21", "edits": [...]}],
     "marker": "RIGKIT_INC_HYBRID_FP8 = True",          # in each diff-edited file after applying
     "imports": ["vllm.model_executor.layers.quantization.inc"]}   # what the self-check imports

A vLLM outside every entry's range fails the build naming the patch, its ranges and the
version found; a hunk whose lines are not in the file fails it naming the file and the hunk;
a transform edit goes by the file's content (``rigkit_vllm_patches.<transform>.fix``). The
record of what was done goes to /opt/rigkit/vllm/applied.json for the self-check.
Stdlib only; vLLM is located without importing it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD = Path("/opt/rigkit/vllm/applied.json")
HUNK_HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(Exception):
    """A patch that does not fit the installed vLLM; the message names the file and hunk."""


@dataclass
class Hunk:
    header: str
    old_start: int
    lines: list[str] = field(default_factory=list)  # " ctx", "-old", "+new"

    @property
    def old(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "-")]

    @property
    def new(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]


def parse_diff(text: str) -> list[Hunk]:
    """The hunks of a one-file unified diff; the ``---``/``+++`` header lines are skipped."""
    hunks: list[Hunk] = []
    old_left = new_left = 0
    for raw in text.splitlines():
        match = HUNK_HEADER.match(raw)
        if match and old_left <= 0 and new_left <= 0:
            hunks.append(Hunk(header=raw, old_start=int(match.group(1))))
            old_left = int(match.group(2) or 1)
            new_left = int(match.group(4) or 1)
            continue
        if old_left <= 0 and new_left <= 0:
            continue  # file headers, "diff", "index" lines between hunks
        if raw.startswith("\\"):
            continue  # "\\ No newline at end of file"
        line = raw if raw else " "  # an empty context line whose space an editor dropped
        kind = line[:1]
        if kind not in (" ", "-", "+"):
            raise PatchError(f"hunk {len(hunks)} ({hunks[-1].header}): malformed line {raw!r}")
        hunks[-1].lines.append(line)
        old_left -= kind in (" ", "-")
        new_left -= kind in (" ", "+")
    if not hunks:
        raise PatchError("no hunks in the diff")
    if old_left > 0 or new_left > 0:
        raise PatchError(f"hunk {len(hunks)} ({hunks[-1].header}) is cut short")
    return hunks


def apply_hunks(text: str, hunks: list[Hunk], name: str) -> str:
    """``text`` with every hunk applied; a hunk must match exactly (whitespace included),
    searched from its line number outwards; else PatchError naming ``name`` and the hunk."""
    lines = text.split("\n")
    offset = 0
    for number, hunk in enumerate(hunks, 1):
        old, new = hunk.old, hunk.new
        expected = max(hunk.old_start - 1 + offset, 0)
        at = _find(lines, old, expected)
        if at is None:
            raise PatchError(
                f"{name}: hunk {number} of {len(hunks)} ({hunk.header}) does not apply: "
                f"{_first_mismatch(lines, old, expected)}"
            )
        lines[at : at + len(old)] = new
        offset += len(new) - len(old) + (at - expected)
    return "\n".join(lines)


def _find(lines: list[str], old: list[str], expected: int) -> int | None:
    n = len(old)
    for distance in range(len(lines) + 1):
        for at in (expected - distance, expected + distance) if distance else (expected,):
            if 0 <= at <= len(lines) - n and lines[at : at + n] == old:
                return at
    return None


def _first_mismatch(lines: list[str], old: list[str], expected: int) -> str:
    for i, want in enumerate(old):
        got = lines[expected + i] if expected + i < len(lines) else "<end of file>"
        if got != want:
            return f"line {expected + i + 1} is {got!r}, the hunk expects {want!r}"
    return "its lines are not in the file"


def version_tuple(version: str) -> tuple[int, ...]:
    """``0.19.1rc1.dev15+g50cd`` -> ``(0, 19, 1)``."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def version_matches(version: str, spec: str) -> bool:
    """``spec``: comma-separated ``>=``, ``>``, ``<=``, ``<``, ``==`` clauses (``==0.19.*`` too)."""
    have = version_tuple(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op, want_text = re.match(r"(>=|<=|==|>|<)\s*(.+)", clause).groups()  # type: ignore[union-attr]
        if op == "==" and want_text.endswith(".*"):
            want = version_tuple(want_text[:-2])
            if have[: len(want)] != want:
                return False
            continue
        want = version_tuple(want_text)
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if not {">=": a >= b, "<=": a <= b, "==": a == b, ">": a > b, "<": a < b}[op]:
            return False
    return True


def vllm_dir() -> Path:
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("vllm is not installed in this image's python3")
    return Path(list(spec.submodule_search_locations)[0])


def vllm_version(root: Path) -> str:
    text = (root / "_version.py").read_text()
    match = re.search(r"""__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", text)
    if not match:
        raise PatchError(f"{root / '_version.py'}: no __version__")
    return match.group(1)


def load_patches(patch_dir: Path) -> dict[str, tuple[Path, dict]]:
    found = {}
    for d in sorted(p for p in patch_dir.iterdir() if (p / "patch.json").is_file()):
        meta = json.loads((d / "patch.json").read_text())
        found[meta["name"]] = (d, meta)
    return found


def edits_for(meta: dict, version: str) -> list[dict]:
    """The edits of the patch's entry whose range holds ``version``."""
    for line in meta["versions"]:
        if version_matches(version, line["vllm"]):
            return list(line["edits"])
    ranges = " or ".join(line["vllm"] for line in meta["versions"])
    raise PatchError(f"patch {meta['name']} is for vLLM {ranges}; this image has vLLM {version}")


def apply_patch(root: Path, version: str, directory: Path, meta: dict) -> dict:
    """Apply one patch to the vLLM at ``root``; what was done, for the record."""
    name = meta["name"]
    edits = edits_for(meta, version)
    done: dict = {
        "name": name,
        "vllm": version,
        "edits": [],
        "marker": meta.get("marker"),
        "imports": meta.get("imports", []),
        "modules": meta.get("modules", []),
    }
    for edit in edits:
        target = root / edit["file"]
        label = f"vllm/{edit['file']}"
        if not target.is_file():
            if edit.get("optional"):
                done["edits"].append({"file": edit["file"], "result": "absent"})
                continue
            raise PatchError(f"patch {name}: {label} is not in this vLLM {version}")
        text = target.read_text()
        if "diff" in edit:
            new = apply_hunks(text, parse_diff((directory / edit["diff"]).read_text()), f"patch {name}: {label}")
            marker = meta.get("marker")
            if marker and marker not in new:
                raise PatchError(f"patch {name}: {label}: marker {marker!r} missing after applying")
            result = "patched"
        else:
            module = importlib.import_module(f"rigkit_vllm_patches.{edit['transform']}")
            new = module.fix(text)
            result = "patched" if new is not None else "not needed (the file does not have the form it fixes)"
            if new is not None and not module.check(new):
                raise PatchError(f"patch {name}: {label}: the transform left the form it fixes")
        if new is not None:
            compile(new, str(target), "exec")  # a patch that breaks the syntax fails here
            replace_file(target, new)
        done["edits"].append(
            {"file": edit["file"], "kind": "diff" if "diff" in edit else edit["transform"], "result": result}
        )
    return done


def replace_file(target: Path, text: str) -> None:
    """Write ``target`` whole or not at all: a temporary file beside it, then ``os.replace``.
    A build that dies midway leaves the old file, and a file hard-linked elsewhere (a test's
    ``cp -al`` copy of a pristine vLLM) gets a new inode instead of changing the other copy."""
    tmp = target.with_name(f".{target.name}.rigkit-{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        if target.exists():
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def install_path(root: Path) -> Path:
    """A ``.pth`` in vLLM's site-packages so the patched files import ``rigkit_vllm_patches``."""
    pth = root.parent / "rigkit_vllm_patches.pth"
    replace_file(pth, str(HERE.parent) + "\n")
    return pth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apply.py")
    parser.add_argument("--patches", default="", help="comma-separated patch names (empty: none)")
    parser.add_argument("--patch-dir", default=str(HERE.parent / "patches"))
    parser.add_argument("--record", default=str(RECORD))
    args = parser.parse_args(argv)
    try:
        root = vllm_dir()
        version = vllm_version(root)
        available = load_patches(Path(args.patch_dir))
        wanted = [n for n in args.patches.split(",") if n]
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise PatchError(f"unknown patch(es) {', '.join(unknown)}; have {', '.join(available)}")
        record = {"vllm": version, "vllm_dir": str(root), "patches": []}
        for n in sorted(wanted, key=lambda n: available[n][0].name):
            done = apply_patch(root, version, *available[n])
            record["patches"].append(done)
            print(f"[rigkit] {n}: " + "; ".join(f"vllm/{e['file']} {e['result']}" for e in done["edits"]), flush=True)
        install_path(root)
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        replace_file(Path(args.record), json.dumps(record, indent=2) + "\n")
    except PatchError as exc:
        print(f"[rigkit] PATCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
