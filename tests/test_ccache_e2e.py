"""
Rebuilds hit the compiler cache (issue 11): a second build of the same llama.cpp source and
flags in a new build directory is served from ccache, on a real sandbox host.

It reuses the session's first deploy (sandbox-1, llama-server built through pyinfra, whose
SSH session has no locale) and builds the same commit and flags again under a new build key,
from a shell with a locale as an operator's `ssh` sends one. Before the fix every object of such
a build missed (ccache hashes LANG/LC_*), and llama.cpp's unity sources, which #include
absolute paths, missed whenever the build directory changed.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter

import pytest

from rigkit.facts.llama_cpp import TOOL

pytestmark = pytest.mark.e2e

ROOT = "/opt/rigkit/llama.cpp"
KEY = "ccache-e2e"
STATS_LOG = "/tmp/rigkit-ccache-e2e.stats"


def outcomes(stats_log: str) -> dict[str, str]:
    """Per compiled file (as ccache names it), ``hit`` or ``miss``, from a ccache stats log."""
    result: dict[str, str] = {}
    current = None
    for line in stats_log.splitlines():
        if line.startswith("# "):
            current = line[2:]
        elif current and line in ("direct_cache_hit", "preprocessed_cache_hit"):
            result[current] = "hit"
        elif current and line == "cache_miss":
            result[current] = "miss"
    return result


def test_rebuild_in_a_new_build_dir_is_served_from_ccache(sandbox_hosts, first_deploy):
    sb = sandbox_hosts
    host = sb.hosts[0]
    info = json.loads(sb.ssh(host, f"cat {ROOT}/current/build.json"))
    sb.ssh(host, f"rm -rf {ROOT}/builds/*-{KEY} {STATS_LOG}")
    flags = " ".join(shlex.quote(f) for f in info["flags"])
    try:
        sb.ssh(
            host,
            f"LANG=C.UTF-8 LC_MESSAGES=C.UTF-8 CCACHE_STATSLOG={STATS_LOG} python3 {TOOL} build --root {ROOT} "
            f"--url {shlex.quote(info['url'])} --ref {info['commit']} --flags-hash {KEY} "
            f"--targets {','.join(info['targets'])} -- {flags}",
            timeout=1800,
        )
        rebuilt = json.loads(sb.ssh(host, f"cat {ROOT}/builds/b{info['build']}-{info['commit'][:9]}-{KEY}/build.json"))
        per_file = outcomes(sb.ssh(host, f"cat {STATS_LOG}"))
    finally:
        sb.ssh(host, f"rm -rf {ROOT}/builds/*-{KEY} {STATS_LOG}", check=False)

    assert rebuilt["commit"] == info["commit"] and rebuilt["flags"] == info["flags"]
    counts = Counter(per_file.values())
    assert counts["hit"] > 100, f"too few compilations seen: {counts}"
    missed = sorted(f for f, outcome in per_file.items() if outcome == "miss")
    assert not missed, f"{len(missed)} of {len(per_file)} compilations missed the cache: {missed[:20]}"
    print(f"rebuild in a new build dir: {counts['hit']}/{len(per_file)} ccache hits, {rebuilt['build_seconds']} s")
