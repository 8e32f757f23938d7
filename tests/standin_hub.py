"""A stand-in for the Hugging Face Hub (which cannot be reached from here): small files under
the real repository paths of an inventory's Hub models, served by rigkit's own mirror over the
Hub's download API, and the model lock `rigkit lock` makes from it."""

from __future__ import annotations

from pathlib import Path

from rigkit.hostdata import HubModel, parse_models
from rigkit.models import lock_command, lockfile, mirror

# The files the seeds name, as the Hub lays them out (a stand-in: a few bytes each).
SEED_FILES = {
    "unsloth/Qwen3.5-122B-A10B-GGUF": [
        f"UD-Q6_K_XL/Qwen3.5-122B-A10B-UD-Q6_K_XL-0000{i}-of-00004.gguf" for i in range(1, 5)
    ],
    "unsloth/Qwen3.5-397B-A17B-GGUF": ["Qwen3.5-397B-A17B-UD-TQ1_0.gguf"],
}


def standin_lock(root: Path, lock_path: Path, inventory: str) -> dict[str, lockfile.LockEntry]:
    """Lay out the seeds' files under ``root``, lock ``inventory``'s Hub models against them
    through the mirror (the real `rigkit lock` path), write ``lock_path``."""
    for repo, paths in SEED_FILES.items():
        for path in paths:
            (root / repo / path).parent.mkdir(parents=True, exist_ok=True)
            (root / repo / path).write_bytes(f"stand-in for {repo}/{path}\n".encode())
    srv = mirror.serve(str(root))
    try:
        entries = lock_command.lock_refs(
            lock_command.collect_model_refs(inventory), endpoint=srv.url, log=lambda _: None
        )
    finally:
        srv.stop()
    lockfile.dump(entries, lock_path, inventory=inventory)
    return entries


def resolved_seed_rig(tmp_path: Path, name: str, data: dict, inventory: str):
    """The seed inventory's rig with its ``ref:`` models resolved through a stand-in lock."""
    from rigkit.hostdata import parse_rig, resolve_model_refs

    lock_path = tmp_path / "rig.lock.yaml"
    standin_lock(tmp_path / "hub", lock_path, inventory)
    assert all(isinstance(m, HubModel) for m in parse_models(name, data["models"]))
    return resolve_model_refs(parse_rig(name, data), lockfile.load(lock_path), inventory)
