"""A vLLM service end to end on a sandbox host (its own instance, /var/lib/rigkit/sandbox-vllm)
that reaches a dockerd of this test's own (started in the host's network namespace, its socket
bound into the host: rigkit.sandbox.docker). deploys/rig.py (the vllm-tp4 path: vLLM services,
no llama.cpp) builds the image on the host from a base carrying vLLM 0.19.1's real sources,
whose ``vllm`` command is a STAND-IN speaking the OpenAI API (tests/standin_vllm.py): the unit,
the checks, no restart on a re-run, a restart on changed flags, the rollback to the previous
image with the container's log tail, and the MTP-weights check."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from host_http import get
from pyinfra_run import run_pyinfra
from vllm_docker import Dockerd, import_base

from rigkit import sandbox
from rigkit.sandbox import docker as sandbox_docker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"), reason="needs root and dockerd"),
]
STATE = "/var/lib/rigkit/sandbox-vllm"
BASE = "rigkit-test/vllm-base:0.19.1"
BROKEN = "rigkit-test/vllm-base:0.19.1-broken"  # its stand-in exits at start
SECRET = "vllm-e2e-" + os.urandom(6).hex()
INVENTORY = """
import json, os
from rigkit.sandbox import pyinfra_hosts
_data = json.loads(os.environ["RIGKIT_VLLM_E2E"])
hosts = [(name, {**d, **_data}) for name, d in pyinfra_hosts()]
"""


def write_safetensors(path: Path, names: list[str]) -> None:
    header = {n: {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8 * i, 8 * i + 8]} for i, n in enumerate(names)}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 8 * len(names))


def write_model(d: Path, mtp: bool = True) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5MoeForConditionalGeneration"]}))
    write_safetensors(d / "model-00001-of-00001.safetensors", ["model.embed_tokens.weight"])
    write_safetensors(d / "model_extra_tensors.safetensors", ["mtp.fc.weight"])
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}
    if mtp:
        weight_map["mtp.fc.weight"] = "model_extra_tensors.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("vllm-e2e"))
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = STATE
    dockerd = None
    try:
        sb = sandbox.up(hosts=1, sources=False)
        host = sb.hosts[0]
        socket = sandbox_docker.prepare_client(sb, host)
        work = Path(STATE) / "dockerd"
        dockerd = Dockerd(work, argv=sandbox_docker.dockerd_argv(host, work), socket=socket).start()
        import_base(dockerd, BASE, tmp)
        import_base(dockerd, BROKEN, tmp, standin_mode="fail")
        (tmp / "key").write_text(SECRET + "\n")
        (tmp / "key").chmod(0o600)
        write_model(tmp / "model")
        (tmp / "inventory.py").write_text(INVENTORY)
        yield {"sb": sb, "host": host, "docker": dockerd, "tmp": tmp}
    finally:
        if dockerd:
            dockerd.stop()
        sandbox.down()
        shutil.rmtree(Path(STATE) / "dockerd", ignore_errors=True)
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


def service(env, **kw) -> dict:
    svc = {
        "name": "tiny",
        "engine": "vllm",
        "model": "/srv/models/tiny-vllm",
        "alias": "tiny-vllm",
        "port": 8000,
        "ctx": 4096,
        "base_image": BASE,
        "patches": ["inc-hybrid-fp8", "rope-keys-set"],
        "reasoning_parser": "qwen3",
        "enable_auto_tool_choice": True,
        "tool_call_parser": "qwen3_coder",
        "speculative": {"method": "mtp", "num_speculative_tokens": 1},
        "attention_backend": "FLASHINFER",
        "api_key_file": str(env["tmp"] / "key"),
        "ready_timeout": 60,
        "stop_timeout": 5,
        "watchdog": False,
    }
    svc.update(kw)
    return svc


def deploy(env, svc: dict, model_dir: Path | None = None):
    data = {
        "gpus": {"count": 0},
        "services": [svc],
        "models": [{"upload": str(model_dir or env["tmp"] / "model"), "dest": "/srv/models/tiny-vllm"}],
    }
    return run_pyinfra(
        str(env["tmp"] / "inventory.py"),
        "deploys/rig.py",
        env={"RIGKIT_VLLM_E2E": json.dumps(data), "RIGKIT_SANDBOX_DIR": STATE},
        timeout=900,
    )


def ops(run, *texts: str) -> list[str]:
    """Operations that changed something whose names contain any of ``texts``."""
    return [n for n in run.changed if any(t in n for t in texts)]


def container(env) -> dict:
    return json.loads(env["docker"].docker("inspect", "rigkit-vllm-tiny").stdout)[0]


def ask(env, path="/v1/models", key: str | None = SECRET) -> str:
    """GET on the host: the body, or the HTTP status code of an error."""
    return get(env["sb"], env["host"], 8000, path, key)


def test_deploy_unit_checks_and_key(env):
    run = deploy(env, service(env))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert ops(run, "Image rigkit/vllm:") and ops(run, "Verify vLLM services (ready, /v1/models, chat, tool-call")
    assert ops(run, "MTP weights of tiny in /srv/models/tiny-vllm"), run.changed
    c = container(env)
    assert c["State"]["Running"] and c["Config"]["Image"].startswith("rigkit/vllm:")
    assert c["HostConfig"]["NetworkMode"] == "host" and c["HostConfig"]["IpcMode"] == "host"
    assert "/srv/models/tiny-vllm:/srv/models/tiny-vllm:ro" in c["HostConfig"]["Binds"]
    assert "HF_HUB_OFFLINE=1" in c["Config"]["Env"]
    assert (
        c["Args"][-2:] == ["--speculative-config", '{"method":"mtp","num_speculative_tokens":1}']
        or '{"method":"mtp","num_speculative_tokens":1}' in c["Args"]
    )
    unit = env["sb"].ssh(env["host"], "cat /etc/systemd/system/rigkit-vllm-tiny.service")
    assert c["Config"]["Image"] in unit and "User=vllm-tiny" in unit
    assert json.loads(ask(env))["data"][0]["id"] == "tiny-vllm"
    # The key: on no command line, in no unit, in no docker inspect, in no pyinfra output.
    for text in (unit, json.dumps(c), run.stdout, run.stderr):
        assert SECRET not in text
    assert ask(env, key=None) == "401"
    exposure = env["sb"].ssh(env["host"], "systemd-analyze security rigkit-vllm-tiny.service | tail -1")
    assert float(exposure.split("exposure level for")[1].split(":")[1].split()[0]) <= 3.0, exposure
    env["first_image"] = c["Config"]["Image"]
    env["started"] = c["State"]["StartedAt"]


def test_rerun_changes_nothing(env):
    run = deploy(env, service(env))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not ops(run, "Image", "Restart", "Verify", "Unit", "MTP"), run.changed
    assert container(env)["State"]["StartedAt"] == env["started"]


def test_changed_flags_restart(env):
    run = deploy(env, service(env, max_num_seqs=4))
    assert run.returncode == 0, run.stderr[-3000:]
    assert ops(run, "Restart rigkit-vllm-tiny.service"), run.changed
    assert not ops(run, "Image")  # same image
    c = container(env)
    assert c["State"]["StartedAt"] != env["started"] and c["Args"][c["Args"].index("--max-num-seqs") + 1] == "4"


def test_status_shows_the_vllm_service(env):
    import subprocess
    import sys

    data = {
        "gpus": {"count": 0},
        "services": [service(env, max_num_seqs=4)],
        "models": [{"upload": str(env["tmp"] / "model"), "dest": "/srv/models/tiny-vllm"}],
    }
    # The service as the tests before leave it (alone: deployed here; in order: nothing changes).
    deployed = deploy(env, service(env, max_num_seqs=4))
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    rigkit = str(Path(sys.executable).with_name("rigkit"))
    done = subprocess.run(
        [rigkit, "status", str(env["tmp"] / "inventory.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "RIGKIT_VLLM_E2E": json.dumps(data), "RIGKIT_SANDBOX_DIR": STATE},
        timeout=120,
    )
    image = container(env)["Config"]["Image"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"tiny             :8000  active    healthy  vLLM {image} (container running, verified)" in done.stdout
    # The image's self-check, kept at its build: the base's vLLM and what each patch did.
    assert "vLLM 0.19.1; patches: " in done.stdout, done.stdout
    assert "tiny" in done.stdout and ":8000" in done.stdout


def test_failed_check_rolls_back_to_the_previous_image(env):
    run = deploy(env, service(env, max_num_seqs=4, base_image=BROKEN))
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "rolled back" in out and "the previous image is serving and verified" in out, out[-4000:]
    assert "stand-in vllm: simulated start failure" in out  # the failed container's log tail
    c = container(env)
    assert c["State"]["Running"] and c["Config"]["Image"] == env["first_image"]
    assert env["first_image"] in env["sb"].ssh(env["host"], "cat /etc/systemd/system/rigkit-vllm-tiny.service")
    assert json.loads(ask(env))["data"][0]["id"] == "tiny-vllm"
    # Both images stay: the broken one was built (a new tag), the previous one served again.
    tags = env["docker"].docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "rigkit/vllm").stdout.split()
    assert env["first_image"] in tags and len(tags) == 2


def test_mtp_without_weights_stops_before_the_restart(env):
    model = env["tmp"] / "model-no-mtp"
    write_model(model, mtp=False)
    started = container(env)["State"]["StartedAt"]
    run = deploy(env, service(env, max_num_seqs=4), model_dir=model)
    assert run.returncode != 0
    assert (
        "references no mtp.* tensors: the model has no MTP weights (model_extra_tensors.safetensors is there "
        "but not referenced" in run.stdout + run.stderr
    )
    assert container(env)["State"]["StartedAt"] == started
