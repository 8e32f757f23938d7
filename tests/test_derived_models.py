"""Derived models (rigkit.checkpoints on a host): host data ``models[].derive`` validated whole,
``rigkit lock`` reading the FP8 input's ranges once and recording them, the lock's ranges
refused when hostile, and the models step's operations (built once, a no-op after)."""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from rigkit.checkpoints import recipes, synthetic
from rigkit.hostdata import DerivedModel, HostDataError, HubModel, parse_rig, resolve_model_refs
from rigkit.models import lock_command, lockfile, mirror
from rigkit.models.lockfile import LockError

HYBRID, MTP = recipes.HYBRID.name, recipes.MTP_INDEX.name
INT4, FP8 = synthetic.INT4_REPO, synthetic.FP8_REPO
DEST = "/srv/models/qwen-hybrid"


def models_data() -> list[dict]:
    return [
        {"name": "int4", "repo": INT4, "dest": "/srv/models/int4"},
        {"name": "fp8", "repo": FP8, "dest": "/srv/models/fp8"},
        {
            "name": "hybrid",
            "derive": {"recipes": [HYBRID, f"{MTP}@1"], "inputs": {"base": "int4", "fp8": "fp8", "mtp": "int4"}},
            "dest": DEST,
        },
    ]


def rig_data(models=None, service_model="ref:hybrid") -> dict:
    return {
        "models": models_data() if models is None else models,
        "services": [
            {
                "name": "qwen",
                "engine": "vllm",
                "model": service_model,
                "port": 8000,
                "base_image": "vllm/vllm-openai:v0.20.2",
            }
        ],
    }


# --------------------------------------------------------------------------- #
# Host data
# --------------------------------------------------------------------------- #


def test_a_derived_model_is_typed_and_its_fp8_input_is_not_placed():
    rig = parse_rig("h", rig_data())
    (derived,) = rig.derived_models
    assert isinstance(derived, DerivedModel) and derived.dest == DEST
    assert derived.derive.recipes == (HYBRID, f"{MTP}@1")
    assert [r.name for r in derived.derive.recipe_objects] == [HYBRID, MTP]
    assert derived.derive.ranged_roles == {"fp8"}
    # The FP8 checkpoint is read by range only: never placed whole; the INT4 one is.
    assert rig.ranged_only == {"fp8"}
    assert [m.name for m in rig.placed_models if isinstance(m, HubModel)] == ["int4"]


def test_a_derived_model_of_a_derived_model_is_built_after_it():
    models = models_data()
    models.append(
        {
            "name": "again",
            "derive": {"recipes": [MTP], "inputs": {"base": "hybrid", "mtp": "int4"}},
            "dest": "/srv/models/again",
        }
    )
    models.insert(0, models.pop())  # declared first, built second
    rig = parse_rig("h", rig_data(models))
    assert [m.name for m in rig.derived_models] == ["hybrid", "again"]


def _with(change) -> list[dict]:
    models = copy.deepcopy(models_data())
    change(models[2])
    return models


HOSTILE = {
    "unknown recipe": (lambda d: d["derive"].update(recipes=["hybrid-fp9"]), r"models\[2\]\.derive\.recipes\[0\]"),
    "recipe version this rigkit lacks": (
        lambda d: d["derive"].update(recipes=[f"{HYBRID}@2"]),
        r"hybrid-fp8-shared-experts@1",
    ),
    "recipe with a path": (lambda d: d["derive"].update(recipes=["../hybrid"]), r"derive\.recipes\[0\]"),
    "no recipe": (lambda d: d["derive"].update(recipes=[]), r"derive\.recipes"),
    "recipe twice": (lambda d: d["derive"].update(recipes=[MTP, MTP]), r"each recipe once"),
    "input not in the inventory": (lambda d: d["derive"]["inputs"].update(fp8="fp8-missing"), r"inputs\.fp8"),
    "input is itself": (lambda d: d["derive"]["inputs"].update(mtp="hybrid"), r"another model than this one"),
    "unknown role": (lambda d: d["derive"]["inputs"].update(draft="int4"), r"inputs\.draft"),
    "missing role": (lambda d: d["derive"]["inputs"].pop("fp8"), r"inputs\.fp8"),
    "role with a path": (lambda d: d["derive"]["inputs"].update({"../base": "int4"}), r"one of the roles"),
    "unknown derive key": (lambda d: d["derive"].update(script="rm -rf /"), r"derive\.script"),
    "unknown key": (lambda d: d.update(repo=INT4), r"models\[2\]\.repo"),
    "name with a slash": (lambda d: d.update(name="../hybrid"), r"models\[2\]\.name"),
    "dest outside the model roots": (lambda d: d.update(dest="/etc/hybrid"), r"models\[2\]\.dest"),
    "dest with ..": (lambda d: d.update(dest="/srv/models/../../etc"), r"models\[2\]\.dest"),
    "dest a root": (lambda d: d.update(dest="/srv/models"), r"not the root itself"),
    "dest inside an input": (lambda d: d.update(dest="/srv/models/int4/hybrid"), r"apart from models\[0\]"),
    "dest a newline": (lambda d: d.update(dest="/srv/models/x\nExecStart=/bin/sh"), r"models\[2\]\.dest"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_derived_models_are_refused(case):
    change, message = HOSTILE[case]
    with pytest.raises(HostDataError, match=message):
        parse_rig("h", rig_data(_with(change)))


def test_a_fp8_input_that_is_derived_is_refused():
    models = models_data()
    models.append(
        {
            "name": "other",
            "derive": {"recipes": [MTP], "inputs": {"base": "int4", "mtp": "int4"}},
            "dest": "/srv/models/o",
        }
    )
    models[2]["derive"]["inputs"]["fp8"] = "other"
    with pytest.raises(HostDataError, match=r"inputs\.fp8: expected a Hub model"):
        parse_rig("h", rig_data(models))


def test_a_cycle_of_derived_models_is_refused():
    models = models_data()
    models.append(
        {
            "name": "other",
            "derive": {"recipes": [MTP], "inputs": {"base": "hybrid", "mtp": "int4"}},
            "dest": "/srv/models/o",
        }
    )
    models[2]["derive"]["inputs"]["base"] = "other"
    with pytest.raises(HostDataError, match=r"without a cycle .*hybrid -> other -> hybrid"):
        parse_rig("h", rig_data(models))


def test_a_llama_cpp_service_on_a_derived_model_is_refused():
    data = rig_data()
    data["llama_cpp"] = {"ref": "b8137", "cuda": False}
    data["services"] = [{"name": "q", "model": "ref:hybrid", "port": 8000}]
    with pytest.raises(HostDataError, match=r"services\[0\]\.model: expected a GGUF model"):
        parse_rig("h", data)


# --------------------------------------------------------------------------- #
# rigkit lock: the FP8 input's ranges, read once
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory) -> Path:
    """The two checkpoints under their Hub repository paths (what the mirror serves)."""
    root = tmp_path_factory.mktemp("hub")
    synthetic.write_int4_autoround(root / INT4)
    synthetic.write_fp8(root / FP8)
    return root


@pytest.fixture
def hub(hub_root):
    srv = mirror.serve(str(hub_root))
    try:
        yield srv
    finally:
        srv.stop()


def write_inventory(tmp_path: Path, endpoint: str) -> Path:
    inv = tmp_path / "derived.py"
    inv.write_text(
        textwrap.dedent(f"""
        hosts = [("h", {{"hf_endpoint": {endpoint!r}, "hf_insecure_http": True, "models": {models_data()!r}}})]
        """)
    )
    return inv


def test_lock_records_the_fp8_tensors_ranges_read_once(hub, hub_root, tmp_path, capsys):
    inv = write_inventory(tmp_path, hub.url)
    hub.reset_stats()
    assert lock_command.lock_main([str(inv)]) == 0
    out = capsys.readouterr().out
    lock = lockfile.load(lockfile.lock_path_for(inv))
    fp8 = next(e for e in lock.values() if e.repo == FP8)
    int4 = next(e for e in lock.values() if e.repo == INT4)
    assert int4.ranges == ()  # placed whole: its files' sha256 are the lock's
    headers = [r for r in fp8.ranges if r.name == "__header__"]
    tensors = [r for r in fp8.ranges if r.name != "__header__"]
    shards = sorted(f.path for f in fp8.files if f.path.endswith(".safetensors"))
    assert sorted(r.path for r in headers) == shards
    # 144 shared-expert layers, weight and scale each; nothing else of the FP8 checkpoint.
    assert len(tensors) == 2 * 144
    assert all(".mlp.shared_expert." in r.name and not r.name.startswith("mtp.") for r in tensors)
    whole = fp8.total_bytes
    # Of all shards the mirror sent the FP8 ranges, each once, and nothing else (the INT4
    # shards are not read at lock time; the listing hashes small files like config.json whole).
    sent = {p: n for p, n in hub.bytes_sent.items() if p.endswith(".safetensors")}
    assert sum(sent.values()) == fp8.ranges_bytes, hub.bytes_sent
    assert fp8.ranges_bytes < whole / 5
    assert f"{fp8.ranges_bytes} bytes read of {whole}" in out
    # Each range's sha256 is the sha256 of those bytes of the file.
    import hashlib

    for r in fp8.ranges[:5] + fp8.ranges[-5:]:
        with open(hub_root / FP8 / r.path, "rb") as f:
            f.seek(r.start)
            assert hashlib.sha256(f.read(r.size)).hexdigest() == r.sha256
    # The lock resolves the rig: a deploy with this lock reads only those ranges.
    rig = resolve_model_refs(parse_rig("h", rig_data()), lock, str(inv))
    assert rig.services[0].model == DEST


def test_a_lock_without_the_ranges_stops_the_deploy(hub, tmp_path):
    inv = write_inventory(tmp_path, hub.url)
    entries = lock_command.lock_refs(lock_command.collect_model_refs(inv), endpoint=hub.url, log=lambda _: None)
    with pytest.raises(LockError, match=r"(?s)no tensor ranges, which derived model hybrid reads \(fp8\).*rigkit lock"):
        resolve_model_refs(parse_rig("h", rig_data()), entries, str(inv))


@pytest.fixture(scope="module")
def locked_text(hub_root, tmp_path_factory) -> str:
    """The inventory's lock as ``rigkit lock`` writes it (made once for the module)."""
    srv = mirror.serve(str(hub_root))
    try:
        inv = write_inventory(tmp_path_factory.mktemp("lock"), srv.url)
        assert lock_command.lock_main([str(inv)]) == 0
        return lockfile.lock_path_for(inv).read_text()
    finally:
        srv.stop()


def locked_fp8_data(tmp_path: Path, text: str) -> tuple[str, dict, Path]:
    path = tmp_path / "derived.lock.yaml"
    path.write_text(text)
    data = yaml.safe_load(text)
    key = next(k for k, e in data["models"].items() if e["repo"] == FP8)
    return key, data, path


def _tensor(entry: dict) -> dict:
    return next(r for r in entry["ranges"] if r["name"] != "__header__")


HOSTILE_RANGES = {
    "path with ..": (lambda e: _tensor(e).update(path="../../etc/shadow"), r"ranges\[\d+\]\.path"),
    "path not of the entry": (lambda e: _tensor(e).update(path="other.safetensors"), r"ranges\[\d+\]\.path"),
    "negative start": (lambda e: _tensor(e).update(start=-1), r"ranges\[\d+\]\.start"),
    "boolean size": (lambda e: _tensor(e).update(size=True), r"ranges\[\d+\]\.size"),
    "beyond the file": (lambda e: _tensor(e).update(start=2**64), r"end beyond"),
    "inside the header": (lambda e: _tensor(e).update(start=4), r"inside the header"),
    "sha256 not hex": (lambda e: _tensor(e).update(sha256="z" * 64), r"sha256: expected a sha256"),
    "sha256 upper case": (lambda e: _tensor(e).update(sha256=_tensor(e)["sha256"].upper()), r"sha256: expected"),
    "unknown key": (lambda e: _tensor(e).update(url="http://evil/"), r"unknown key 'url'"),
    "tensor name with ..": (lambda e: _tensor(e).update(name="a/../b"), r"expected a tensor name"),
    "twice": (lambda e: e["ranges"].append(dict(_tensor(e))), r"each range once"),
    "no header range": (
        lambda e: e.update(ranges=[r for r in e["ranges"] if r["name"] != "__header__"]),
        r"no __header__",
    ),
    "header not at 0": (
        lambda e: next(r for r in e["ranges"] if r["name"] == "__header__").update(start=1),
        r"starts the file",
    ),
    "empty": (lambda e: e.update(ranges=[]), r"ranges: expected a non-empty list"),
    "not a list": (lambda e: e.update(ranges={"a": 1}), r"ranges: expected a non-empty list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RANGES))
def test_hostile_lock_ranges_are_refused(case, locked_text, tmp_path):
    key, data, path = locked_fp8_data(tmp_path, locked_text)
    change, message = HOSTILE_RANGES[case]
    change(data["models"][key])
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LockError, match=message):
        lockfile.load(path)


def test_lock_ranges_round_trip(locked_text, tmp_path):
    key, data, path = locked_fp8_data(tmp_path, locked_text)
    lock = lockfile.load(path)
    assert lock[key].to_data() == data["models"][key]
    lockfile.dump(lock, path)
    assert lockfile.load(path) == lock
    assert os.path.getsize(path) > 0
