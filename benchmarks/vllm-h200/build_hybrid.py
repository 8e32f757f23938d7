#!/usr/bin/env python3
"""
Seed 003's hybrid INT4+FP8 checkpoint, built by rigkit's derived-checkpoint code (the
``rigkit.checkpoints`` package of branch ckpt, carried as ``rigkit_checkpoints``): the
recipes ``hybrid-fp8-shared-experts`` (shared experts from the FP8 checkpoint, their
``extra_config`` marked) then ``mtp-index`` (the MTP tensors of the INT4 checkpoint in the
index), as ``rigkit checkpoint hybrid-fp8`` and ``rigkit checkpoint mtp-index`` run them.

    build_hybrid.py --ckpt-code DIR --int4 DIR --fp8 DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-code", required=True, type=Path, help="folder holding the rigkit_checkpoints package")
    ap.add_argument("--int4", required=True, type=Path)
    ap.add_argument("--fp8", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.ckpt_code))
    from rigkit_checkpoints.build import build, fingerprint, identity_of
    from rigkit_checkpoints.recipes import HYBRID, MTP_INDEX
    from rigkit_checkpoints.sources import LocalCheckpoint

    base, fp8 = LocalCheckpoint(args.int4), LocalCheckpoint(args.fp8)
    recipes = [HYBRID.name, MTP_INDEX.name]
    parts = {
        "recipes": [[HYBRID.name, HYBRID.version], [MTP_INDEX.name, MTP_INDEX.version]],
        "base": fingerprint(base),
        "inputs": {"fp8": fingerprint(fp8), "mtp": fingerprint(base)},
    }
    result = build(
        base,
        {"fp8": fp8, "mtp": base},
        recipes,
        args.out,
        identity=identity_of(parts),
        describe={"base": str(args.int4), "fp8": str(args.fp8), "mtp": str(args.int4)},
        log=print,
    )
    for line in result.lines():
        print(line)
    print(json.dumps({"reports": [r.counts() | {"block_size": r.block_size} for r in result.reports]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
