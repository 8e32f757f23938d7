"""
``rigkit lock INVENTORY``: every Hub model of a pyinfra inventory pinned to a commit and each
file's size and sha256 in ``<inventory stem>.lock.yaml`` (:mod:`rigkit.models.lockfile`), or
with ``--check`` only checked. Reads the inventory's host data through rigkit.hostdata, which
reads locks through lockfile: this module sits above both.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from urllib.parse import quote

from rigkit.checkpoints.recipes import RECIPES
from rigkit.checkpoints.safetensors import CheckpointError
from rigkit.checkpoints.sources import RangeReader, RemoteCheckpoint
from rigkit.fit import gguf
from rigkit.fit.gguf import GgufError
from rigkit.fit.shape import ModelShape, ShapeError, from_gguf, from_safetensors
from rigkit.hostdata.llama_server import SHARD
from rigkit.models.hub import HubClient, HubError, ModelRef, first_shard, read_token, resolve_endpoint
from rigkit.models.lockfile import LockEntry, LockError, check, dump, load, lock_path_for
from rigkit.transport import may_carry_token


def entries_for_inventory(inventory_path: str) -> tuple[list[ModelRef], dict[str, LockEntry]]:
    """What a deploy calls: the inventory's refs and their checked lock entries."""
    refs = collect_model_refs(inventory_path)
    lock = load(lock_path_for(inventory_path), inventory=inventory_path)
    return refs, check(refs, lock, inventory=inventory_path)


# --------------------------------------------------------------------------- #
# Model references of an inventory
# --------------------------------------------------------------------------- #


def collect_model_refs(inventory_path: str | os.PathLike) -> list[ModelRef]:
    """ModelRefs of the Hub models (host data ``models``, see rigkit.hostdata) of every host
    in a pyinfra Python inventory.

    Hosts are module-level lists/tuples of ``"name"`` or ``("name", {data})``;
    ``hf_endpoint`` in host data is the default endpoint for that host's models.
    Upload entries (``{"upload": ..., "dest": ...}``) need no lock and are skipped.
    """
    return list(collect_models(inventory_path))


def collect_models(inventory_path: str | os.PathLike) -> dict[ModelRef, set[str]]:
    """Each Hub model of the inventory (:func:`collect_model_refs`) -> the recipes that read it
    by range as an input of a derived model (empty when none does)."""
    from rigkit.hostdata.models import DerivedModel, HubModel, parse_models
    from rigkit.hostdata.rig import check_model_supply, insecure_http
    from rigkit.hostdata.schema import check_model_roots

    path = Path(inventory_path)
    spec = importlib.util.spec_from_file_location(f"_rigkit_inventory_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"inventory {path}: expected a Python inventory file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    refs: dict[ModelRef, set[str]] = {}
    for name, group in vars(mod).items():
        if name.startswith("_") or not isinstance(group, (list, tuple)):
            continue
        for item in group:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping)):
                continue
            host, data = item
            check_model_supply(str(host), data)
            roots = check_model_roots(data.get("model_roots"), str(host))
            parsed = parse_models(str(host), data.get("models"), roots, insecure_http(str(host), data))
            ranged: dict[str, set[str]] = {}
            for m in parsed:
                if isinstance(m, DerivedModel):
                    for recipe in m.derive.recipe_objects:
                        for role in recipe.ranged:
                            ranged.setdefault(m.derive.inputs[role], set()).add(recipe.name)
            for m in parsed:
                if isinstance(m, HubModel):
                    ref = m.ref
                    if ref.endpoint is None and data.get("hf_endpoint"):
                        ref = ModelRef(ref.repo, ref.revision, ref.include, ref.dest, data["hf_endpoint"])
                    refs.setdefault(ref, set()).update(ranged.get(m.name or "", ()))
    return refs


# --------------------------------------------------------------------------- #
# rigkit lock
# --------------------------------------------------------------------------- #


def lock_refs(
    refs: Iterable[ModelRef] | Mapping[ModelRef, set[str]],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    log=print,
) -> dict[str, LockEntry]:
    """Each reference's lock entry; for one a derived model reads by range (``refs`` a
    mapping to those recipes), the ranges it needs read once and recorded with their sha256."""
    ranged = refs if isinstance(refs, Mapping) else {}
    entries: dict[str, LockEntry] = {}
    clients: dict[str, HubClient] = {}
    for ref in refs:
        if ref.key in entries:
            continue
        ep = ref.endpoint or endpoint
        if (ep or "") not in clients:
            url = resolve_endpoint(ep)
            carried = token if token and may_carry_token(url) else None
            if token and not carried:
                log(f"{url}: plain http, the Hub token is not sent there")
            clients[ep or ""] = HubClient(ep, carried)
        client = clients[ep or ""]
        res = client.resolve(ref)
        listed = LockEntry(repo=ref.repo, revision=ref.revision, include=ref.include, sha=res.sha, files=res.files)
        # What the Hub (or a mirror) listed is as untrusted as a lock read back: checked alike.
        entries[ref.key] = LockEntry.from_data(ref.key, listed.to_data())
        e = entries[ref.key]
        log(f"locked {ref.key} -> {res.sha[:12]} ({len(e.files)} files, {e.total_bytes / 1e9:.2f} GB)")
        recipes = sorted(ranged.get(ref, ()))
        remote = None
        if recipes:
            e, remote = lock_ranges(e, client.endpoint, carried, recipes, log=log)
        shape = lock_shape(e, client.endpoint, carried, log=log, remote=remote)
        entries[ref.key] = LockEntry.from_data(ref.key, dataclasses.replace(e, shape=shape).to_data())
    return entries


#: The most of a config.json read (a model's is a few KB).
MAX_CONFIG_BYTES = 1 << 20


def lock_shape(
    entry: LockEntry, endpoint: str, token: str | None, log=print, remote: RemoteCheckpoint | None = None
) -> ModelShape | None:
    """What the memory plan needs of the model (rigkit.fit.shape), read by HTTP range: each
    GGUF file's header (the first few MB, more while the header runs on, bounded), or each
    safetensors header and config.json. None, said, when the files are neither or a header
    does not read (the plan then says the service is not planned). ``remote``: the
    checkpoint :func:`lock_ranges` read already (its headers are not read again)."""
    base = f"{endpoint.rstrip('/')}/{entry.repo}/resolve/{entry.sha}/"
    reader = RangeReader(lambda path: base + quote(path), token=token)
    ggufs = sorted((f for f in entry.files if f.path.endswith(".gguf")), key=lambda f: f.path)
    if ggufs:
        # The model llama-server loads: its first shard and the shards of that series (an
        # include may match other files, e.g. an mmproj or another quantization).
        try:
            first = first_shard(f.path for f in ggufs)
        except ValueError as exc:
            log(f"shape of {entry.repo}: not recorded ({exc})")
            return None
        series = SHARD.search(first)
        prefix = first[: series.start()] if series else first
        ggufs = [
            f for f in ggufs if f.path == first or (series and f.path.startswith(prefix + "-") and SHARD.search(f.path))
        ]
    tensors = {f.path: f.size for f in entry.files if f.path.endswith(".safetensors")}
    configs = [f for f in entry.files if f.path == "config.json"]
    try:
        if ggufs:
            headers = [
                gguf.read(partial(reader.read, f.path, 0, file_size=f.size), f.size, f"{entry.repo}/{f.path}")
                for f in ggufs
            ]
            shape = from_gguf(headers, entry.repo)
        elif tensors and configs and "/" not in next(iter(tensors)):
            if configs[0].size > MAX_CONFIG_BYTES:
                raise ShapeError(
                    f"{entry.repo}/config.json: {configs[0].size} bytes, expected at most {MAX_CONFIG_BYTES}"
                )
            config = (
                json.loads(reader.read("config.json", 0, configs[0].size, configs[0].size)) if configs[0].size else {}
            )
            if not isinstance(config, dict):
                raise ShapeError(f"{entry.repo}/config.json: expected a JSON object")
            remote = remote or RemoteCheckpoint(f"{entry.repo}@{entry.sha[:12]}", reader, tensors)
            sizes = {n: h.tensors[n].nbytes for h in remote.headers.values() for n in h.tensors}
            shape = from_safetensors(sizes, config, entry.repo)
        else:
            return None
    except (GgufError, ShapeError, CheckpointError, ValueError) as exc:
        log(f"shape of {entry.repo}: not recorded ({exc}); its services are not planned")
        return None
    log(
        f"shape of {entry.repo}: {shape.arch}, {shape.n_layer} layers ({len(shape.recurrent)} recurrent), "
        f"{shape.weight_bytes / 1e9:.2f} GB of weights; {reader.fetched} bytes read in {reader.requests} request(s)"
    )
    return shape


def lock_ranges(
    entry: LockEntry, endpoint: str, token: str | None, recipes: list[str], log=print
) -> tuple[LockEntry, RemoteCheckpoint]:
    """``entry`` with the byte ranges the recipes read of it: every safetensors header, then
    each tensor a recipe may take, read once by HTTP range and hashed (the Hub's sha256
    covers whole files only; every host checks its reads against these); and the checkpoint
    read so (its headers give the model's shape)."""
    files = {f.path: f.size for f in entry.files if f.path.endswith(".safetensors")}
    base = f"{endpoint.rstrip('/')}/{entry.repo}/resolve/{entry.sha}/"
    reader = RangeReader(lambda path: base + quote(path), token=token)
    try:
        remote = RemoteCheckpoint(f"{entry.repo}@{entry.sha[:12]}", reader, files)
        wanted = sorted({name for r in recipes for name in RECIPES[r].wanted(remote)})
        for name in wanted:
            for _ in remote.chunks(name):
                pass  # hashed by the checkpoint as it streams
    except CheckpointError as exc:
        raise LockError(f"{entry.repo}: reading the ranges {', '.join(recipes)} needs: {exc}") from None
    ranges = tuple(sorted(remote.seen.values(), key=lambda r: (r.path, r.start)))
    log(
        f"ranges of {entry.repo} for {', '.join(recipes)}: {len(wanted)} tensor(s) and {len(files)} header(s), "
        f"{reader.fetched} bytes read of {entry.total_bytes} ({100 * reader.fetched / max(entry.total_bytes, 1):.2f}%) "
        f"in {reader.requests} request(s)"
    )
    return dataclasses.replace(entry, ranges=ranges), remote


def lock_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="rigkit lock",
        description="Pin every model reference of an inventory "
        "to a commit and per-file sha256; writes <inventory stem>.lock.yaml next to it.",
    )
    ap.add_argument("inventory", help="Python inventory file")
    ap.add_argument(
        "--endpoint",
        help="Hub endpoint (default: model 'endpoint', host 'hf_endpoint', $HF_ENDPOINT, https://huggingface.co)",
    )
    ap.add_argument(
        "--token-file",
        help="file holding the Hub token (default: $HF_TOKEN, $HF_TOKEN_PATH, ~/.cache/huggingface/token)",
    )
    ap.add_argument("--check", action="store_true", help="only check that the lockfile matches the inventory")
    args = ap.parse_args(argv)
    try:
        lp = lock_path_for(args.inventory)
        if args.check:
            refs, _ = entries_for_inventory(args.inventory)
            print(f"{lp}: {len(refs)} model reference(s) locked")
            return 0
        models = collect_models(args.inventory)
        entries = lock_refs(models, endpoint=args.endpoint, token=read_token(args.token_file))
        dump(entries, lp, inventory=args.inventory)
        print(f"wrote {lp} ({len(entries)} model(s))")
        return 0
    except (HubError, LockError, ValueError, OSError) as e:
        print(f"rigkit lock: error: {e}", file=sys.stderr)
        return 1
