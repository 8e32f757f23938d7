#!/usr/bin/env python3
"""
Build one derived model on this host from its spec (``rigkit.operations.checkpoints``
uploads both, and the ``checkpoints`` package beside this script). STDLIB ONLY::

    python3 build_checkpoint.py SPEC.json

The spec names the output directory by the identity of its inputs (their lock entries) and
recipes: ``<parent of dest>/.<name of dest>.derived-<identity>``. Local inputs are read from
their placed directories; an input read by range comes from its Hub (or mirror) URL, each
header and tensor checked against the sha256 the lock recorded. The output is built beside
the others and checked whole (:func:`checkpoints.build.build`); only then is ``dest``, a
symlink, switched to it with one rename. The output ``dest`` pointed at before is kept (the
previous one, for a rollback), and so is every output a unit names, installed or saved as an
engine's last verified state (a rollback after two failed changes restores units that name
an output older than the previous one); the others are removed. A spec whose output is
complete and current changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.parse
from pathlib import Path
from typing import Any

try:  # on the host: the package uploaded beside this script; in rigkit: its module
    from checkpoints.build import build, read_manifest
    from checkpoints.safetensors import CheckpointError
    from checkpoints.sources import Checkpoint, LocalCheckpoint, LockedRange, RangeReader, RemoteCheckpoint
except ImportError:
    from rigkit.checkpoints.build import build, read_manifest
    from rigkit.checkpoints.safetensors import CheckpointError
    from rigkit.checkpoints.sources import Checkpoint, LocalCheckpoint, LockedRange, RangeReader, RemoteCheckpoint

#: Where units that may load an output live: installed, and each engine's last verified
#: state (rigkit/scripts/last_good.py keeps its units under last-good/<engine>/units/).
UNIT_DIR = Path("/etc/systemd/system")
LAST_GOOD = Path("/var/lib/rigkit/last-good")
SPEC_VERSION = 1
SPEC_KEYS = frozenset({"version", "name", "dest", "output", "identity", "recipes", "model", "inputs"})
OUTPUT_MARK = ".derived-"
IDENTITY = re.compile(r"[0-9a-f]{64}", re.ASCII)


class SpecError(ValueError):
    pass


def output_dir(dest: str, identity: str) -> str:
    """Where the output of ``identity`` lies: beside ``dest``, hidden, named by its identity."""
    parent, name = os.path.split(dest)
    return os.path.join(parent, f".{name}{OUTPUT_MARK}{identity[:16]}")


def check_spec(spec: Any) -> dict[str, Any]:
    """The spec's shape (rigkit wrote it from validated host data and the lock; checked again
    here, the build runs as root): its output the one its dest and identity name."""
    if not isinstance(spec, dict) or set(spec) != SPEC_KEYS or spec["version"] != SPEC_VERSION:
        raise SpecError(f"expected a spec version {SPEC_VERSION} with the keys {', '.join(sorted(SPEC_KEYS))}")
    dest, identity = spec["dest"], spec["identity"]
    if not isinstance(identity, str) or not IDENTITY.fullmatch(identity):
        raise SpecError(f"identity: expected a sha256, got {identity!r}")
    if not isinstance(dest, str) or not os.path.isabs(dest) or os.path.normpath(dest) != dest or dest == "/":
        raise SpecError(f"dest: expected an absolute, normalised path, got {dest!r}")
    if spec["output"] != output_dir(dest, identity):
        raise SpecError(f"output: expected {output_dir(dest, identity)}, got {spec['output']!r}")
    if not isinstance(spec["inputs"], dict) or "base" not in spec["inputs"]:
        raise SpecError("inputs: expected a mapping of roles with base")
    return spec


def open_input(role: str, raw: dict[str, Any]) -> Checkpoint:
    if set(raw) == {"dir"}:
        return LocalCheckpoint(raw["dir"])
    if set(raw) - {"token_file"} != {"url", "files", "ranges", "label"}:
        raise SpecError(f"inputs.{role}: expected dir, or url, files, ranges and label (and token_file)")
    token = None
    if raw.get("token_file"):
        token = Path(raw["token_file"]).read_text(encoding="utf-8").strip() or None
    base = raw["url"].rstrip("/") + "/"
    reader = RangeReader(lambda path: base + urllib.parse.quote(path), token=token)
    locked = {}
    for r in raw["ranges"]:
        locked[(r["path"], r["name"])] = LockedRange(r["path"], r["name"], r["start"], r["size"], r["sha256"])
    return RemoteCheckpoint(raw["label"], reader, raw["files"], locked)


def switch(dest: Path, output: Path) -> str | None:
    """``dest`` (a symlink) to ``output`` with one rename; returns what it pointed at before.
    A ``dest`` that is a real directory is not rigkit's to replace: refused, left as it is."""
    previous = None
    if dest.is_symlink():
        previous = os.readlink(dest)
    elif dest.exists():
        raise SpecError(
            f"{dest}: a directory rigkit did not make (a derived model's dest is its symlink): move it away"
        )
    link = dest.parent / f".{dest.name}.rigkit-link-{os.getpid()}"
    if link.is_symlink():
        link.unlink()
    os.symlink(output.name, link)
    os.replace(link, dest)
    return previous


def named_by_units(dest: Path) -> set[str]:
    """The outputs of ``dest`` that a rigkit unit names, installed or in a last verified state."""
    units = [*UNIT_DIR.glob("rigkit-*"), *LAST_GOOD.glob("*/units/*"), *LAST_GOOD.glob("units/*")]
    pattern = re.compile(re.escape(f"{dest.parent}/.{dest.name}{OUTPUT_MARK}") + r"([0-9a-f]+)")
    named = set()
    for unit in units:
        try:
            text = unit.read_text(encoding="utf-8", errors="replace") if unit.is_file() else ""
        except OSError:
            continue
        named |= {f".{dest.name}{OUTPUT_MARK}{m}" for m in pattern.findall(text)}
    return named


def prune(dest: Path, keep: set[str]) -> list[str]:
    """Outputs of ``dest`` removed, except those in ``keep`` (the current and the previous)
    and those a unit names (:func:`named_by_units`)."""
    removed = []
    keep = keep | named_by_units(dest)
    for path in sorted(dest.parent.glob(f".{dest.name}{OUTPUT_MARK}*")):
        if path.name not in keep and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: build_checkpoint.py SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = check_spec(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
        dest, output = Path(spec["dest"]), Path(spec["output"])
        done = read_manifest(output)
        current = os.readlink(dest) if dest.is_symlink() else None
        if (
            done
            and done.get("identity") == spec["identity"]
            and done.get("complete") is True
            and current == output.name
        ):
            print(f"{spec['name']}: {dest} -> {output.name}: up to date, nothing built")
            return 0
        inputs = {role: open_input(role, raw) for role, raw in spec["inputs"].items()}
        base = inputs.pop("base")
        if not isinstance(base, LocalCheckpoint):
            raise SpecError("inputs.base: expected a placed directory")
        describe = {role: raw.get("label", raw.get("dir")) for role, raw in spec["inputs"].items()}
        result = build(
            base,
            inputs,
            spec["recipes"],
            output,
            identity=spec["identity"],
            model=spec["model"],
            describe=describe,
            log=print,
        )
        for line in result.lines():
            print(f"{spec['name']}: {line}")
        for role, ckpt in inputs.items():
            if isinstance(ckpt, RemoteCheckpoint):
                print(
                    f"{spec['name']}: {role}: {ckpt.reader.fetched} bytes fetched by range of {ckpt.whole_size} "
                    f"({100 * ckpt.reader.fetched / max(ckpt.whole_size, 1):.2f}%), each range checked against the lock"
                )
        previous = switch(dest, output)
        removed = prune(dest, {output.name, *([previous] if previous else [])})
        print(f"{spec['name']}: {dest} -> {output.name} (was {previous or 'absent'}; removed {removed or 'none'})")
        return 0
    except (CheckpointError, SpecError, OSError, ValueError, KeyError, TypeError) as exc:
        print(f"build_checkpoint: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
