#!/usr/bin/env python3
"""
The image's own check, run with the image's Python after every build:

    docker run --rm --entrypoint python3 IMAGE /opt/rigkit/vllm/rigkit_vllm_patches/selfcheck.py

For each applied patch (``/opt/rigkit/vllm/applied.json``): every edited file compiles and
still has what the patch put there (its marker; for a transform, no form left that it fixes),
the patch's helper modules import, and the patched vLLM modules import and carry the marker
attribute. An image whose Python lacks vLLM's own dependencies (torch: a test base with
vLLM's sources only) cannot import vLLM modules; that is reported as ``compiled only``,
never as passed. Prints a JSON report; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD = Path("/opt/rigkit/vllm/applied.json")


def check(record: dict) -> tuple[list[str], list[str]]:
    """(failures, notes)."""
    failures: list[str] = []
    notes: list[str] = []
    root = Path(record["vllm_dir"])
    for patch in record["patches"]:
        name = patch["name"]
        for edit in patch["edits"]:
            if edit["result"] == "absent":
                continue
            path = root / edit["file"]
            text = path.read_text()
            try:
                compile(text, str(path), "exec")
            except SyntaxError as exc:
                failures.append(f"{name}: vllm/{edit['file']} does not compile: {exc}")
                continue
            if edit.get("kind") == "diff":
                if patch.get("marker") and patch["marker"] not in text:
                    failures.append(f"{name}: vllm/{edit['file']} lacks the marker {patch['marker']!r}")
            else:
                module = importlib.import_module(f"rigkit_vllm_patches.{edit['kind']}")
                if not module.check(text):
                    failures.append(f"{name}: vllm/{edit['file']} still has the form {edit['kind']} fixes")
        for module in patch.get("modules", []):
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                failures.append(f"{name}: helper {module} does not import: {exc!r}")
        for target in patch.get("imports", []):
            try:
                mod = importlib.import_module(target["module"])
            except ModuleNotFoundError as exc:
                missing = (exc.name or "").split(".")[0]
                if missing and missing not in ("vllm", "rigkit_vllm_patches"):
                    notes.append(f"{name}: {target['module']} compiled only (this image has no {missing})")
                    continue
                failures.append(f"{name}: {target['module']} does not import: {exc!r}")
                continue
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{name}: {target['module']} does not import: {exc!r}")
                continue
            attribute = target.get("attribute")
            if attribute and getattr(mod, attribute, None) is not True:
                failures.append(f"{name}: {target['module']}.{attribute} is not set (patch not active)")
            else:
                notes.append(f"{name}: {target['module']} imported" + (f", {attribute} set" if attribute else ""))
    return failures, notes


def patch_states(record: dict, notes: list[str], failures: list[str]) -> dict[str, dict]:
    """Per patch: ``state`` ("applied" when an edit changed a file, else "not needed": every
    edit found its file already in the fixed form, or absent) and ``import``, the result for
    the modules it names ("imported", "compiled only" without vLLM's dependencies, "failed")."""
    states = {}
    for patch in record["patches"]:
        name = patch["name"]
        applied = any(e["result"] == "patched" for e in patch["edits"])
        mine = [line for line in failures if line.startswith(f"{name}: ")]
        said = [line for line in notes if line.startswith(f"{name}: ")]
        if mine:
            result = "failed"
        elif any("compiled only" in line for line in said):
            result = "compiled only"
        elif patch.get("imports"):
            result = "imported"
        else:
            result = "nothing to import"
        states[name] = {"state": "applied" if applied else "not needed", "import": result}
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfcheck.py")
    parser.add_argument("--record", default=str(RECORD), help="apply.py's record (default: %(default)s)")
    args = parser.parse_args(argv)
    record = json.loads(Path(args.record).read_text())
    failures, notes = check(record)
    print(
        json.dumps(
            {
                "vllm": record["vllm"],
                "patches": [p["name"] for p in record["patches"]],
                "patch_states": patch_states(record, notes, failures),
                "ok": not failures,
                "failures": failures,
                "notes": notes,
            },
            indent=2,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
