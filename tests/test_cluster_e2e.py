"""A vLLM service across a real Ray cluster of three sandbox hosts (their own instance,
/var/lib/rigkit/sandbox-ray), deployed by deploys/rig.py: on every host a dockerd of this
test's own (in the host's network namespace, rigkit.sandbox.docker), the same test base image
(loaded from one ``docker save``, so the same image ID on every node) carrying Ray 2.54.1
from its wheel as the real vLLM images do, and rigkit's image built on each node from it.
That Ray has token authentication: every Ray process and the stand-in's ``ray.init`` (as
vLLM's) authenticate with the cluster's token, which a client without it is refused.
Ray runs for real in those containers, with the command lines rigkit's units render. The
``vllm`` on the head is the STAND-IN of the vLLM tests (tests/standin_vllm.py; no GPU here):
with ``--distributed-executor-backend ray`` it joins the cluster as Ray's driver, as vLLM
does, places an actor on every node and exits when one dies. The model comes from the Hub
(a STAND-IN: rigkit's mirror on this machine, counting what it sends) to the head only, which
serves it to the other nodes over the interconnect; the image is built on the head only and
loaded by the others from it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyinfra_run import run_pyinfra
from vllm_docker import Dockerd, import_base, ray_wheelhouse

from rigkit import sandbox
from rigkit.models import lockfile, mirror
from rigkit.sandbox import cable
from rigkit.sandbox import docker as sandbox_docker
from rigkit.sandbox.network import allocate_subnet

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"), reason="needs root and dockerd"),
]
STATE = "/var/lib/rigkit/sandbox-ray"
BASE = "rigkit-test/vllm-base:0.19.1-ray"
CLUSTER = "e2e"
PORT = 6380
RAY_UNIT = f"rigkit-ray-{CLUSTER}.service"
READY_UNIT = f"rigkit-ray-ready-{CLUSTER}.service"
VLLM_UNIT = "rigkit-vllm-tiny.service"
SHARE_UNIT = f"rigkit-share-{CLUSTER}.service"
SHARE_PORT = 8471
HUB_REPO = "rigkit-test/tiny-vllm"
JOIN_TIMEOUT = 20
# The rate the bounded throughput test must reach over the sandbox's veths (a few Gb/s on
# an idle machine; far above a tc-throttled port).
EXPECTED_GBPS = 0.2
INVENTORY = """
import json, os
from rigkit.sandbox import pyinfra_hosts
_data = json.loads(os.environ["RIGKIT_RAY_E2E"])
hosts = [(name, {**d, **_data[name]}) for name, d in pyinfra_hosts()]
"""


def write_model(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5MoeForConditionalGeneration"]}))
    (d / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = Path(tmp_path_factory.mktemp("ray-e2e"))
    previous = os.environ.get("RIGKIT_SANDBOX_DIR")
    os.environ["RIGKIT_SANDBOX_DIR"] = STATE
    engines: list[Dockerd] = []
    hub = None
    try:
        sb = sandbox.up(hosts=3, sources=False)
        # The nodes' own "cable": bare ports (no address) on a switch of their own, MTU 9000.
        cable.switch(sb, sb.hosts)
        link_net = allocate_subnet(sb.tag)
        links = {h.name: str(link_net.network_address + 1 + i) for i, h in enumerate(sb.hosts)}
        for i, h in enumerate(sb.hosts):
            socket = sandbox_docker.prepare_client(sb, h)
            work = Path(STATE) / f"dockerd-{i}"
            engines.append(Dockerd(work, argv=sandbox_docker.dockerd_argv(h, work), socket=socket).start())
        import_base(engines[0], BASE, tmp, ray_wheels=ray_wheelhouse())
        for other in engines[1:]:
            engines[0].copy_image(BASE, other)
        write_model(tmp / "hub" / HUB_REPO)
        hub = mirror.serve(str(tmp / "hub"), host=sb.gateway, port=0)  # the Hub's STAND-IN
        (tmp / "key").write_text("ray-e2e-" + os.urandom(6).hex() + "\n")
        (tmp / "key").chmod(0o600)
        (tmp / "inventory.py").write_text(INVENTORY)
        nodes = [h.name for h in sb.hosts]
        service = {
            "name": "tiny",
            "engine": "vllm",
            "model": "/srv/models/tiny-vllm",
            "alias": "tiny-vllm",
            "port": 8000,
            "ctx": 4096,
            "base_image": BASE,
            "api_key_file": str(tmp / "key"),
            "ready_timeout": 60,
            "stop_timeout": 5,
            "watchdog": False,
            "cluster": CLUSTER,
        }
        data = {
            h.name: {
                "gpus": {"count": 0},
                "cluster": {
                    "name": CLUSTER,
                    "nodes": nodes,
                    "interconnect": cable.INTERFACE,
                    "address": links[h.name],
                    "ray_port": PORT,
                    "share_port": SHARE_PORT,
                    "join_timeout": JOIN_TIMEOUT,
                },
                "interconnect": {
                    "interface": cable.INTERFACE,
                    "address": f"{links[h.name]}/{link_net.prefixlen}",
                    "peers": [a for n, a in links.items() if n != h.name],
                    "expected_gbps": EXPECTED_GBPS,
                    "test_seconds": 1,
                },
                "services": [service],
                "models": [{"repo": HUB_REPO, "dest": "/srv/models/tiny-vllm"}],
                "model_lock": str(lockfile.lock_path_for(tmp / "inventory.py")),
                "hf_endpoint": hub.url,
                "hf_insecure_http": True,
            }
            for h in sb.hosts
        }
        # The cluster's token is generated here, in this test's own directory.
        env = {
            "RIGKIT_RAY_E2E": json.dumps(data),
            "RIGKIT_SANDBOX_DIR": STATE,
            "RIGKIT_GENERATED_SECRETS": str(tmp / "secrets"),
        }
        locked = subprocess.run(
            [sys.executable, "-m", "rigkit.cli", "lock", str(tmp / "inventory.py")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert locked.returncode == 0, locked.stdout + locked.stderr
        hub.reset_stats()  # from here, only what the deploys fetch
        first = run_pyinfra(str(tmp / "inventory.py"), "deploys/rig.py", env=env, timeout=1200)
        assert first.returncode == 0, first.stderr[-5000:] + first.stdout[-3000:]
        hub_sent = dict(hub.bytes_sent)
        yield {
            "sb": sb,
            "hosts": sb.hosts,
            "docker": engines,
            "tmp": tmp,
            "env": env,
            "first": first,
            "links": links,
            "hub": hub,
            "hub_sent": hub_sent,
        }
    finally:
        if hub is not None:
            hub.stop()
        for engine in engines:
            engine.stop()
        if "sb" in locals():
            cable.remove_switch(sb, sb.hosts)
        sandbox.down()
        for i in range(3):
            shutil.rmtree(Path(STATE) / f"dockerd-{i}", ignore_errors=True)
        if previous is None:
            os.environ.pop("RIGKIT_SANDBOX_DIR", None)
        else:
            os.environ["RIGKIT_SANDBOX_DIR"] = previous


def deploy(c, service: dict | None = None, cluster: dict | None = None):
    """The deploy, with ``service``/``cluster`` keys changed on every node."""
    data = json.loads(c["env"]["RIGKIT_RAY_E2E"])
    for d in data.values():
        d["services"][0].update(service or {})
        d["cluster"].update(cluster or {})
    env = {**c["env"], "RIGKIT_RAY_E2E": json.dumps(data)}
    return run_pyinfra(str(c["tmp"] / "inventory.py"), "deploys/rig.py", env=env, timeout=1200)


def host_state(c) -> dict:
    """What a deploy must not touch unless it has to: the units rigkit wrote and the pids of
    the Ray and vLLM services."""
    units = f"{RAY_UNIT} {VLLM_UNIT}"
    return {
        h.name: c["sb"].ssh(h, f"sha256sum /etc/systemd/system/rigkit-* ; systemctl show -p MainPID --value {units}")
        for h in c["hosts"]
    }


def ray_state(c, timeout: float | None = None) -> dict:
    """The readiness script's view (Ray asked inside the head's container), as the status
    fact reads it; with ``timeout``: the waiting check itself, returning its exit and output."""
    sb, head = c["sb"], c["hosts"][0]
    unit = sb.ssh(head, f"systemctl show -p ExecStart --value {READY_UNIT}")
    argv = shlex.split(unit.split("argv[]=")[1].split(" ;")[0])
    if timeout is None:
        return json.loads(sb.ssh(head, shlex.join([*argv, "--json"])))
    i = argv.index("--timeout")
    argv[i + 1] = str(timeout)
    proc = subprocess.run(
        [*ssh_argv(sb, head), shlex.join(argv)],
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )
    return {"code": proc.returncode, "out": proc.stdout, "err": proc.stderr}


def ssh_argv(sb, host) -> list[str]:
    return [
        "ssh",
        "-i",
        sb.ssh_key,
        "-o",
        f"UserKnownHostsFile={sb.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        f"root@{host.address}",
    ]


def standin_ray(c) -> dict | None:
    """What the stand-in vLLM on the head says about its Ray workers (None: not answering)."""
    script = (
        "import urllib.request\ntry:\n print(urllib.request.urlopen('http://127.0.0.1:8000/rigkit-standin/ray',"
        " timeout=5).read().decode())\nexcept Exception:\n print('null')"
    )
    return json.loads(c["sb"].ssh(c["hosts"][0], f"python3 -c {shlex.quote(script)}"))


def wait_for(what: str, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def alive(c) -> set[str]:
    return {n["address"] for n in ray_state(c)["nodes"] if n["alive"]}


def test_every_node_joins_in_the_services_image(cluster):
    c = cluster
    sb, hosts = c["sb"], c["hosts"]
    state = ray_state(c)
    assert state["reachable"], state
    assert {(n["name"], n["address"]) for n in state["nodes"] if n["alive"] and n["cpu"] >= 1} == {
        (h.name, c["links"][h.name]) for h in hosts
    }, state
    image = json.loads(c["docker"][0].docker("inspect", "rigkit-ray-e2e").stdout)[0]["Config"]["Image"]
    assert image.startswith("rigkit/vllm:")
    for h, engine in zip(hosts, c["docker"]):
        info = json.loads(engine.docker("inspect", "rigkit-ray-e2e").stdout)[0]
        assert info["Config"]["Image"] == image and info["State"]["Running"]
        assert (
            f"NCCL_SOCKET_IFNAME={cable.INTERFACE}" in info["Config"]["Env"]
            and f"VLLM_HOST_IP={c['links'][h.name]}" in info["Config"]["Env"]
        )
        assert info["HostConfig"]["IpcMode"] == "host" and info["HostConfig"]["NetworkMode"] == "host"
        exposure = sb.ssh(h, f"systemd-analyze security {RAY_UNIT} | tail -1")
        level = re.search(r"exposure level for \S+: ([0-9.]+)", exposure)
        assert level and float(level.group(1)) <= 3.0, exposure
    # Only the head serves: the workers have no vLLM unit.
    for worker in hosts[1:]:
        assert sb.ssh(worker, f"test -e /etc/systemd/system/{VLLM_UNIT} && echo yes || echo no") == "no"
    head_unit = sb.ssh(hosts[0], f"cat /etc/systemd/system/{VLLM_UNIT}")
    assert (
        "--distributed-executor-backend ray" in head_unit
        and f"RAY_ADDRESS={c['links'][hosts[0].name]}:{PORT}" in head_unit
    )
    assert "ExecStartPre=/usr/bin/python3 /usr/local/lib/rigkit/ray_ready.py --container rigkit-ray-e2e" in head_unit


def test_the_model_crosses_the_hub_once_and_the_workers_take_it_from_the_head(cluster):
    """One download for the cluster: the stand-in Hub sent each file once (to the head); the
    workers fetched from the head's mirror over the interconnect and verified every file
    against the lock; the head's mirror was bound to its interconnect address and is gone."""
    c = cluster
    sb, head, workers = c["sb"], c["hosts"][0], c["hosts"][1:]
    entry = next(iter(lockfile.load(lockfile.lock_path_for(c["tmp"] / "inventory.py")).values()))
    assert c["hub_sent"] == {f.path: f.size for f in entry.files}, c["hub_sent"]  # once each, no more
    changed = c["first"].changed
    fetched = [n for n in changed if n.startswith("Models | Model ")]
    from_hub = [n for n in fetched if "from the head" not in n]
    from_head = [n for n in fetched if f"from the head {head.name}" in n]
    assert len(from_hub) == 1 and changed[from_hub[0]] == [head.name], changed
    assert len(from_head) == 1 and sorted(changed[from_head[0]]) == sorted(h.name for h in workers), changed
    for h in c["hosts"]:
        state = json.loads(sb.ssh(h, "cat /srv/models/tiny-vllm/.rigkit-verified.json"))
        recorded = {Path(p).name: f["sha256"] for p, f in state["files"].items()}
        assert recorded == {f.path: f.sha256 for f in entry.files}, (h.name, recorded)
        for f in entry.files:
            assert sb.ssh(h, f"sha256sum /srv/models/tiny-vllm/{f.path}").split()[0] == f.sha256
    link = c["links"][head.name]
    journal = sb.ssh(head, f"journalctl -u {SHARE_UNIT} -o cat --no-pager")
    assert f"serving /run/rigkit/share-{CLUSTER} on http://{link}:{SHARE_PORT}" in journal, journal
    assert sb.ssh(head, f"systemctl is-active {SHARE_UNIT}", check=False) != "active"  # stopped after


def test_the_image_is_built_once_and_the_same_image_id_runs_on_every_node(cluster):
    c = cluster
    sb, head, workers = c["sb"], c["hosts"][0], c["hosts"][1:]
    changed = c["first"].changed
    builds = {
        n: hosts for n, hosts in changed.items() if n.startswith("Serve vLLM | Image rigkit/vllm:") and "(FROM " in n
    }
    assert len(builds) == 1 and list(builds.values()) == [[head.name]], changed
    loads = {n: hosts for n, hosts in changed.items() if "from the head" in n and "Image" in n}
    assert len(loads) == 1 and sorted(next(iter(loads.values()))) == sorted(w.name for w in workers), changed
    ids = {
        h.name: json.loads(engine.docker("inspect", "rigkit-ray-e2e").stdout)[0]["Image"]
        for h, engine in zip(c["hosts"], c["docker"])
    }
    assert len(set(ids.values())) == 1 and next(iter(ids.values())).startswith("sha256:"), ids
    link = c["links"][head.name]
    journal = sb.ssh(head, f"journalctl -u {SHARE_UNIT} -o cat --no-pager")
    assert "image_share: serving rigkit/vllm:" in journal and f" on {link}:{SHARE_PORT}" in journal, journal
    for w in workers:  # the image crossed the interconnect, from each worker's link address
        assert f'image_share: {c["links"][w.name]} "GET /image HTTP' in journal, journal


def ray_token(c) -> bytes:
    return (c["tmp"] / "secrets" / f"ray-token-{CLUSTER}").read_bytes().strip()


def ray_client(engine, image: str, address: str, env: list[str]) -> subprocess.Popen:
    """A Ray driver in a container of its own from ``image`` on a node's engine, connecting to
    ``address`` with ``env`` (docker's ``-v``/``-e`` arguments)."""
    script = (
        "import ray\n"
        f"ray.init(address='{address}', logging_level='ERROR', log_to_driver=False)\n"
        "print('CONNECTED', len(ray.nodes()))"
    )
    # As the head's vLLM joins: the node's network, IPC and Ray session volume (where a driver
    # finds its node's raylet), so only the token differs between the clients.
    node = ["--network", "host", "--ipc", "host", "-v", f"rigkit-ray-{CLUSTER}:/tmp/ray"]
    argv = ["docker", "run", "--rm", *node, *env, "--entrypoint", "python3", image, "-c", script]
    return subprocess.Popen(argv, env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_ray_client_without_the_token_is_refused_by_the_head(cluster):
    """From a worker, over the interconnect: a driver with no token, and one with another
    token, are both refused by the head's GCS; the same driver with the cluster's token file
    connects (the refusals are the token's, not the way there)."""
    c = cluster
    head, engine = c["hosts"][0], c["docker"][1]
    image = json.loads(engine.docker("inspect", "rigkit-ray-e2e").stdout)[0]["Config"]["Image"]
    address = f"{c['links'][head.name]}:{PORT}"
    token_file = ["-v", f"/etc/rigkit/ray/{CLUSTER}.token:/run/token:ro", "-e", "RAY_AUTH_TOKEN_PATH=/run/token"]
    clients = {  # at once: a refused driver retries for some 20 s before it gives up
        "no token": ray_client(engine, image, address, []),
        "another token": ray_client(
            engine, image, address, ["-e", "RAY_AUTH_MODE=token", "-e", "RAY_AUTH_TOKEN=" + "0" * 64]
        ),
        "the token": ray_client(engine, image, address, ["-e", "RAY_AUTH_MODE=token", *token_file]),
    }
    outs = {name: (proc.communicate(timeout=180)[0], proc.returncode) for name, proc in clients.items()}
    for name in ("no token", "another token"):
        out, code = outs[name]
        assert code != 0 and "CONNECTED" not in out, (name, out[-3000:])
        assert "Authentication token is missing or incorrect" in out, (name, out[-3000:])
    out, code = outs["the token"]
    assert code == 0 and out.strip().splitlines()[-1] == "CONNECTED 3", out[-3000:]


def test_the_token_is_placed_tight_and_appears_nowhere_else(cluster):
    c = cluster
    sb = c["sb"]
    token = ray_token(c).decode()
    assert len(token) == 64
    token_file = f"/etc/rigkit/ray/{CLUSTER}.token"
    digest = hashlib.sha256(token.encode()).hexdigest()
    leaks = []  # where the token was found (never the token itself in an assertion's text)
    for h, engine in zip(c["hosts"], c["docker"]):
        assert sb.ssh(h, f"stat -c '%a %U %G' {token_file}") == "400 rigkit-ray rigkit-ray"
        assert sb.ssh(h, f"sha256sum < {token_file}").split()[0] == digest  # the same on every node
        # Searched for with the token read from its file, so it is in no argv here either.
        for place, command in {
            "units": "grep -rlF -f {t} /etc/systemd/system",
            "journal": "journalctl -o cat --no-pager | grep -cF -f {t}",
            "processes": "ps -eo args | grep -v grep | grep -cF -f {t}",
        }.items():
            found = sb.ssh(h, command.format(t=token_file) + " || true")
            if found not in ("", "0"):
                leaks.append(f"{h.name} {place}")
        for container in ("rigkit-ray-e2e", "rigkit-vllm-tiny"):
            done = engine.docker("inspect", container, check=False)
            if done.returncode != 0:
                continue  # the workers run no vLLM
            info = json.loads(done.stdout)[0]
            if token in done.stdout:
                leaks.append(f"{h.name} docker inspect {container}")
            assert "RAY_AUTH_MODE=token" in info["Config"]["Env"], info["Config"]["Env"]
            assert "RAY_AUTH_TOKEN_PATH=/run/rigkit/ray-auth-token" in info["Config"]["Env"]
            assert not any(e.startswith("RAY_AUTH_TOKEN=") for e in info["Config"]["Env"])
            logs = engine.docker("logs", container, check=False)
            if token in logs.stdout + logs.stderr:
                leaks.append(f"{h.name} docker logs {container}")
            ray_logs = engine.docker(
                "exec", container, "sh", "-c", "grep -rlF -f /run/rigkit/ray-auth-token /tmp/ray || true", check=False
            )
            if ray_logs.stdout.strip():
                leaks.append(f"{h.name} Ray's logs in {container}: {ray_logs.stdout.split()}")
    # This machine's processes (the containers' among them: their dockerds run here).
    if token in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout:
        leaks.append("processes on this machine")
    # At pyinfra's most verbose too (a re-run: nothing to place, every fact printed).
    again = run_pyinfra(str(c["tmp"] / "inventory.py"), "deploys/rig.py", "-vvv", env=c["env"], timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, run in (("first deploy", c["first"]), ("second deploy", again)):
        if token in run.stdout + run.stderr:
            leaks.append(f"pyinfra output of the {name}")
    assert not leaks, leaks
    # A Ray that authenticates: no warning of an unauthenticated cluster.
    assert "without token authentication" not in c["first"].stdout + c["first"].stderr


def test_vllm_on_the_head_drives_ray_on_every_node(cluster):
    c = cluster
    ops = [n for n in c["first"].changed if "Verify vLLM services" in n]
    assert ops, c["first"].changed  # the engine-neutral checks passed on the head
    workers = standin_ray(c)
    assert workers is not None
    # By address: the containers share each host's network, not its host name (the dockerds
    # of this test run in the hosts' network namespaces only).
    assert sorted(n["ip"] for n in workers["nodes"]) == sorted(c["links"][h.name] for h in c["hosts"]), workers


def test_task_pinned_to_a_worker_runs_there(cluster):
    c = cluster
    head, worker = c["hosts"][0], c["hosts"][2]
    script = (
        "import ray\n"
        f"ray.init(address='{c['links'][head.name]}:{PORT}', logging_level='ERROR', log_to_driver=False)\n"
        f"@ray.remote(resources={{'node:{c['links'][worker.name]}': 0.01}})\n"
        "def where():\n    return ray.util.get_node_ip_address()\n"
        "print(ray.get(where.remote(), timeout=120))"
    )
    out = c["docker"][0].docker("exec", "rigkit-ray-e2e", "python3", "-c", script, timeout=300).stdout
    assert out.strip().splitlines()[-1] == c["links"][worker.name]


def test_second_deploy_changes_nothing(cluster):
    c = cluster
    pids = {h.name: c["sb"].ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}
    again = deploy(c)
    assert again.returncode == 0, again.stderr[-5000:]
    # The interconnect is measured on every deploy (it changes nothing on the hosts).
    assert {op: hosts for op, hosts in again.changed.items() if not is_measurement(op)} == {}, again.changed
    assert pids == {h.name: c["sb"].ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}


def is_measurement(op: str) -> bool:
    return op.startswith("Measure interconnect") or op.startswith(f"Interconnect of {CLUSTER} trusted")


def status(c) -> subprocess.CompletedProcess:
    rigkit = str(Path(sys.executable).with_name("rigkit"))
    return subprocess.run(
        [rigkit, "status", str(c["tmp"] / "inventory.py")],
        capture_output=True,
        text=True,
        env={**os.environ, **c["env"]},
        timeout=180,
    )


def test_status_shows_the_clusters_nodes(cluster):
    c = cluster
    head, w1, w2 = c["hosts"]
    done = status(c)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"  cluster {CLUSTER}: Ray head :{PORT}; {head.name} alive (" in done.stdout
        and f"{w2.name} alive (" in done.stdout
    ), done.stdout
    assert f"  cluster {CLUSTER}: Ray worker of {head.name}" in done.stdout
    # Every node's Ray authenticates, read from its running Ray (its environment and Ray's
    # version), the token file's presence checked, never read.
    auth = f"  cluster {CLUSTER}: Ray authentication on (token mode, Ray 2.54.1; token file present)"
    assert done.stdout.count(auth) == 3, done.stdout
    assert ray_token(c).decode() not in done.stdout + done.stderr
    assert "tiny" in done.stdout and "declared, not deployed" not in done.stdout


def test_new_flags_restart_vllm_on_the_head_and_nothing_else(cluster):
    c = cluster
    sb, head = c["sb"], c["hosts"][0]
    ray_pids = {h.name: sb.ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}
    vllm_pid = sb.ssh(head, f"systemctl show -p MainPID --value {VLLM_UNIT}")
    # A token left by a cluster this worker is no longer declared in goes in the same deploy.
    stale = "/etc/rigkit/ray/gone.token"
    sb.ssh(c["hosts"][1], f"echo x > {stale} && chmod 400 {stale} && echo v > {stale}.version")
    run = deploy(c, service={"max_num_seqs": 4})
    assert run.returncode == 0, run.stderr[-5000:]
    removed = {n: h for n, h in run.changed.items() if f"Remove the Ray token {stale} " in n}
    assert list(removed.values()) == [[c["hosts"][1].name]], run.changed
    assert sb.ssh(c["hosts"][1], "ls /etc/rigkit/ray").split() == [f"{CLUSTER}.token", f"{CLUSTER}.token.version"]
    restarted = [n for n in run.changed if "Restart" in n]
    assert restarted == [f"Serve vLLM | Restart {VLLM_UNIT}"], run.changed
    assert run.changed[restarted[0]] == [head.name]
    assert ray_pids == {h.name: sb.ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}
    assert sb.ssh(head, f"systemctl show -p MainPID --value {VLLM_UNIT}") != vllm_pid
    assert "--max-num-seqs 4" in sb.ssh(head, f"cat /etc/systemd/system/{VLLM_UNIT}")
    assert len((standin_ray(c) or {}).get("nodes") or []) == 3
    c["env"]["RIGKIT_RAY_E2E"] = json.dumps(
        {
            n: {**d, "services": [{**d["services"][0], "max_num_seqs": 4}]}
            for n, d in json.loads(c["env"]["RIGKIT_RAY_E2E"]).items()
        }
    )


def test_a_workers_ray_change_restarts_the_heads_vllm(cluster):
    """Only one worker's unit changes (how long it waits for the head): that worker's Ray restarts,
    and so must the head's vLLM (its actors there died), though its own unit is the same."""
    c = cluster
    sb, head, w1, w2 = c["sb"], *c["hosts"]
    ray_pids = {h.name: sb.ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}
    vllm_pid = sb.ssh(head, f"systemctl show -p MainPID --value {VLLM_UNIT}")
    data = json.loads(c["env"]["RIGKIT_RAY_E2E"])
    data[w2.name]["cluster"]["join_timeout"] += 1  # in its wait-for-the-head step only
    c["env"]["RIGKIT_RAY_E2E"] = json.dumps(data)
    run = deploy(c)
    assert run.returncode == 0, run.stderr[-5000:]
    ray_restarts = {n: hosts for n, hosts in run.changed.items() if RAY_UNIT in n and "Restart" in n}
    assert ray_restarts == {f"Serve vLLM | Restart {RAY_UNIT}": [w2.name]}, run.changed
    # The deploy (re)starts it: a restart, or a start when the engine had already exited
    # (its actor on that worker died) and systemd was waiting to start it again.
    vllm_ops = {
        n: hosts for n, hosts in run.changed.items() if VLLM_UNIT in n and n != f"Serve vLLM | Unit {VLLM_UNIT}"
    }
    assert list(vllm_ops.values()) == [[head.name]], run.changed
    assert set(vllm_ops) <= {f"Serve vLLM | Restart {VLLM_UNIT}", f"Serve vLLM | Start {VLLM_UNIT}"}, run.changed
    after = {h.name: sb.ssh(h, f"systemctl show -p MainPID --value {RAY_UNIT}") for h in c["hosts"]}
    assert after[head.name] == ray_pids[head.name] and after[w1.name] == ray_pids[w1.name]
    assert after[w2.name] != ray_pids[w2.name]
    assert sb.ssh(head, f"systemctl show -p MainPID --value {VLLM_UNIT}") != vllm_pid
    assert len((standin_ray(c) or {}).get("nodes") or []) == 3


@pytest.mark.parametrize(
    "service, cluster_keys, refused",
    [
        ({}, {"interconnect": "host0\nExecStartPre=/bin/sh -c reboot"}, "control characters"),
        ({}, {"interconnect": "$(reboot)"}, "cluster.interconnect: expected a network interface name"),
        ({}, {"address": "198.18.4.11; reboot"}, "cluster.address"),
        ({}, {"nodes": ["sandbox-1", "../sandbox-2", "sandbox-3"]}, "cluster.nodes[1]"),
        ({"cluster": "e2e --api-key x"}, {}, "services[0].cluster"),
        ({"env": {"NCCL_DEBUG": "INFO $(reboot)"}}, {}, "services[0].env.NCCL_DEBUG"),
    ],
)
def test_hostile_cluster_data_changes_nothing(cluster, service, cluster_keys, refused):
    c = cluster
    before = host_state(c)
    run = deploy(c, service=service, cluster=cluster_keys)
    assert run.returncode != 0
    assert refused in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    assert host_state(c) == before


def test_killed_worker_rejoins_and_the_head_serves_again(cluster):
    c = cluster
    sb, worker = c["sb"], c["hosts"][1]
    before = sb.ssh(worker, f"systemctl show -p NRestarts --value {RAY_UNIT}")
    sb.ssh(worker, f"systemctl kill {RAY_UNIT}")
    wait_for(
        "the killed worker restarted",
        lambda: sb.ssh(worker, f"systemctl show -p NRestarts --value {RAY_UNIT}") != before,
    )
    back = ray_state(c, timeout=120)
    assert back["code"] == 0, back
    assert "all 3 nodes alive" in back["out"]
    # vLLM's actors on that node died with it: the engine exits and systemd starts it again.
    nodes = wait_for("the head's vLLM serving on every node again", lambda: (standin_ray(c) or {}).get("nodes"), 180)
    assert len(nodes) == 3


def test_head_waits_for_a_late_worker_and_names_a_missing_one(cluster):
    c = cluster
    sb, head, late = c["sb"], c["hosts"][0], c["hosts"][2]
    sb.ssh(late, f"systemctl stop {RAY_UNIT}")
    try:
        wait_for("Ray to mark the stopped node dead", lambda: c["links"][late.name] not in alive(c), 90)
        missing = ray_state(c, timeout=5)
        assert missing["code"] == 1, missing
        report = status(c)
        assert report.returncode == 1, report.stdout + report.stderr
        assert (
            f"cluster {CLUSTER}: node {late.name} ({c['links'][late.name]}) is not in the Ray cluster" in report.stdout
        )
        assert f"missing node(s): {late.name} ({c['links'][late.name]})" in missing["err"]
        assert head.name not in missing["err"].split("missing node(s):")[1]
        # The head's service waits (the readiness check runs before every start) for a worker
        # that comes late.
        sb.ssh(head, f"systemctl restart --no-block {VLLM_UNIT}")
        time.sleep(5)
        assert sb.ssh(head, f"systemctl show -p ActiveState -p SubState --value {VLLM_UNIT}").split() == [
            "activating",
            "start-pre",
        ]
    finally:
        sb.ssh(late, f"systemctl start {RAY_UNIT}")
    wait_for(
        "vLLM active after the late worker",
        lambda: sb.ssh(head, f"systemctl is-active {VLLM_UNIT}", check=False) == "active",
        120,
    )
    nodes = wait_for("the head's vLLM on every node", lambda: (standin_ray(c) or {}).get("nodes"), 120)
    assert c["links"][late.name] in {n["ip"] for n in nodes}
    journal = sb.ssh(head, f"journalctl -u {VLLM_UNIT} -o cat --no-pager | grep 'ray cluster at' | tail -1")
    assert "all 3 nodes alive" in journal, journal


def test_missing_worker_fails_the_head_after_the_time_out(cluster):
    c = cluster
    sb, head, gone = c["sb"], c["hosts"][0], c["hosts"][1]
    sb.ssh(gone, f"systemctl stop {RAY_UNIT}")
    try:
        wait_for("Ray to mark the stopped node dead", lambda: c["links"][gone.name] not in alive(c), 90)
        failed = subprocess.run(
            [*ssh_argv(sb, head), f"systemctl restart {VLLM_UNIT}"], capture_output=True, text=True, timeout=300
        )
        assert failed.returncode != 0
        journal = sb.ssh(head, f"journalctl -u {VLLM_UNIT} -o cat --no-pager | tail -20")
        assert f"not complete after {JOIN_TIMEOUT} s; missing node(s): {gone.name} ({c['links'][gone.name]})" in journal
        # ...and tries again by itself (a node that boots late is waited for).
        assert sb.ssh(head, f"systemctl show -p SubState --value {VLLM_UNIT}") == "auto-restart"
    finally:
        sb.ssh(gone, f"systemctl start {RAY_UNIT}")
    sb.ssh(head, f"systemctl restart {VLLM_UNIT}", timeout=300)
    assert wait_for("vLLM back on every node", lambda: len((standin_ray(c) or {}).get("nodes") or []) == 3, 120)


def test_a_node_whose_tag_names_another_image_takes_the_heads_exact_image(cluster):
    """A worker whose tag was moved to another image (built there from another base) gets the
    head's image back: it holds that image ID still, so it is only tagged, nothing built; then
    every node runs the same image ID."""
    c = cluster
    hosts, head, odd = c["hosts"], c["docker"][0], c["docker"][2]
    image = json.loads(odd.docker("inspect", "rigkit-ray-e2e").stdout)[0]["Config"]["Image"]
    original = head.image_id(image)
    context = c["tmp"] / "odd"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {image}\nLABEL org.rigkit.vllm.base-id=sha256:{'0' * 64}\n")
    odd.docker("build", "-q", "-t", image, str(context), timeout=300)
    other = odd.image_id(image)
    assert other != original
    try:
        run = deploy(c)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        loads = {n: h for n, h in run.changed.items() if "from the head" in n and n.startswith("Serve vLLM | Image")}
        assert list(loads.values()) == [[hosts[2].name]], run.changed
        assert not [n for n in run.changed if "(FROM " in n], run.changed  # built nowhere
        assert {e.image_id(image) for e in c["docker"]} == {original}
    finally:
        odd.docker("tag", original, image)
        odd.docker("rmi", other, check=False)
    wait_for("vLLM back on every node", lambda: len((standin_ray(c) or {}).get("nodes") or []) == 3, 180)


def test_interconnect_configured_from_bare_and_measured(cluster):
    c = cluster
    first = c["first"].stdout + c["first"].stderr
    for h in c["hosts"]:
        # Over netlink: inside an nspawn host, /sys/class/net shows this machine's interfaces.
        shown = c["sb"].ssh(
            h, f"ip -o addr show dev {cable.INTERFACE} scope global; ip -o link show dev {cable.INTERFACE}"
        )
        assert f"inet {c['links'][h.name]}/24" in shown and " mtu 9000 " in shown, shown
        network = c["sb"].ssh(h, "cat /etc/systemd/network/10-rigkit-interconnect.network")
        assert f"Address={c['links'][h.name]}/24" in network and "MTUBytes=9000" in network
    assert "full-size ping ok" in first and "Refused" not in first
    done = status(c)
    for h in c["hosts"]:
        others = [a for n, a in c["links"].items() if n != h.name]
        assert f"  interconnect {cable.INTERFACE}: link up" in done.stdout, done.stdout
        for peer in others:
            assert f"to {peer}: full-size ping ok" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


def _bad_cable(c, setup: str, teardown: str, expect: str):
    port = cable.port(c["sb"], c["hosts"][2])
    before = host_state(c)
    subprocess.run(setup.format(port=port), shell=True, check=True)
    try:
        run = deploy(c)
    finally:
        subprocess.run(teardown.format(port=port), shell=True, check=True)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Refused: the interconnect of e2e is not trusted, nothing starts" in out, out[-4000:]
    assert re.search(expect, out), out[-4000:]
    assert host_state(c) == before  # no unit, Ray or vLLM touched


def test_an_mtu_1500_end_fails_before_ray_with_both_figures(cluster):
    peer = cluster["links"][cluster["hosts"][2].name]
    _bad_cable(
        cluster,
        "ip link set {port} mtu 1500",
        "ip link set {port} mtu 9000",
        rf"to {re.escape(peer)}: no answer to a 9000-byte do-not-fragment ping",
    )


def test_a_throttled_cable_fails_before_ray_with_both_figures(cluster):
    peer = cluster["links"][cluster["hosts"][2].name]
    _bad_cable(
        cluster,
        "tc qdisc add dev {port} root tbf rate 20mbit burst 64kb latency 100ms",
        "tc qdisc del dev {port} root",
        rf"to {re.escape(peer)}: [0-9.]+ Gb/s measured, {EXPECTED_GBPS:g} Gb/s expected",
    )
