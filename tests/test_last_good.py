"""
Each engine's last verified state in its own directory, side by side (rigkit/scripts/last_good.py,
run on the host): a save replaces only its engine's state, in one rename; a host deployed by
the layout of before keeps its states across the move. (On a live host with both engines:
tests/test_engines_e2e.py.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rigkit.scripts.last_good import LastGood


class Host:
    """A host's unit directory, key files and the commands restore runs, recorded."""

    def __init__(self, tmp: Path):
        self.units, self.keys, self.root = tmp / "units", tmp / "keys", tmp / "last-good"
        self.units.mkdir()
        self.keys.mkdir()
        self.commands: list[list[str]] = []

    def run(self, argv, **kw):
        self.commands.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    def engine(self, name: str) -> LastGood:
        return LastGood(name, root=self.root, unit_dir=self.units, run=self.run)

    def service(self, prefix: str, name: str, unit_text: str, key: str | None = None) -> dict:
        unit = f"rigkit-{prefix}-{name}.service"
        (self.units / unit).write_text(unit_text)
        entry = {"name": name, "unit": unit, "key_file": None}
        if key is not None:
            path = self.keys / f"{name}.key"
            path.write_text(key)
            (self.keys / f"{name}.key.version").write_text("v1\n")
            entry["key_file"] = str(path)
        return entry


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_each_engine_saves_and_restores_only_its_own(host):
    llama, vllm = host.engine("llama.cpp"), host.engine("vllm")
    tiny = host.service("llama", "tiny", "[Service]\nExecStart=/good\n", key="k1")
    big = host.service("vllm", "big", "[Service]\nExecStart=/image-a\n")
    vllm.save({"services": [big]})
    for _ in range(3):  # every verified llama.cpp deploy saves again
        llama.save({"services": [tiny]}, build="builds/b1")
    assert vllm.state()["manifest"] == {"services": [big]}
    assert llama.state()["build"] == "builds/b1"
    assert sorted(p.name for p in host.root.iterdir() if not p.name.startswith(".")) == ["llama.cpp", "vllm"]
    assert len([p for p in host.root.iterdir() if p.name.startswith(".")]) == 2  # one target each, old ones gone

    # A vLLM deploy that fails puts back vLLM's unit; llama.cpp's files are not touched.
    (host.units / big["unit"]).write_text("[Service]\nExecStart=/image-b\n")
    (host.units / tiny["unit"]).write_text("[Service]\nExecStart=/new-llama\n")
    assert vllm.restore({"services": [big]})["manifest"]["services"] == [big]
    assert (host.units / big["unit"]).read_text() == "[Service]\nExecStart=/image-a\n"
    assert (host.units / tiny["unit"]).read_text() == "[Service]\nExecStart=/new-llama\n"
    # ... and llama.cpp's comes back with its key and the key's version marker.
    Path(tiny["key_file"]).write_text("k2")
    llama.restore({"services": [tiny]})
    assert (host.units / tiny["unit"]).read_text() == "[Service]\nExecStart=/good\n"
    assert Path(tiny["key_file"]).read_text() == "k1"
    assert Path(tiny["key_file"] + ".version").read_text() == "v1\n"


def test_a_save_is_one_rename_of_a_symlink(host):
    llama = host.engine("llama.cpp")
    tiny = host.service("llama", "tiny", "a")
    llama.save({"services": [tiny]})
    first = llama.link.resolve()
    llama.save({"services": [tiny]})
    assert llama.link.is_symlink() and llama.link.resolve() != first and not first.exists()
    assert (host.root.stat().st_mode & 0o777) == 0o700


def test_restore_stops_units_the_good_state_lacks_and_brings_back_users(host):
    llama = host.engine("llama.cpp")
    tiny = host.service("llama", "tiny", "a")
    llama.save({"services": [tiny]})
    extra = host.service("llama", "extra", "b")
    host.run = lambda argv, **kw: (  # `id llama-tiny` fails: the user went with its service
        host.commands.append(list(argv)) or subprocess.CompletedProcess(argv, 1 if argv[0] == "id" else 0)
    )
    llama.run = host.run
    llama.restore({"services": [tiny, extra]})
    assert ["systemctl", "disable", "--now", extra["unit"]] in host.commands
    assert ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "llama-tiny"] in host.commands


def test_no_saved_state_is_none(host):
    assert host.engine("vllm").state() is None
    assert host.engine("vllm").restore({"services": []}) is None


def test_states_of_the_layout_before_are_kept(host):
    """llama.cpp's state lay in last-good/ itself, vLLM's in last-good/vllm/ beside it (and the
    llama.cpp save of before deleted it: the bug this layout ends)."""
    tiny = host.service("llama", "tiny", "old llama unit", key="k1")
    big = host.service("vllm", "big", "old vllm unit", key="k9")
    root = host.root
    (root / "units").mkdir(parents=True)
    (root / "keys").mkdir()
    (root / "units" / tiny["unit"]).write_text("old llama unit")
    (root / "keys" / "tiny").write_text("k1")
    (root / "state.json").write_text(json.dumps({"manifest": {"services": [tiny]}, "build": "builds/b0"}))
    old_vllm = root / "vllm"
    (old_vllm / "units").mkdir(parents=True)
    (old_vllm / "keys").mkdir()
    (old_vllm / "units" / big["unit"]).write_text("old vllm unit")
    (old_vllm / "keys" / "big.key").write_text("k9")
    (old_vllm / "services.json").write_text(json.dumps({"services": [big]}))
    (old_vllm / "verified_at").write_text("2026-11-30T10:00:00Z\n")

    llama, vllm = host.engine("llama.cpp"), host.engine("vllm")
    assert llama.state()["build"] == "builds/b0"  # moved into last-good/llama.cpp
    assert not (root / "state.json").exists() and not (root / "units").exists()
    assert vllm.state()["manifest"] == {"services": [big]} and vllm.verified_at() == "2026-11-30T10:00:00Z"

    (host.units / big["unit"]).write_text("new")
    Path(big["key_file"]).write_text("changed")
    vllm.restore({"services": [big]})
    assert (host.units / big["unit"]).read_text() == "old vllm unit" and Path(big["key_file"]).read_text() == "k9"
    vllm.save({"services": [big]})  # the plain directory becomes the symlink
    assert vllm.link.is_symlink() and llama.state()["build"] == "builds/b0"


def test_a_verified_deploy_prunes_the_router_presets_no_unit_names(tmp_path, monkeypatch):
    """Each change of a router's models writes a new preset beside the old one (for a
    rollback). Once a deploy is verified and saved, presets that neither the installed units
    nor the last verified ones name go; the one they run with, and other files, stay."""
    from rigkit.scripts import llama_host

    host = Host(tmp_path)
    presets = tmp_path / "etc-rigkit-llama"
    presets.mkdir()
    current, old = presets / "tiny.0123456789abcdef.ini", presets / "tiny.fedcba9876543210.ini"
    other = presets / "big.00000000000000aa.ini"  # a removed router's
    for p in (current, old, other):
        p.write_text("[m]\nmodel = /srv/models/m.gguf\n")
    (presets / "tiny.key").write_text("k")
    (presets / "services.json").write_text("{}")
    (presets / "notes.ini").write_text("not a preset name")
    unit = f"ExecStart=/opt/rigkit/llama.cpp/current/bin/llama-server --models-preset {current} --models-max 2\n"
    svc = host.service("llama", "tiny", unit)
    good = host.engine("llama.cpp")
    good.save({"services": [svc]})
    monkeypatch.setattr(llama_host, "GOOD", good)
    monkeypatch.setattr(llama_host, "UNIT_DIR", host.units)
    monkeypatch.setattr(llama_host, "PRESET_DIR", presets)
    assert llama_host.prune_presets() == [other.name, old.name]
    assert current.is_file() and (presets / "tiny.key").is_file() and (presets / "notes.ini").is_file()
    assert llama_host.prune_presets() == []  # again: nothing more
