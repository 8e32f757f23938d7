"""Facts run their real commands locally (a shell is a shell) and parse what they print."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from rigkit.facts.llama_cpp import LlamaCppBuilds
from rigkit.facts.models import ShardsVerified


def run_fact(fact, **kwargs):
    command = fact.command(**kwargs)
    raw = command if isinstance(command, str) else command.get_raw_value()
    out = subprocess.run(raw, shell=True, capture_output=True, text=True, check=True).stdout
    return fact.process(out.splitlines())


def test_shards_verified_by_fetch_shards_rule_without_hashing(tmp_path):
    shard = tmp_path / "m-00001-of-00002.gguf"
    shard.write_bytes(b"x" * 10)
    sha = hashlib.sha256(b"x" * 10).hexdigest()
    state = tmp_path / ".rigkit-verified.json"
    state.write_text(
        json.dumps(
            {"version": 1, "files": {str(shard): {"size": 10, "mtime_ns": shard.stat().st_mtime_ns, "sha256": sha}}}
        )
    )
    files = [(str(shard), 10, sha), (str(tmp_path / "m-00002-of-00002.gguf"), 5, "0" * 64)]
    command = ShardsVerified().command(state_file=str(state), files=files).get_raw_value()
    assert "class State" not in command and "def is_verified" not in command  # no shipped class source
    assert run_fact(ShardsVerified(), state_file=str(state), files=files) == {
        str(shard): "verified",
        files[1][0]: "missing",
    }
    os.utime(shard, ns=(0, 0))  # touched since it was hashed
    assert run_fact(ShardsVerified(), state_file=str(state), files=files)[str(shard)] == "unverified"
    state.write_text("{not json")
    assert run_fact(ShardsVerified(), state_file=str(state), files=files)[str(shard)] == "unverified"


def test_llama_builds_fact_quotes_its_root(tmp_path):
    root = tmp_path / "odd root; $(touch pwned)"
    build = root / "builds" / "b1-abc-123"
    build.mkdir(parents=True)
    (build / "build.json").write_text(json.dumps({"ref": "b1", "commit": "abc", "flags_hash": "123"}))
    (root / "current").symlink_to("builds/b1-abc-123")
    facts = run_fact(LlamaCppBuilds(), root=str(root))
    assert facts["current"] == "b1-abc-123" and facts["builds"]["b1-abc-123"]["ref"] == "b1"
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    assert run_fact(LlamaCppBuilds(), root=str(tmp_path / "missing")) == LlamaCppBuilds.default()


def test_system_user_fact_reads_one_user_and_its_group(tmp_path):
    from rigkit.facts.users import SystemUser

    root = run_fact(SystemUser(), user="root")
    assert root["home"] == "/root" and root["group"] is True and root["shell"]
    assert run_fact(SystemUser(), user="rigkit-no-such-user") == {"home": None, "shell": None, "group": False}
    # A name with "--" in it (service names allow it) is read whole.
    assert SystemUser().process(["vllm-a--b:x:990:990::/var/lib/rigkit-vllm-a--b:/usr/sbin/nologin", "--", "x"]) == {
        "home": "/var/lib/rigkit-vllm-a--b",
        "shell": "/usr/sbin/nologin",
        "group": True,
    }
    hostile = f"x; touch {tmp_path}/pwned"
    assert run_fact(SystemUser(), user=hostile)["home"] is None
    assert not (tmp_path / "pwned").exists()


def test_missing_packages_asks_dpkg_for_just_those(tmp_path):
    from rigkit.facts.packages import MissingPackages

    assert run_fact(MissingPackages(), packages=("dpkg", "rigkit-no-such-package", "bash")) == [
        "rigkit-no-such-package"
    ]
    hostile = f"$(touch {tmp_path}/pwned)"
    assert run_fact(MissingPackages(), packages=(hostile,)) == [hostile]
    assert not (tmp_path / "pwned").exists()


def test_unit_states_from_one_systemctl_show():
    from rigkit.facts.units import UnitStates

    command = UnitStates().command(units=("rigkit-llama-tiny.service", "x;reboot.timer")).get_raw_value()
    assert command.endswith("-- rigkit-llama-tiny.service 'x;reboot.timer'")
    output = (
        "Id=rigkit-llama-tiny.service\nLoadState=loaded\nSubState=running\nUnitFileState=enabled\n\n"
        "Id=rigkit-watchdog-tiny.timer\nLoadState=loaded\nSubState=dead\nUnitFileState=disabled\n\n"
        "Id=gone.service\nLoadState=not-found\nSubState=dead\nUnitFileState=\n"
    ).splitlines()
    assert UnitStates().process(output) == {
        "rigkit-llama-tiny.service": {"running": True, "enabled": True},
        "rigkit-watchdog-tiny.timer": {"running": False, "enabled": False},
    }


def test_per_run_reads_once_until_forgotten():
    from rigkit.facts import per_run
    from rigkit.facts.units import UnitStates

    class Host:
        asked = 0

        def get_fact(self, fact, **kwargs):
            self.asked += 1
            return {"asked": self.asked, **kwargs}

    host, other = Host(), Host()
    assert per_run.read(host, UnitStates, units=("a",)) == {"asked": 1, "units": ("a",)}
    assert per_run.read(host, UnitStates, units=("a",))["asked"] == 1
    assert per_run.read(host, UnitStates, units=("b",))["asked"] == 2  # another batch
    assert per_run.read(other, UnitStates, units=("a",))["asked"] == 1  # another host
    per_run.forget(host, UnitStates)
    assert per_run.read(host, UnitStates, units=("a",))["asked"] == 3
