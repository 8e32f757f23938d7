"""Host data cannot become code: hostile values are refused with host, key and expectation;
the one systemd escaping function; the hardened unit's directives."""

from __future__ import annotations

import copy

import pytest

from rigkit.hostdata import HostDataError, parse_rig
from rigkit.render import llama_server
from rigkit.render.systemd import UnsafeValue, escape, exec_line


def base() -> dict:
    return {
        "gpus": {"count": 2, "cuda_arch": ["86"]},
        "llama_cpp": {"ref": "b8137"},
        "services": [{"name": "svc", "model": "/srv/models/m-00001-of-00002.gguf"}],
    }


def svc(**kw):
    return lambda d: d["services"][0].update(kw)


def llama(**kw):
    return lambda d: d["llama_cpp"].update(kw)


# (mutation, key named in the error): every reproducer of issue 10, and their neighbours.
HOSTILE = [
    (svc(extra_args=["--no-warmup", "\nExecStartPre=+/usr/bin/touch", "/root/pwned"]), "services[0].extra_args[1]"),
    (svc(alias="tiny\nUser=root\nX-a="), "services[0].alias"),
    (svc(host="0.0.0.0\nUser=root"), "services[0].host"),
    (svc(model="/srv/models/m.gguf\nExecStartPre=/bin/sh"), "services[0].model"),
    (llama(root="/opt/x\nUser=root"), "llama_cpp.root"),
    (svc(name="tiny\n"), "services[0].name"),
    (llama(ref="b11312\n"), "llama_cpp.ref"),
    (svc(extra_args=["--api-key=sekrit"]), "services[0].extra_args[0]"),
    (svc(extra_args=["--api-key-file=/tmp/k"]), "services[0].extra_args[0]"),
    (svc(extra_args=["--api-key", "sekrit"]), "services[0].extra_args[0]"),
    (svc(extra_args=["$(touch /root/pwned)"]), "services[0].extra_args[0]"),
    (svc(extra_args=["`id`"]), "services[0].extra_args[0]"),
    (svc(extra_args=["a b"]), "services[0].extra_args[0]"),
    (svc(extra_args=["%h"]), "services[0].extra_args[0]"),
    (svc(extra_args=["--x;touch /root/pwned"]), "services[0].extra_args[0]"),
    (svc(model="/srv/models/../../etc/m.gguf"), "services[0].model"),
    (svc(model="/srv//models/m.gguf"), "services[0].model"),
    (svc(model="ref:tiny\n"), "services[0].model"),
    (svc(display_name="x\ty"), "services[0].display_name"),
    (svc(display_name="$(id)"), "services[0].display_name"),
    (svc(alias="a b"), "services[0].alias"),
    (svc(alias="%n"), "services[0].alias"),
    (svc(host="rig.lan; touch /root/pwned"), "services[0].host"),
    (svc(host="0.0.0.0"), "services[0].host"),  # beyond loopback without a key
    (llama(root="/opt/../etc"), "llama_cpp.root"),
    (llama(root="relative/dir"), "llama_cpp.root"),
    (llama(git_url="https://x/y.git\n--upload-pack=touch"), "llama_cpp.git_url"),
    (llama(git_url="--upload-pack=touch /root/pwned"), "llama_cpp.git_url"),
    (llama(cmake_flags=["-DX=1 -DY=$(id)"]), "llama_cpp.cmake_flags[0]"),
    (llama(cmake_flags=["-DX=1\n"]), "llama_cpp.cmake_flags[0]"),
    (llama(targets=["llama-server;id"]), "llama_cpp.targets[0]"),
    (lambda d: d["gpus"].update(cuda_arch=["86\n"]), "gpus.cuda_arch[0]"),
    (lambda d: d.update(models=[{"upload": "/tmp/m\n", "dest": "/srv/models/m"}]), "models[0].upload"),
    (lambda d: d.update(models=[{"upload": "/tmp/m", "dest": "/srv/models/../m"}]), "models[0].dest"),
    (lambda d: d.update(models=[{"name": "m", "repo": "org/name\n", "dest": "/srv/models/m"}]), "models[0].repo"),
    (
        lambda d: d.update(models=[{"name": "m", "repo": "org/n", "revision": "$(id)", "dest": "/srv/models/m"}]),
        "models[0].revision",
    ),
    (
        lambda d: d.update(
            models=[{"name": "m", "repo": "org/n", "include": ["../../etc/*"], "dest": "/srv/models/m"}]
        ),
        "models[0].include",
    ),
    (lambda d: d.update(models=[{"name": "m\n", "repo": "org/n", "dest": "/srv/models/m"}]), "models[0].name"),
]


@pytest.mark.parametrize("mutate, key", HOSTILE)
def test_hostile_value_is_refused_naming_host_and_key(mutate, key):
    data = copy.deepcopy(base())
    mutate(data)
    with pytest.raises(HostDataError) as err:
        parse_rig("rig-7", data)
    assert err.value.host == "rig-7" and err.value.key == key, str(err.value)
    assert str(err.value).startswith(f"host rig-7: {key}: expected")


def test_listening_beyond_loopback_needs_a_key_or_saying_so(tmp_path):
    data = base()
    assert parse_rig("h", data).services[0].host == "127.0.0.1"  # the default
    data["services"][0].update(host="0.0.0.0", allow_unauthenticated=True)
    assert parse_rig("h", data).services[0].public
    data["services"][0].update(allow_unauthenticated=False, api_key_file=str(tmp_path / "k"))
    assert parse_rig("h", data).services[0].api_key_file


@pytest.mark.parametrize(
    "value, expected",
    [
        ("plain", "plain"),
        ("", '""'),
        ("a b", '"a b"'),
        ("50%", "50%%"),
        ("$HOME", "$$HOME"),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        (";", '";"'),
        ("it's", '"it\'s"'),
    ],
)
def test_escape_words(value, expected):
    assert escape(value) == expected


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "\x1b[31m", "tab\there"])
def test_control_characters_are_refused_not_escaped(value):
    with pytest.raises(UnsafeValue):
        escape(value)
    with pytest.raises(UnsafeValue):
        exec_line(["/bin/true", value])


def test_hardened_unit_directives():
    rig = parse_rig("h", base())
    cpu = llama_server.render_unit(rig.services[0], "/opt/rigkit/llama.cpp", gpu=False)
    gpu = llama_server.render_unit(rig.services[0], "/opt/rigkit/llama.cpp", gpu=True)
    for unit in (cpu, gpu):
        for directive in (
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "RestrictNamespaces=yes",
            "ProtectClock=yes",
            "ProtectKernelLogs=yes",
            "ProtectHostname=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "NoNewPrivileges=yes",
        ):
            assert directive in unit, directive
    assert "PrivateDevices=yes" in cpu and "DevicePolicy" not in cpu
    assert "MemoryDenyWriteExecute=yes" in cpu
    # GPU: a closed device policy with exactly the NVIDIA nodes; nothing that breaks CUDA's JIT.
    assert "PrivateDevices" not in gpu and "DevicePolicy=closed" in gpu
    assert "DeviceAllow=char-nvidia-frontend rw" in gpu and "DeviceAllow=char-nvidia-uvm rw" in gpu
    assert "MemoryDenyWriteExecute" not in gpu


class FakeHost:
    def __init__(self, data):
        self.name, self.data = "rig-7", data


@pytest.mark.parametrize(
    "key, value",
    [
        ("hf_endpoint", "http://mirror.lan:8080\nX: y"),
        ("hf_endpoint", "file:///etc/passwd"),
        ("hf_endpoint", "http://mirror.lan/$(id)"),
        ("hf_token_file", "/home/me/token\n"),
        ("model_lock", "/srv/rig.lock.yaml\n"),
    ],
)
def test_hostile_host_level_keys(key, value):
    from rigkit.hostdata import rig_for

    data = {**base(), "models": [{"name": "m", "repo": "org/n", "dest": "/srv/models/m"}], key: value}
    with pytest.raises(HostDataError) as err:
        rig_for(FakeHost(data))
    assert err.value.key == key
