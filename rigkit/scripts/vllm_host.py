#!/usr/bin/env python3
"""
rigkit's host-side tool for vLLM services in containers (stdlib only; uploaded to
/opt/rigkit/bin beside container_host.py, check_service.py and last_good.py): the container
layer's commands (``container_host.py``) for engine ``vllm``, the image built with rigkit's
patches and their self-check, and the MTP-weights check.

    vllm_host.py build  --context DIR --tag rigkit/vllm:HASH --base REF [--patches a,b]
    vllm_host.py mtp-check --model DIR      (MTP weights present and referenced by the index)
    vllm_host.py verify --manifest /etc/rigkit/vllm/services.json [--rollback]
    vllm_host.py restore --manifest ...     (explicit rollback to the last verified state)
    vllm_host.py status --manifest ...      (JSON: per service unit, container, image, health)
    vllm_host.py prune --repository rigkit/vllm --keep N

``build`` does nothing when the tag exists; otherwise it builds (a patch that does not apply
fails with its file and hunk), runs the image's self-check and removes the tag again if that
fails. ``verify`` runs check_service.py's checks; on failure it puts back the last verified
units and keys (which name the previous image), restarts, verifies that and fails with the
container's log tail.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

try:  # on the host: the sibling scripts in /opt/rigkit/bin; in the package: their modules
    import container_host
except ImportError:
    from rigkit.scripts import container_host

fail, log = container_host.fail, container_host.log
SELFCHECK = "/opt/rigkit/vllm/rigkit_vllm_patches/selfcheck.py"


def build(args: argparse.Namespace) -> None:
    args.build_arg = [f"PATCHES={args.patches}"]
    args.selfcheck = ["python3", SELFCHECK]
    container_host.build(args)


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


def main() -> None:
    parser, sub = container_host.parser("vllm_host.py", engine="vllm")
    sub.choices["build"].add_argument("--patches", default="")
    sub.add_parser("mtp-check").add_argument("--model", required=True)
    args = parser.parse_args()
    commands = {**container_host.COMMANDS, "build": build, "mtp-check": mtp_check}
    commands[args.command](args)


if __name__ == "__main__":
    main()
