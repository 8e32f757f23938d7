"""Derived models (rigkit.checkpoints on a host): host data ``models[].derive`` validated whole,
``rigkit lock`` reading the FP8 input's ranges once and recording them, the lock's ranges
refused when hostile, and the models step's operations (built once, a no-op after)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from rigkit.checkpoints import recipes, synthetic
from rigkit.checkpoints.safetensors import read_header
from rigkit.hostdata import DerivedModel, HostDataError, HubModel, parse_rig, resolve_model_refs
from rigkit.models import lock_command, lockfile, mirror
from rigkit.models.lockfile import LockError
from rigkit.scripts import build_checkpoint

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
    # Of all shards the mirror sent the FP8 ranges, each once, and of the INT4 shards only
    # their headers (the memory plan's shape, rigkit.fit); the listing hashes small files like
    # config.json whole.
    sent = {p: n for p, n in hub.bytes_sent.items() if p.endswith(".safetensors")}
    int4_headers = sum(
        8 + read_header(hub_root / INT4 / f.path).header_len for f in int4.files if f.path.endswith(".safetensors")
    )
    assert sum(sent.values()) == fp8.ranges_bytes + int4_headers, hub.bytes_sent
    assert fp8.shape is not None and int4.shape is not None, out
    assert fp8.shape.layer_bytes and len(fp8.shape.recurrent) == 3 * fp8.shape.n_layer // 4
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
    # The service loads the output its inputs name (beside dest), so a rollback's unit names the
    # previous output; another lock entry for an input is another output.
    hybrid = rig.model_named("hybrid")
    assert (
        rig.services[0].model
        == rig.derived_output(hybrid)
        == build_checkpoint.output_dir(DEST, rig.derived_identity(hybrid))
    )
    changed = {key: dataclasses.replace(entry, sha="f" * 40) for key, entry in lock.items()}
    other = resolve_model_refs(parse_rig("h", rig_data()), changed, str(inv))
    assert other.services[0].model != rig.services[0].model and other.services[0].model.startswith("/srv/models/.")


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


# --------------------------------------------------------------------------- #
# The host's build: spec, switch, idempotency, the old output kept
# --------------------------------------------------------------------------- #


def host_rig(tmp_path: Path, text: str, endpoint: str):
    """The rig resolved through the lock, its model dirs under ``tmp_path`` (the host's roots)."""
    from rigkit.hostdata import parse_rig, resolve_model_refs

    root = str(tmp_path / "models")
    models = models_data()
    for m in models:
        m["dest"] = m["dest"].replace("/srv/models", root)
    data = {**rig_data(models), "model_roots": [root]}
    path = tmp_path / "derived.lock.yaml"
    path.write_text(text)
    return resolve_model_refs(parse_rig("h", data), lockfile.load(path), "derived.py")


def write_spec(tmp_path: Path, rig, endpoint: str) -> Path:
    from rigkit.models import derived

    (model,) = rig.derived_models
    spec = derived.spec_for(rig, model, endpoint=endpoint)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_builder(spec: Path) -> tuple[int, str]:
    import contextlib
    import io

    from rigkit.scripts import build_checkpoint

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = build_checkpoint.main([str(spec)])
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture
def placed(hub_root, tmp_path):
    """The INT4 input placed where the rig's base dest says (as the models step leaves it)."""
    dest = tmp_path / "models" / "int4"
    shutil.copytree(hub_root / INT4, dest)
    return dest


def test_the_host_builds_from_the_lock_and_a_rerun_changes_nothing(locked_text, hub, hub_root, placed, tmp_path):
    rig = host_rig(tmp_path, locked_text, hub.url)
    spec_file = write_spec(tmp_path, rig, hub.url)
    spec = json.loads(spec_file.read_text())
    dest = Path(spec["dest"])
    hub.reset_stats()
    rc, out = run_builder(spec_file)
    assert rc == 0, out
    assert "hybrid-fp8-shared-experts v1: replaced 144" in out and "skipped: no counterpart 408" in out
    # The INT4 base's index maps its MTP weights already: mtp-index finds all 785 there.
    assert "mtp-index v1: replaced 0, present 785" in out
    fp8 = next(e for e in rig.locks.values() if e.repo == FP8)
    assert hub.total_sent() == fp8.ranges_bytes  # only the locked ranges: the FP8 checkpoint is not fetched
    shards = sum(f.size for f in fp8.files if f.path.endswith(".safetensors"))
    assert f"{fp8.ranges_bytes} bytes fetched by range of {shards}" in out
    assert dest.is_symlink() and os.readlink(dest) == Path(spec["output"]).name
    manifest = json.loads((dest / ".rigkit-derived.json").read_text())
    assert manifest["identity"] == spec["identity"] and manifest["complete"] is True
    counts = {r["recipe"]: r["counts"] for r in manifest["recipes"]}
    assert counts[HYBRID]["replaced"] == 144 and counts[MTP]["present"] == 785
    # The replaced tensors are the FP8 checkpoint's bytes.
    from rigkit.checkpoints.sources import LocalCheckpoint

    built, fp8_local = LocalCheckpoint(dest), LocalCheckpoint(hub_root / FP8)
    name = "model.language_model.layers.7.mlp.shared_expert.down_proj.weight"
    assert b"".join(built.chunks(name)) == b"".join(fp8_local.chunks(name))
    # Again: nothing read, nothing built, the link unchanged.
    before = os.lstat(dest).st_mtime_ns
    hub.reset_stats()
    rc, out = run_builder(spec_file)
    assert rc == 0 and "up to date, nothing built" in out
    assert hub.total_sent() == 0 and os.lstat(dest).st_mtime_ns == before


def test_a_changed_input_builds_beside_and_keeps_the_previous_output(locked_text, hub, placed, tmp_path):
    rig = host_rig(tmp_path, locked_text, hub.url)
    first = json.loads(write_spec(tmp_path, rig, hub.url).read_text())
    assert run_builder(tmp_path / "spec.json")[0] == 0
    # The INT4 input changed (a new commit in the lock): a new identity, a new output beside.
    int4_key = next(k for k, e in rig.locks.items() if e.repo == INT4)
    locks = dict(rig.locks)
    locks[int4_key] = dataclasses.replace(locks[int4_key], sha="b" * 40)
    changed = dataclasses.replace(rig, locks=locks)
    second = json.loads(write_spec(tmp_path, changed, hub.url).read_text())
    assert second["identity"] != first["identity"] and second["output"] != first["output"]
    rc, out = run_builder(tmp_path / "spec.json")
    assert rc == 0, out
    dest = Path(second["dest"])
    assert os.readlink(dest) == Path(second["output"]).name
    assert (Path(first["output"]) / ".rigkit-derived.json").is_file()  # the previous, for a rollback


def test_an_output_a_last_verified_unit_names_outlives_two_changes(locked_text, hub, placed, tmp_path, monkeypatch):
    """Verified on output A; change 1 builds B (its start fails, the host rolls back to A's
    units); change 2 builds C. Keeping only the current and the previous output would remove
    A, which the last verified units still load: it stays, and B, which nothing names, goes."""
    from rigkit.scripts import build_checkpoint

    unit_dir, last_good = tmp_path / "systemd", tmp_path / "last-good"
    monkeypatch.setattr(build_checkpoint, "UNIT_DIR", unit_dir)
    monkeypatch.setattr(build_checkpoint, "LAST_GOOD", last_good)
    rig = host_rig(tmp_path, locked_text, hub.url)
    int4_key = next(k for k, e in rig.locks.items() if e.repo == INT4)
    outputs = []
    for sha in ("a" * 40, "b" * 40, "c" * 40):
        locks = dict(rig.locks)
        locks[int4_key] = dataclasses.replace(locks[int4_key], sha=sha)
        spec = json.loads(write_spec(tmp_path, dataclasses.replace(rig, locks=locks), hub.url).read_text())
        rc, out = run_builder(tmp_path / "spec.json")
        assert rc == 0, out
        outputs.append(Path(spec["output"]))
        if len(outputs) == 1:  # verified on A: the units installed and saved name it
            unit = f"ExecStart=/usr/bin/docker run -v {outputs[0]}:{outputs[0]}:ro img --model {outputs[0]}\n"
            (last_good / ".vllm-1" / "units").mkdir(parents=True)
            (last_good / "vllm").symlink_to(".vllm-1")
            (last_good / ".vllm-1" / "units" / "rigkit-vllm-q.service").write_text(unit)
            unit_dir.mkdir()
            (unit_dir / "rigkit-vllm-q.service").write_text(unit)
        elif len(outputs) == 2:  # B failed its check: the host restored A's units (installed = saved)
            assert "removed none" in out
    a, b, c = outputs
    assert os.readlink(Path(spec["dest"])) == c.name
    assert (a / ".rigkit-derived.json").is_file()  # named by the last verified unit
    assert (c / ".rigkit-derived.json").is_file() and (b / ".rigkit-derived.json").is_file()  # current, previous
    # Once nothing names A (a later verified state loads C), the next change removes it.
    for path in (unit_dir / "rigkit-vllm-q.service", last_good / ".vllm-1" / "units" / "rigkit-vllm-q.service"):
        path.write_text(path.read_text().replace(str(a), str(c)))
    locks = dict(rig.locks)
    locks[int4_key] = dataclasses.replace(locks[int4_key], sha="d" * 40)
    write_spec(tmp_path, dataclasses.replace(rig, locks=locks), hub.url)
    rc, out = run_builder(tmp_path / "spec.json")
    assert rc == 0, out
    assert not a.exists() and not b.exists() and c.is_dir()


def test_a_range_that_differs_from_the_lock_fails_and_keeps_the_last_good_output(locked_text, hub, placed, tmp_path):
    rig = host_rig(tmp_path, locked_text, hub.url)
    spec_file = write_spec(tmp_path, rig, hub.url)
    assert run_builder(spec_file)[0] == 0
    good = json.loads(spec_file.read_text())
    spec = copy.deepcopy(good)
    spec["identity"] = "c" * 64
    spec["output"] = good["output"][:-16] + "c" * 16
    tensor = next(r for r in spec["inputs"]["fp8"]["ranges"] if r["name"] != "__header__")
    tensor["sha256"] = "0" * 64  # the bytes the Hub sends are not the ones locked
    spec_file.write_text(json.dumps(spec))
    rc, out = run_builder(spec_file)
    assert rc == 1 and "the remote changed or lies" in out
    dest = Path(good["dest"])
    assert os.readlink(dest) == Path(good["output"]).name and not Path(spec["output"]).exists()
    assert json.loads((dest / ".rigkit-derived.json").read_text())["identity"] == good["identity"]


def test_a_dest_that_is_a_real_directory_is_left_as_it_is(locked_text, hub, placed, tmp_path):
    rig = host_rig(tmp_path, locked_text, hub.url)
    spec_file = write_spec(tmp_path, rig, hub.url)
    dest = Path(json.loads(spec_file.read_text())["dest"])
    dest.mkdir(parents=True)
    (dest / "mine").write_text("keep")
    rc, out = run_builder(spec_file)
    assert rc == 1 and "a directory rigkit did not make" in out
    assert (dest / "mine").read_text() == "keep" and not dest.is_symlink()


def test_a_spec_whose_output_is_not_its_identitys_is_refused(locked_text, hub, placed, tmp_path):
    rig = host_rig(tmp_path, locked_text, hub.url)
    spec_file = write_spec(tmp_path, rig, hub.url)
    spec = json.loads(spec_file.read_text())
    spec["output"] = "/etc/hybrid"
    spec_file.write_text(json.dumps(spec))
    rc, out = run_builder(spec_file)
    assert rc == 1 and "output: expected" in out and not Path(spec["dest"]).exists()


class FakeHost:
    """What the operation asks of pyinfra's host: the fact (the real script's answer on
    ``dest``) and the no-op it reports."""

    def __init__(self):
        self.noops: list[str] = []

    def get_fact(self, fact, **kwargs):
        import subprocess

        cmd = fact().command(**kwargs)
        args = [a.obj if hasattr(a, "obj") else a for a in cmd.bits]
        return fact().process(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines())

    def noop(self, why: str) -> None:
        self.noops.append(why)


def test_the_operation_builds_once_then_noops(locked_text, hub, placed, tmp_path, monkeypatch):
    from rigkit.operations import checkpoints as ops

    rig = host_rig(tmp_path, locked_text, hub.url)
    spec = json.loads(write_spec(tmp_path, rig, hub.url).read_text())
    fake = FakeHost()
    monkeypatch.setattr(ops, "host", fake)
    monkeypatch.setattr(ops.rendered.put, "_inner", lambda **kw: iter(["put " + kw["dest"]]))
    commands = [str(c) if isinstance(c, str) else c.get_raw_value() for c in ops.derived._inner(spec=spec)]
    assert commands[0] == f"put {ops.REMOTE_DIR}/derived/hybrid.json" and "build_checkpoint.py" in commands[1]
    assert fake.noops == []
    # The builder run on the host (as the command would), then the operation again: a no-op.
    assert run_builder(tmp_path / "spec.json")[0] == 0
    assert list(ops.derived._inner(spec=spec)) == []
    assert fake.noops == [f"{spec['dest']} -> {Path(spec['output']).name}: built from these inputs, complete"]
    # Another identity (an input changed) is built again.
    assert list(ops.derived._inner(spec={**spec, "identity": "d" * 64}))
