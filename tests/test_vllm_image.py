"""The vLLM image built for real by Docker (a dockerd this test starts and stops) with
rigkit's host tool, on a base that carries vLLM 0.19.1's real sources from PyPI's wheel:
every patch applies, the image passes its self-check, the same inputs do not build again, a
changed patch makes a new tag, a patch that does not apply fails naming its file and hunk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_docker import Dockerd, import_base

from rigkit.hostdata import parse_rig
from rigkit.hostdata.vllm import IMAGE_SOURCE
from rigkit.render.vllm import image_identity

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"), reason="needs root and dockerd"),
]
TOOL = Path(__file__).resolve().parents[1] / "rigkit/scripts/vllm_host.py"
BASE = "rigkit-test/vllm-base:0.19.1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    work = Path(tmp_path_factory.mktemp("docker"))
    dockerd = Dockerd(work).start()
    try:
        import_base(dockerd, BASE, work)
        yield dockerd
    finally:
        dockerd.stop()


def build(engine: Dockerd, source: Path, patches: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    opts = (
        parse_rig(
            "h",
            {
                "services": [
                    {"name": "s", "engine": "vllm", "model": "/srv/models/m", "base_image": BASE, "patches": patches}
                ]
            },
        )
        .services[0]
        .options
    )
    identity = image_identity(opts, source)
    context = source.parent / ("ctx-" + identity.tag.split(":")[1])
    for rel, path in identity.files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, context / rel)
    result = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "build",
            "--context",
            str(context),
            "--tag",
            identity.tag,
            "--base",
            BASE,
            "--patches",
            ",".join(patches),
        ],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, identity.tag


def test_build_selfcheck_no_rebuild_new_tag_and_failing_patch(engine, tmp_path):
    source = tmp_path / "vllm"
    shutil.copytree(IMAGE_SOURCE, source)
    result, tag = build(engine, source, ["inc-hybrid-fp8", "rope-keys-set"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "built " + tag in result.stdout and "self-check" in result.stdout
    # The image's own check, run again with the image's Python.
    check = engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        tag,
        "/opt/rigkit/vllm/rigkit_vllm_patches/selfcheck.py",
    )
    report = json.loads(check.stdout)
    assert report["ok"] and report["vllm"] == "0.19.1" and report["patches"] == ["inc-hybrid-fp8", "rope-keys-set"]
    applied = json.loads(
        engine.docker("run", "--rm", "--entrypoint", "cat", tag, "/opt/rigkit/vllm/applied.json").stdout
    )
    assert [e["result"] for p in applied["patches"] for e in p["edits"]][0] == "patched"
    patched = engine.docker(
        "run",
        "--rm",
        "--entrypoint",
        "grep",
        tag,
        "-c",
        "RIGKIT_INC_HYBRID_FP8 = True",
        "/usr/local/lib/python3.11/dist-packages/vllm/model_executor/layers/quantization/inc.py",
    )
    assert patched.stdout.strip() == "1"
    # The same inputs: nothing built.
    again, same = build(engine, source, ["inc-hybrid-fp8", "rope-keys-set"])
    assert same == tag and again.returncode == 0 and "is present: nothing to build" in again.stdout
    # A changed patch: a new tag, the old image kept (rollback).
    diff = source / "patches/01-inc-hybrid-fp8/inc-0.19.diff"
    diff.write_text(diff.read_text().replace("use the FP8 linear method", "go to the FP8 linear method"))
    changed, new_tag = build(engine, source, ["inc-hybrid-fp8", "rope-keys-set"])
    assert changed.returncode == 0, changed.stderr and new_tag != tag
    assert engine.docker("image", "inspect", tag, check=False).returncode == 0
    # A patch that does not fit vLLM 0.19.1: the build fails naming file and hunk; no tag.
    diff.write_text(
        diff.read_text().replace(
            "         self.pack_factor = Fraction(32, weight_bits)", "         self.pack_factor = Fraction(32, bits)"
        )
    )
    broken, broken_tag = build(engine, source, ["inc-hybrid-fp8"])
    assert broken.returncode == 1
    assert (
        "PATCH FAILED: patch inc-hybrid-fp8: vllm/model_executor/layers/quantization/inc.py: hunk 2 of 5 "
        "(@@ -86,6 +92,9 @@) does not apply"
    ) in broken.stderr, broken.stderr
    assert engine.docker("image", "inspect", broken_tag, check=False).returncode != 0
