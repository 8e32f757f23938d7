"""
``rigkit checkpoint``: the derived-checkpoint recipes on local directories, for people who
build by hand (the same code a host runs for a derived model)::

    rigkit checkpoint hybrid-fp8 --base INT4_DIR --fp8 FP8_DIR --out DIR
    rigkit checkpoint mtp-index --source INT4_DIR --target HYBRID_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .build import build, fingerprint, identity_of
from .recipes import HYBRID, MTP_INDEX, RECIPES
from .safetensors import CheckpointError
from .sources import LocalCheckpoint

#: What rigkit's fetcher leaves in a model directory: the Hub repository it came from.
REPO_META = ".rigkit-repo.json"


def known_model(directory: Path, given: str | None) -> str | None:
    """The base's Hub repository (``--model``, else what rigkit's fetcher recorded): its
    known counts are checked."""
    if given:
        return given
    try:
        repo = json.loads((directory / REPO_META).read_text()).get("repo")
    except (OSError, ValueError, AttributeError):
        return None
    return repo if isinstance(repo, str) else None


def run(
    base_dir: Path, inputs: dict[str, Path], recipes: list[str], out: Path, model: str | None, model_dir: Path
) -> int:
    base = LocalCheckpoint(base_dir)
    checkpoints: dict[str, LocalCheckpoint] = {
        role: base if path == base_dir else LocalCheckpoint(path) for role, path in inputs.items()
    }
    parts = {
        "recipes": [[r, RECIPES[r].version] for r in recipes],
        "base": fingerprint(base),
        "inputs": {role: fingerprint(c) for role, c in checkpoints.items()},
    }
    result = build(
        base,
        checkpoints,
        recipes,
        out,
        identity=identity_of(parts),
        model=known_model(model_dir, model),
        describe={"base": str(base_dir), **{role: str(p) for role, p in inputs.items()}},
        log=print,
    )
    for line in result.lines():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rigkit checkpoint", description=__doc__.split("::")[0].strip())
    sub = ap.add_subparsers(dest="recipe", required=True)
    hy = sub.add_parser("hybrid-fp8", help=f"{HYBRID.name} v{HYBRID.version}: shared experts from an FP8 checkpoint")
    hy.add_argument("--base", required=True, type=Path, help="the INT4 AutoRound checkpoint directory")
    hy.add_argument("--fp8", required=True, type=Path, help="the FP8 checkpoint directory")
    hy.add_argument("--out", required=True, type=Path, help="the output directory (replaced only when complete)")
    mt = sub.add_parser("mtp-index", help=f"{MTP_INDEX.name} v{MTP_INDEX.version}: MTP weights into a checkpoint")
    mt.add_argument("--source", required=True, type=Path, help="a checkpoint whose index maps the mtp.* tensors")
    mt.add_argument("--target", required=True, type=Path, help="the checkpoint to add them to (replaced when complete)")
    for p in (hy, mt):
        p.add_argument("--model", help="the base's Hub repository, whose known counts are checked (default: recorded)")
    args = ap.parse_args(argv)
    try:
        if args.recipe == "hybrid-fp8":
            return run(args.base, {"fp8": args.fp8}, [HYBRID.name], args.out, args.model, args.base)
        return run(args.target, {"mtp": args.source}, [MTP_INDEX.name], args.target, args.model, args.source)
    except (CheckpointError, OSError) as exc:
        print(f"rigkit checkpoint {args.recipe}: error: {exc}", file=sys.stderr)
        return 1
