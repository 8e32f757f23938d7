"""
Every engine behind the one serve step, on one sandbox host that already serves llama.cpp
(sandbox-1 after the suite's first deploy), with a dockerd of this module's own (started in
the host's network namespace: rigkit.sandbox.docker) for the container engines. vLLM's base
image carries vLLM 0.19.1's real sources and a STAND-IN ``vllm`` speaking the OpenAI API
(tests/standin_vllm.py); SGLang's is that base with a STAND-IN ``sglang`` package
(tests/standin_sglang.py) behind rigkit's real entrypoint. Shown here and nowhere else:

- each engine's last verified state beside the others': a verified llama.cpp deploy no
  longer erases vLLM's, a failed vLLM check rolls vLLM back while llama.cpp serves
  throughout, and deploys/rollback.py verifies both;
- old images beyond ``keep_images`` pruned, never what serves, the last verified or another
  service's;
- the watchdog's load grace on a container service (a load longer than two intervals is
  never killed, the same server stopped with SIGSTOP after it answered is restarted);
- SGLang through the seam: its unit, container, key, checks, exposure, no-op re-run,
  rollback and status;
- a vLLM upgrade as a llama.cpp one: the base bumped from 0.19.1 to 0.20.2, the new image
  (with the patch's 0.20 edit) built beside the serving one, switched to and verified; a
  failed start on the next base leaves the verified image serving.

The module leaves sandbox-1 as the first deploy did (inventories/sandbox.py deployed again).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from host_http import get
from mutated_inventory import write_inventory
from pyinfra_run import run_pyinfra, ssh
from standin_sglang import build_image
from vllm_docker import Dockerd, import_base

from rigkit.sandbox import docker as sandbox_docker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"), reason="needs root and dockerd"),
]
BASE = "rigkit-test/vllm-base:0.19.1"
BROKEN = "rigkit-test/vllm-base:0.19.1-broken"  # its stand-in exits at start
NEXT = "rigkit-test/vllm-base:0.20.2"  # the current line's real files: the upgrade
NEXT_BROKEN = "rigkit-test/vllm-base:0.20.2-broken"
SGLANG = "lmsysorg/sglang:v0.5.12-cu130"  # the stand-in's tag: the pinned repository and tag
SGLANG_BROKEN = "lmsysorg/sglang:v0.5.12-cu130-broken"
LLAMA = "rigkit-llama-tiny.service"
MODEL_DEST = "/srv/models/tiny-st"


def write_model(d: Path) -> Path:
    """A safetensors checkpoint's layout (what vLLM and SGLang load: a directory)."""
    d.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    (d / "model-00001-of-00001.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 8)
    return d


@pytest.fixture(scope="module")
def engines(sandbox_hosts, first_deploy, tmp_path_factory):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    tmp = Path(tmp_path_factory.mktemp("engines-e2e"))
    work = Path(os.environ.get("RIGKIT_SANDBOX_DIR", "/var/lib/rigkit/sandbox-tests")) / "dockerd-engines"
    socket = sandbox_docker.prepare_client(sb, host)
    dockerd = Dockerd(work, argv=sandbox_docker.dockerd_argv(host, work), socket=socket).start()
    try:
        import_base(dockerd, BASE, tmp)
        import_base(dockerd, BROKEN, tmp, standin_mode="fail")
        import_base(dockerd, NEXT, tmp, version="0.20.2")
        import_base(dockerd, NEXT_BROKEN, tmp, standin_mode="fail", version="0.20.2")
        build_image(dockerd, SGLANG, BASE, tmp)
        build_image(dockerd, SGLANG_BROKEN, BROKEN, tmp)
        yield {
            "sb": sb,
            "host": host,
            "docker": dockerd,
            "tmp": tmp,
            "model": write_model(tmp / "model"),
            **{"env": dict(first_deploy[1], PYTHONPATH=str(tmp))},
        }
    finally:
        # Back to what the first deploy left: the services of this module are removed.
        back = run_pyinfra("inventories/sandbox.py", "deploys/rig.py", "--limit", "sandbox-1", env=first_deploy[1])
        dockerd.stop()
        shutil.rmtree(work, ignore_errors=True)
        assert back.returncode == 0, back.stderr[-3000:]


def container_service(engine: str, name: str, port: int, **kw) -> dict:
    svc = {
        "name": name,
        "engine": engine,
        "model": MODEL_DEST,
        "alias": f"{name}-model",
        "port": port,
        "ctx": 4096,
        "ready_timeout": 60,
        "stop_timeout": 5,
        "watchdog": False,
    }
    if engine == "vllm":
        svc["base_image"] = BASE
    else:
        svc["image"] = SGLANG
    svc.update(kw)
    return svc


def deploy(engines, services: list[dict], llama: dict | None = None, deploy_file: str = "deploys/rig.py"):
    """sandbox-1's llama.cpp service (with ``llama``'s changes) and ``services`` beside it."""
    mutation = {
        "@hosts": ["sandbox-1"],
        "@services": services,
        "@models": [{"upload": str(engines["model"]), "dest": MODEL_DEST}],
        **(llama or {}),
    }
    inventory = write_inventory(engines["tmp"], mutation, name=f"engines{abs(hash(json.dumps(mutation))) % 10**8}")
    return run_pyinfra(str(inventory), deploy_file, env=engines["env"], timeout=900)


def main_pid(engines, unit: str) -> str:
    return ssh(engines["sb"], engines["host"], f"systemctl show -p MainPID --value {unit}")


def container(engines, name: str, wait: float = 30) -> dict:
    """``docker inspect`` of a running container, waited for (a unit that just (re)started
    creates its container a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        found = engines["docker"].docker("inspect", name, check=False)
        if found.returncode == 0 and json.loads(found.stdout)[0]["State"]["Running"]:
            return json.loads(found.stdout)[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"container {name} is not running: {found.stdout[-500:]}{found.stderr[-500:]}")
        time.sleep(1)


def ask(engines, port: int, path: str = "/v1/models", key: str | None = None) -> str:
    return get(engines["sb"], engines["host"], port, path, key)


def tags(engines, repository: str) -> set[str]:
    listed = engines["docker"].docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository)
    return set(listed.stdout.split())


def output(run) -> str:
    return run.stdout + run.stderr


def test_each_engine_rolls_back_its_own_and_llama_serves_throughout(engines, api_key):
    secret = api_key[0]
    vllm = container_service("vllm", "side", 8001)
    first = deploy(engines, [vllm])
    assert first.returncode == 0, output(first)[-4000:]
    assert "Serve vLLM | Verify vLLM services (ready, /v1/models, chat, tool-call replay)" in first.changed
    image = container(engines, "rigkit-vllm-side")["Config"]["Image"]

    # A verified llama.cpp deploy (new flags): it saved its own state, and vLLM's is still there.
    llama_changed = {"extra_args": ["--no-warmup", "-b", "1024"]}
    second = deploy(engines, [vllm], llama=llama_changed)
    assert second.returncode == 0, output(second)[-4000:]
    assert f"Serve llama.cpp | Restart {LLAMA}" in second.changed
    assert "Serve llama.cpp | Verify services (health, chat, tool-call replay)" in second.changed
    listing = ssh(engines["sb"], engines["host"], "ls -l /var/lib/rigkit/last-good/")
    assert re.search(r"llama\.cpp -> \.llama\.cpp-\d+", listing) and re.search(r"vllm -> \.vllm-\d+", listing), listing
    pid = main_pid(engines, LLAMA)

    # vLLM's next image cannot start: vLLM goes back to its image; llama.cpp answers all along.
    failures: list[str] = []
    stop = threading.Event()

    def watch_llama():
        while not stop.is_set():
            answer = ask(engines, 8000, "/v1/models", key=secret)
            if '"data"' not in answer:
                failures.append(answer)
            time.sleep(1)

    watcher = threading.Thread(target=watch_llama)
    watcher.start()
    try:
        broken = deploy(engines, [dict(vllm, base_image=BROKEN)], llama=llama_changed)
    finally:
        stop.set()
        watcher.join()
    assert broken.returncode != 0
    assert "the previous image is serving and verified" in output(broken), output(broken)[-4000:]
    assert not failures and main_pid(engines, LLAMA) == pid
    assert container(engines, "rigkit-vllm-side")["Config"]["Image"] == image
    assert json.loads(ask(engines, 8001))["data"][0]["id"] == "side-model"

    # Explicit rollback verifies every engine's services; vLLM already runs its last verified
    # state, so its container is not restarted (a real model would load for minutes).
    started = container(engines, "rigkit-vllm-side")["State"]["StartedAt"]
    back = deploy(engines, [vllm], llama=llama_changed, deploy_file="deploys/rollback.py")
    assert back.returncode == 0, output(back)[-4000:]
    assert "Verify llama.cpp services" in back.changed and "Verify vLLM services" in back.changed, back.changed
    assert container(engines, "rigkit-vllm-side")["State"]["StartedAt"] == started


def applied(engines, image: str) -> dict:
    """What rigkit's patches did in ``image`` (/opt/rigkit/vllm/applied.json)."""
    shown = engines["docker"].docker("run", "--rm", "--entrypoint", "cat", image, "/opt/rigkit/vllm/applied.json")
    return json.loads(shown.stdout)


def test_a_vllm_upgrade_builds_beside_switches_and_rolls_back(engines):
    svc = container_service("vllm", "up", 8003, patches=["inc-hybrid-fp8"])
    first = deploy(engines, [svc])
    assert first.returncode == 0, output(first)[-4000:]
    old = container(engines, "rigkit-vllm-up")["Config"]["Image"]
    assert applied(engines, old)["vllm"] == "0.19.1"

    # Bump the base: a new image beside the serving one, the service switched and verified.
    upgraded = deploy(engines, [dict(svc, base_image=NEXT)])
    assert upgraded.returncode == 0, output(upgraded)[-4000:]
    assert "Serve vLLM | Verify vLLM services (ready, /v1/models, chat, tool-call replay)" in upgraded.changed
    new = container(engines, "rigkit-vllm-up")["Config"]["Image"]
    record = applied(engines, new)
    assert new != old and record["vllm"] == "0.20.2"
    assert [(p["name"], [e["result"] for e in p["edits"]]) for p in record["patches"]] == [
        ("inc-hybrid-fp8", ["patched"])
    ]
    assert {old, new} <= tags(engines, "rigkit/vllm")  # the old image kept: what a rollback runs
    assert json.loads(ask(engines, 8003))["data"][0]["id"] == "up-model"
    again = deploy(engines, [dict(svc, base_image=NEXT)])
    assert again.returncode == 0 and not again.changed, again.changed

    # The next base cannot start: the verified 0.20.2 image serves again.
    broken = deploy(engines, [dict(svc, base_image=NEXT_BROKEN)])
    assert broken.returncode != 0
    assert "the previous image is serving and verified" in output(broken), output(broken)[-4000:]
    assert container(engines, "rigkit-vllm-up")["Config"]["Image"] == new


def test_old_images_beyond_keep_images_are_pruned(engines):
    other = container_service("vllm", "other", 8002, patches=["inc-hybrid-fp8", "rope-keys-set"])
    built = []
    for patches in ([], ["inc-hybrid-fp8"], ["rope-keys-set"]):
        svc = container_service("vllm", "side", 8001, patches=patches, keep_images=1)
        run = deploy(engines, [svc, other])
        assert run.returncode == 0, output(run)[-4000:]
        built.append(container(engines, "rigkit-vllm-side")["Config"]["Image"])
    kept = tags(engines, "rigkit/vllm")
    other_image = container(engines, "rigkit-vllm-other")["Config"]["Image"]
    # Serving (and last verified): the newest; one more besides; the other service's own.
    assert {built[2], built[1], other_image} <= kept and built[0] not in kept, (built, kept)
    again = deploy(engines, [container_service("vllm", "side", 8001, patches=["rope-keys-set"], keep_images=1), other])
    assert again.returncode == 0 and not [n for n in again.changed if "Keep " in n or "Image " in n], again.changed


def test_a_load_is_not_killed_and_a_hung_server_is(engines):
    svc = container_service(
        "vllm",
        "slow",
        8004,
        env={"VLLM_RIGKIT_STANDIN_LOAD_SECONDS": "15"},
        watchdog=True,
        watchdog_interval=5,
        watchdog_failures=2,
    )
    run = deploy(engines, [svc])
    assert run.returncode == 0, output(run)[-4000:]
    # A new load while the watchdog runs: 15 s of nothing answering, three rounds and more.
    ssh(engines["sb"], engines["host"], "systemctl restart rigkit-vllm-slow.service")
    loading = container(engines, "rigkit-vllm-slow")["State"]["StartedAt"]
    time.sleep(25)
    assert container(engines, "rigkit-vllm-slow")["State"]["StartedAt"] == loading
    assert json.loads(ask(engines, 8004))["data"][0]["id"] == "slow-model"
    # Answered since its start, then hung: restarted after two failed rounds.
    top = engines["docker"].docker("top", "rigkit-vllm-slow", "-eo", "pid,args").stdout.splitlines()
    server = next(int(line.split()[0]) for line in top[1:] if "/usr/local/bin/vllm" in line)
    os.kill(server, signal.SIGSTOP)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = engines["docker"].docker("inspect", "rigkit-vllm-slow", check=False)
        if found.returncode == 0 and json.loads(found.stdout)[0]["State"]["StartedAt"] != loading:
            break
        time.sleep(2)
    else:
        pytest.fail("the hung server was not restarted in 90 s")
    journal = ssh(engines["sb"], engines["host"], "journalctl -u rigkit-watchdog-slow.service --no-pager -o cat")
    assert "restarting rigkit-vllm-slow.service" in journal, journal[-2000:]


def test_sglang_through_the_seam(engines, api_key):
    key = engines["tmp"] / "sglang.key"
    secret = "sglang-" + os.urandom(6).hex()
    key.write_text(secret + "\n")
    key.chmod(0o600)
    svc = container_service(
        "sglang",
        "sg",
        8003,
        api_key_file=str(key),
        reasoning_parser="qwen3",
        tool_call_parser="qwen3_coder",
        mem_fraction_static=0.85,
    )
    first = deploy(engines, [svc])
    assert first.returncode == 0, output(first)[-4000:]
    assert "Serve SGLang | Verify SGLang services (ready, /v1/models, chat, tool-call replay)" in first.changed
    c = container(engines, "rigkit-sglang-sg")
    assert c["State"]["Running"] and c["Config"]["Image"].startswith("rigkit/sglang:")
    assert c["Args"][:4] == ["/opt/rigkit/sglang/entrypoint.py", "python3", "-m", "sglang.launch_server"] or (
        c["Config"]["Cmd"][:3] == ["python3", "-m", "sglang.launch_server"]
    )
    assert "--mem-fraction-static" in c["Config"]["Cmd"] and "--tp-size" in c["Config"]["Cmd"]
    unit = ssh(engines["sb"], engines["host"], "cat /etc/systemd/system/rigkit-sglang-sg.service")
    ps = ssh(engines["sb"], engines["host"], "ps -eo args")
    for text in (unit, json.dumps(c), ps, output(first)):
        assert secret not in text
    assert json.loads(ask(engines, 8003, key=secret))["data"][0]["id"] == "sg-model"
    assert ask(engines, 8003) == "401"
    exposure = ssh(engines["sb"], engines["host"], "systemd-analyze security rigkit-sglang-sg.service | tail -1")
    assert float(exposure.split("exposure level for")[1].split(":")[1].split()[0]) <= 3.0, exposure

    again = deploy(engines, [svc])
    assert again.returncode == 0, output(again)[-3000:]
    assert not [n for n in again.changed if "SGLang" in n], again.changed

    broken = deploy(engines, [dict(svc, image=SGLANG_BROKEN)])
    assert broken.returncode != 0 and "the previous image is serving and verified" in output(broken)
    assert container(engines, "rigkit-sglang-sg")["Config"]["Image"] == c["Config"]["Image"]

    inventory = write_inventory(
        engines["tmp"],
        {
            "@hosts": ["sandbox-1"],
            "@services": [svc],
            "@models": [{"upload": str(engines["model"]), "dest": MODEL_DEST}],
        },
        name="engines_status",
    )
    status = subprocess.run(
        [str(Path(sys.executable).with_name("rigkit")), "status", str(inventory)],
        capture_output=True,
        text=True,
        env={**os.environ, **engines["env"]},
        timeout=120,
    )
    assert f"sg               :8003  active    healthy  SGLang {c['Config']['Image']}" in status.stdout, status.stdout


DERIVED_DEST = "/srv/models/qwen-hybrid"


def test_a_derived_model_is_built_from_locked_ranges_and_served(engines):
    """The hybrid of seed 003 (INT4 base, FP8 shared experts, MTP weights) made on the host
    from small synthetic checkpoints with the real layout: the INT4 input placed from one
    mirror, the FP8 one only read by range from another (every byte it sends counted), a vLLM
    service verified on the built model, a second deploy building nothing, and a hostile
    inventory changing nothing."""
    from rigkit.checkpoints import synthetic
    from rigkit.models import lockfile, mirror

    sb, tmp = engines["sb"], engines["tmp"]
    roots = {"int4": tmp / "hub-int4", "fp8": tmp / "hub-fp8"}
    synthetic.write_int4_autoround(roots["int4"] / synthetic.INT4_REPO)
    synthetic.write_fp8(roots["fp8"] / synthetic.FP8_REPO)
    int4_hub = mirror.serve(str(roots["int4"]), host=sb.gateway, port=0)
    fp8_hub = mirror.serve(str(roots["fp8"]), host=sb.gateway, port=0)
    try:
        lock = tmp / "derived.lock.yaml"
        models = [
            {"name": "int4", "repo": synthetic.INT4_REPO, "dest": "/srv/models/int4"},
            {"name": "fp8", "repo": synthetic.FP8_REPO, "dest": "/srv/models/fp8", "endpoint": fp8_hub.url},
            {
                "name": "hybrid",
                "derive": {
                    "recipes": ["hybrid-fp8-shared-experts", "mtp-index"],
                    "inputs": {"base": "int4", "fp8": "fp8", "mtp": "int4"},
                },
                "dest": DERIVED_DEST,
            },
        ]
        mutation = {
            "@hosts": ["sandbox-1"],
            "@data": {"model_lock": str(lock), "hf_endpoint": int4_hub.url, "hf_insecure_http": True},
            "@models": models,
            "@services": [container_service("vllm", "hybrid", 8004, model="ref:hybrid")],
        }
        inventory = write_inventory(tmp, mutation, name="derived")
        env = engines["env"]
        locked = subprocess.run(
            [sys.executable, "-m", "rigkit.cli", "lock", str(inventory)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert locked.returncode == 0, locked.stderr
        assert lockfile.lock_path_for(inventory) == lock  # what the inventory's model_lock names
        fp8 = next(e for e in lockfile.load(lock).values() if e.repo == synthetic.FP8_REPO)
        whole = sum(f.size for f in fp8.files if f.path.endswith(".safetensors"))
        assert f"{fp8.ranges_bytes} bytes read of {fp8.total_bytes}" in locked.stdout
        print(
            f"FP8 input: {fp8.ranges_bytes} of {whole} shard bytes read by range ({100 * fp8.ranges_bytes / whole:.1f}%)"
        )

        fp8_hub.reset_stats()
        first = run_pyinfra(str(inventory), "deploys/rig.py", env=env, timeout=900)
        assert first.returncode == 0, output(first)[-4000:]
        built = [n for n in first.changed if "Derived model hybrid" in n]
        assert built, first.changed
        assert "Serve vLLM | Verify vLLM services (ready, /v1/models, chat, tool-call replay)" in first.changed
        # The host read of the FP8 checkpoint exactly the locked ranges, and placed none of it.
        assert {p: n for p, n in fp8_hub.bytes_sent.items() if p.endswith(".safetensors")}
        assert sum(n for p, n in fp8_hub.bytes_sent.items() if p.endswith(".safetensors")) == fp8.ranges_bytes
        host = engines["host"]
        assert ssh(sb, host, "test -e /srv/models/fp8 || echo absent") == "absent"
        target = ssh(sb, host, f"readlink {DERIVED_DEST}")
        assert target.startswith(".qwen-hybrid.derived-")
        manifest = json.loads(ssh(sb, host, f"cat {DERIVED_DEST}/.rigkit-derived.json"))
        assert manifest["complete"] and [r["counts"]["replaced"] for r in manifest["recipes"]] == [144, 0]
        assert json.loads(ask(engines, 8004))["data"][0]["id"] == "hybrid-model"
        # The service loads the output itself (so a rollback's unit names the previous one).
        assert f"/srv/models/{target}" in container(engines, "rigkit-vllm-hybrid")["Args"]

        fp8_hub.reset_stats()
        again = run_pyinfra(str(inventory), "deploys/rig.py", env=env, timeout=900)
        assert again.returncode == 0 and not again.changed, again.changed
        assert fp8_hub.total_sent() == 0 and ssh(sb, host, f"readlink {DERIVED_DEST}") == target

        # A derived model whose input is not in the inventory: refused before any host change.
        hostile = dict(
            models[2], derive={**models[2]["derive"], "inputs": {"base": "int4", "fp8": "nope", "mtp": "int4"}}
        )
        bad = write_inventory(tmp, {**mutation, "@models": [*models[:2], hostile]}, name="derived_hostile")
        refused = run_pyinfra(str(bad), "deploys/rig.py", env=env, timeout=300)
        assert refused.returncode != 0 and "derive.inputs.fp8" in output(refused)
        assert (
            refused.results is None and "Traceback" not in refused.stderr
        )  # stopped while preparing: no operation ran
        assert ssh(sb, host, f"readlink {DERIVED_DEST}") == target

        # Another recipe list builds a second output beside the first; the service cannot start
        # on it (a broken base too): the previous unit comes back, on the previous output.
        hybrid_only = {"recipes": ["hybrid-fp8-shared-experts"], "inputs": {"base": "int4", "fp8": "fp8"}}
        changed = {
            **mutation,
            "@models": [*models[:2], dict(models[2], derive=hybrid_only)],
            "@services": [container_service("vllm", "hybrid", 8004, model="ref:hybrid", base_image=BROKEN)],
        }
        failed = run_pyinfra(
            str(write_inventory(tmp, changed, name="derived_changed")), "deploys/rig.py", env=env, timeout=900
        )
        assert failed.returncode != 0 and "the previous image is serving and verified" in output(failed)
        outputs = ssh(sb, host, "ls -a /srv/models").split()
        assert target in outputs and len([o for o in outputs if o.startswith(".qwen-hybrid.derived-")]) == 2
        assert f"/srv/models/{target}" in container(engines, "rigkit-vllm-hybrid")["Args"]
        assert json.loads(ask(engines, 8004))["data"][0]["id"] == "hybrid-model"
    finally:  # the module's teardown deploys sandbox-1 back as the first deploy left it
        int4_hub.stop()
        fp8_hub.stop()
