"""
A derived checkpoint written from its plan. STDLIB ONLY.

Everything is planned (and each recipe's counts checked) before a byte is written; the
output is written into a new directory beside ``out``, re-read and checked (headers, index,
every planned tensor in exactly one file), and only then put in ``out``'s place, so a build
that fails at any step leaves the previous output as it was. Base files whose tensors all
stay are hard-linked (copied when the output is on another filesystem); a file that loses a
tensor is rewritten without it; tensors from other inputs go into new shards (or their whole
file is linked when all of it is taken). Tensors are copied in chunks, never whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipes import RECIPES, Plan, Report
from .safetensors import CheckpointError, TensorOut, write_safetensors
from .sources import CONFIG_NAME, INDEX_NAME, Checkpoint, LocalCheckpoint

MANIFEST_NAME = ".rigkit-derived.json"
MANIFEST_VERSION = 1
NEW_SHARD = "rigkit-{recipe}-{n:05d}.safetensors"
SHARD_BYTES = 4 << 30  # the most bytes of new tensors in one new shard
# Beside the tensors in a base directory: rigkit's own state (fetcher, builder), not copied.
OWN_PREFIX = ".rigkit-"


@dataclass
class Result:
    out: Path
    identity: str
    reports: list[Report]
    changed: bool
    linked: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def lines(self) -> list[str]:
        out = [r.summary() for r in self.reports]
        if not self.changed:
            return [*out, f"{self.out}: up to date ({self.identity[:16]}), nothing built"]
        out.append(
            f"{self.out}: {len(self.linked)} file(s) linked unchanged, {len(self.written)} written "
            f"({self.bytes_written} bytes)"
        )
        return out


def plan_build(
    base: LocalCheckpoint, inputs: Mapping[str, Checkpoint], recipes: Sequence[str], model: str | None
) -> tuple[Plan, list[Report]]:
    """The output's layout after each recipe in order; a known model's counts checked."""
    plan = Plan.from_base(base, base.config())
    reports = []
    for name in recipes:
        recipe = RECIPES.get(name)
        if recipe is None:
            raise CheckpointError(f"recipe {name!r}: expected one of {', '.join(RECIPES)}")
        missing = [r for r in recipe.roles if r not in inputs]
        if missing:
            raise CheckpointError(f"recipe {name}: needs the input(s) {', '.join(missing)}")
        report = recipe.apply(plan, inputs)
        recipe.check_expected(model, report)
        reports.append(report)
    return plan, reports


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (True), or copy it when a link cannot be made (another
    filesystem, a filesystem without links)."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def _layout(plan: Plan) -> tuple[dict[str, Path], dict[str, list[tuple[str, Checkpoint]]]]:
    """Output files: linked whole (name -> source path) or written (name -> tensors)."""
    by_source: dict[tuple[int, str], list[str]] = {}
    checkpoints: dict[int, Checkpoint] = {}
    for name, ref in plan.tensors.items():
        by_source.setdefault((id(ref.checkpoint), ref.file), []).append(name)
        checkpoints[id(ref.checkpoint)] = ref.checkpoint
    linked: dict[str, Path] = {}
    written: dict[str, list[tuple[str, Checkpoint]]] = {}
    pending: list[tuple[str, Checkpoint]] = []
    # The base's files first, under their own names; then the other inputs'.
    order = sorted(by_source, key=lambda k: (checkpoints[k[0]] is not plan.base, k[1]))
    for key in order:
        ckpt, file = checkpoints[key[0]], key[1]
        names = by_source[key]
        whole = set(names) == set(ckpt.headers[file].tensors)
        if whole and isinstance(ckpt, LocalCheckpoint) and file not in linked and file not in written:
            linked[file] = ckpt.path(file)
        elif ckpt is plan.base and file not in linked:
            written[file] = [(n, ckpt) for n in _data_order(ckpt, file, names)]
        else:
            pending.extend((n, ckpt) for n in _data_order(ckpt, file, names))
    n, size = 1, 0
    for name, ckpt in pending:
        nbytes = ckpt.ref(name).info(name).nbytes
        target = NEW_SHARD.format(recipe="added", n=n)
        if size and size + nbytes > SHARD_BYTES:
            n, size = n + 1, 0
            target = NEW_SHARD.format(recipe="added", n=n)
        if target in linked:
            raise CheckpointError(f"{target}: an input file already has the new shard's name")
        written.setdefault(target, []).append((name, ckpt))
        size += nbytes
    return linked, written


def _data_order(ckpt: Checkpoint, file: str, names: list[str]) -> list[str]:
    tensors = ckpt.headers[file].tensors
    return sorted(names, key=lambda n: tensors[n].begin)  # read each source file front to back


def identity_of(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build(
    base: LocalCheckpoint,
    inputs: Mapping[str, Checkpoint],
    recipes: Sequence[str],
    out: Path,
    *,
    identity: str,
    model: str | None = None,
    describe: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Result:
    """Build ``out`` from ``base`` and ``inputs`` by ``recipes``; a no-op when ``out``'s
    manifest already records ``identity``."""
    done = read_manifest(out)
    if done is not None and done.get("identity") == identity and done.get("complete") is True:
        return Result(out, identity, [], changed=False)
    plan, reports = plan_build(base, inputs, recipes, model)
    unchanged = (
        not plan.config_changes
        and all(ref.checkpoint is base and ref.file == base.weight_map[name] for name, ref in plan.tensors.items())
        and len(plan.tensors) == len(base.weight_map)
    )
    if unchanged and out.resolve() == base.dir.resolve():
        return Result(out, identity, reports, changed=False)  # e.g. the MTP weights already indexed
    linked, written = _layout(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.rigkit-build-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    result = Result(out, identity, reports, changed=True)
    try:
        for file, src in sorted(linked.items()):
            link_or_copy(src, staging / file)
            result.linked.append(file)
        for file, tensors in sorted(written.items()):
            outs = []
            for name, ckpt in tensors:
                info = ckpt.ref(name).info(name)
                outs.append(TensorOut(name, info.dtype, info.shape, functools.partial(ckpt.chunks, name)))
            metadata = dict(plan.base.headers[file].metadata) if file in plan.base.headers else {"format": "pt"}
            write_safetensors(staging / file, outs, metadata)
            result.written.append(file)
            result.bytes_written += (staging / file).stat().st_size
            log(f"wrote {file} ({len(outs)} tensors)")
        _copy_other_files(base, staging, plan)
        weight_map = {name: file for file, tensors in written.items() for name, _ in tensors}
        weight_map.update(_linked_names(plan, linked))
        total = sum(plan.tensors[n].info(n).nbytes for n in plan.tensors)
        index = {
            "metadata": {**base.index_metadata, "total_size": total},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (staging / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        check_output(staging, plan)
        manifest = {
            "version": MANIFEST_VERSION,
            "identity": identity,
            "complete": True,
            "recipes": [r.to_data() for r in reports],
            "inputs": dict(describe or {}),
            "config_changes": plan.config_changes,
            "linked": sorted(result.linked),
            "written": sorted(result.written),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _linked_names(plan: Plan, linked: Mapping[str, Path]) -> dict[str, str]:
    out = {}
    for name, ref in plan.tensors.items():
        if (
            ref.file in linked
            and isinstance(ref.checkpoint, LocalCheckpoint)
            and ref.checkpoint.path(ref.file) == linked[ref.file]
        ):
            out[name] = ref.file
    return out


def _copy_other_files(base: LocalCheckpoint, staging: Path, plan: Plan) -> None:
    """The base's other files (tokenizer, generation config, ...) linked; config.json
    written anew when a recipe changed it."""
    for path in sorted(base.dir.iterdir()):
        name = path.name
        if (
            not path.is_file()
            or name.startswith(OWN_PREFIX)
            or name.endswith(".safetensors")
            or name in (INDEX_NAME, MANIFEST_NAME)
            or (name == CONFIG_NAME and plan.config_changes)
        ):
            continue
        link_or_copy(path, staging / name)
    if plan.config_changes and plan.config is not None:
        (staging / CONFIG_NAME).write_text(json.dumps(plan.config, indent=2) + "\n", encoding="utf-8")


def check_output(directory: Path, plan: Plan) -> None:
    """The written directory read back as vLLM will: every planned tensor in exactly one
    listed file, same dtype and shape, every file listed, no other tensor."""
    done = LocalCheckpoint(directory)
    if set(done.weight_map) != set(plan.tensors):
        extra = sorted(set(done.weight_map) ^ set(plan.tensors))
        raise CheckpointError(f"{directory}: the written tensors differ from the plan ({len(extra)}, e.g. {extra[0]})")
    for name, ref in plan.tensors.items():
        if done.ref(name).info(name).to_json() != ref.info(name).to_json():
            raise CheckpointError(f"{directory}: {name} written as {done.ref(name).info(name).to_json()}")
    stray = sorted(p.name for p in directory.glob("*.safetensors") if p.name not in done.headers)
    if stray:
        raise CheckpointError(f"{directory}: {stray[0]} is not in the index")


def replace_dir(new: Path, out: Path) -> None:
    """``new`` in ``out``'s place; the old ``out`` kept until ``new`` is there."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.rigkit-old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def fingerprint(ckpt: LocalCheckpoint) -> dict[str, Any]:
    """What identifies a local input without hashing its data: each file's name, size and
    header sha256 (a header fixes every tensor's name, dtype, shape and place), and the
    sha256 of config.json."""
    files = {}
    for file, header in sorted(ckpt.headers.items()):
        with open(ckpt.path(file), "rb") as f:
            raw = f.read(header.data_start)
        files[file] = {"size": header.file_size, "header_sha256": hashlib.sha256(raw).hexdigest()}
    config = ckpt.dir / CONFIG_NAME
    return {
        "files": files,
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
    }
