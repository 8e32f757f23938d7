"""
The option tables of the engines rigkit pins: every spelling each engine's command-line
parser accepts, its arity and (where the engine's own code says so) its value kind, as JSON
data generated from the engine's sources by :mod:`rigkit.hostdata.option_tables.generate`.

A table is ``{"engine", "version", "source", "rules", "options"}``; ``options`` maps every
accepted spelling (aliases and negative ``--no-`` forms each their own entry) to
``{"canonical": <the option's first long spelling>, "arity": 0|1|2, "kind": "int" | "float" |
"json" | "text" | "bool"}`` (``kind`` of arity-0 options is ``"flag"``). ``rules`` records how
that engine's parser matches argv (see :mod:`rigkit.hostdata.engine_args`).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

#: llama-server tables by build number, vLLM tables by version; the newest is the last.
LLAMA_SERVER_BUILDS = (9976, 11312)
VLLM_VERSIONS = ("0.19.1", "0.20.2")
#: SGLang tables by version (lmsysorg/sglang:v<version>-cu130 images).
SGLANG_VERSIONS = ("0.5.12",)
BUILD_TAG = re.compile(r"b([0-9]+)", re.ASCII)
VERSION = re.compile(r"v?([0-9]+(?:\.[0-9]+){1,2})", re.ASCII)
# lmsysorg/sglang tags: v0.5.12, v0.5.12-cu130, v0.5.12.post1-cu130-amd64
SGLANG_TAG = re.compile(r"v?([0-9]+\.[0-9]+\.[0-9]+(?:\.post[0-9]+)?)(?:-[A-Za-z0-9_.-]+)?", re.ASCII)


@cache
def load(name: str) -> dict[str, Any]:
    """The committed table ``<name>.json`` (e.g. ``llama-server-b11312``)."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    table: dict[str, Any] = json.loads(text)
    return table


def llama_server_table(ref: str | None) -> dict[str, Any]:
    """The table for a ``llama_cpp.ref``: a build tag's own table, else the nearest older one
    (options are rarely removed, so an older table refuses new options but never accepts a
    removed one rigkit did not know); a commit sha (or none): the newest table."""
    m = BUILD_TAG.fullmatch(ref or "")
    build = LLAMA_SERVER_BUILDS[-1]
    if m:
        older = [b for b in LLAMA_SERVER_BUILDS if b <= int(m.group(1))]
        build = older[-1] if older else LLAMA_SERVER_BUILDS[0]
    return load(f"llama-server-b{build}")


def vllm_version(base_image: str | None) -> str | None:
    """The vLLM version a base image's tag names (``vllm/vllm-openai:v0.20.2`` -> ``0.20.2``),
    or None (a digest, a tag that is not a version)."""
    tag = (base_image or "").split("@", 1)[0].rpartition("/")[2].partition(":")[2]
    m = VERSION.fullmatch(tag)
    return m.group(1) if m else None


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def vllm_table(base_image: str | None) -> dict[str, Any]:
    """The table for a vLLM base image: the one of its tag's release line (``v0.20.0`` ->
    0.20.2's: patch releases keep their options), else the nearest older line's (older than
    any: the oldest); no version in the tag: the newest table."""
    version = vllm_version(base_image)
    if version is None:
        return load(f"vllm-{VLLM_VERSIONS[-1]}")
    line = _release(version)[:2]
    older = [v for v in VLLM_VERSIONS if _release(v)[:2] <= line]
    return load(f"vllm-{older[-1] if older else VLLM_VERSIONS[0]}")


def sglang_table(image: str | None) -> dict[str, Any]:
    """The table for an ``lmsysorg/sglang`` image: the version in its tag
    (``lmsysorg/sglang:v0.5.12-cu130``), else (a digest, an unknown version) the newest table."""
    tag = (image or "").split("@", 1)[0].rpartition("/")[2].partition(":")[2]
    m = SGLANG_TAG.fullmatch(tag)
    version = m.group(1) if m and m.group(1) in SGLANG_VERSIONS else SGLANG_VERSIONS[-1]
    return load(f"sglang-{version}")
