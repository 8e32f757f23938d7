"""
rigkit bench against the real llama-server rigkit deployed on sandbox-1 (CPU, the tiny
generated model, ctx 2048 over 2 slots = 1024 tokens per request): a sweep at small depths
through the inventory (over SSH, as pyinfra connects), figures checked against the server's
own timings, charts, a second sweep by --url and the comparison of both, and a service
stopped mid-sweep (partial results and a clear error; the service is started again after).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pyinfra_run import REPO, ssh

pytestmark = pytest.mark.e2e

RIGKIT = str(Path(sys.executable).with_name("rigkit"))
UNIT = "rigkit-llama-tiny.service"


def bench(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RIGKIT, "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def healthy(address: str, port: int = 8000) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def sweep(sandbox_hosts, first_deploy, tmp_path_factory):
    _, env = first_deploy
    out = tmp_path_factory.mktemp("bench")
    run = bench(
        "inventories/sandbox.py",
        "--service",
        "tiny",
        "--limit",
        "sandbox-1",
        "--depths",
        "128,256,512",
        "--runs",
        "3",
        "--gen",
        "64",
        "--out",
        str(out),
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run, out / "sandbox-1" / "tiny"


def test_sweep_figures_agree_with_the_server(sweep):
    run, out = sweep
    data = json.loads((out / "bench.json").read_text())
    assert data["status"] == "complete" and data["engine"] == "llama.cpp"
    assert [r["depth"] for r in data["rows"]] == [128, 256, 512]
    assert len(data["samples"]) == 9
    for s in data["samples"]:
        t = s["timings"]
        # token counts are the server's: the prompt is exactly the depth, nothing came from a cache
        assert s["prompt_tokens"] == s["depth"] == t["prompt_n"] + t["cache_n"]
        assert t["cache_n"] == 0
        assert s["completion_tokens"] == t["predicted_n"] == 64
        assert s["prefill_tps"] > 0 and s["decode_tps"] > 0 and s["server_decode_tps"] > 0
        # the client waits at least as long as the server computes
        assert s["ttft_s"] * 1000 >= t["prompt_ms"] * 0.95
        assert s["e2e_s"] * 1000 >= (t["prompt_ms"] + t["predicted_ms"]) * 0.95
    # streamed decode (what the user gets) and the server's decode rate agree (no MTP here):
    # over all samples, as one sample's few tokens can arrive bunched on this busy machine
    streamed = sum(s["completion_tokens"] - 1 for s in data["samples"]) / sum(
        s["t_last"] - s["t_first"] for s in data["samples"]
    )
    server = sum(s["timings"]["predicted_n"] for s in data["samples"]) / sum(
        s["timings"]["predicted_ms"] / 1000 for s in data["samples"]
    )
    assert 0.5 < streamed / server < 2.0, (streamed, server)
    for r in data["rows"]:
        assert r["prefill_tps"] > 0 and r["ttft_ms"] > 0 and r["decode_tps"] > 0
        assert r["prefill_tps"] <= r["server_prefill_tps"] * 1.05  # prompt / TTFT includes HTTP
        assert r["decode_watts"] is None and r["decode_tokens_per_kwh"] is None  # no GPU: n/a
    # progress lines while it ran
    assert "[9/9] depth    512 run 3/3" in run.stderr


def test_provenance_and_outputs(sweep):
    _, out = sweep
    data = json.loads((out / "bench.json").read_text())
    p = data["provenance"]
    assert p["engine"]["build"] == 11312 and p["engine"]["ref"] == "b11312"
    assert p["unit"] == UNIT and p["host"] == "sandbox-1"
    assert p["argv"][0].endswith("/bin/llama-server") and "--port" in p["argv"] and "2048" in p["argv"]
    assert "--api-key-file" in p["argv"]
    assert [f["bytes"] > 0 for f in p["model_files"]] == [True, True]  # both shards
    assert p["gpus"] == [] and data["power"]["header"]["source"] is None
    md = (out / "bench.md").read_text()
    assert (
        md.splitlines()[0] == "| Context | Prefill (t/s) | Decode (t/s) | TTFT (ms) | Power (W) | Decode (tokens/kWh) |"
    )
    assert md.splitlines()[2].startswith("| 128 |") and md.splitlines()[2].endswith("| n/a | n/a |")
    assert "Server argv: `/opt/rigkit/llama.cpp/current/bin/llama-server --host " in md
    assert " --alias tiny-qwen -m /srv/models/tiny-qwen/" in md
    assert (out / "bench.csv").read_text().startswith("depth,runs,prefill_tps")
    for png in ("throughput.png", "ttft.png"):
        assert (out / png).stat().st_size > 10_000
    assert not (out / "power.png").exists()
    key = json.dumps(data)
    assert "rk-" not in key  # the API key never lands in a result


def test_url_sweep_and_compare(sandbox_hosts, first_deploy, api_key, sweep, tmp_path):
    _, first = sweep
    host = sandbox_hosts.hosts[0]
    second = tmp_path / "url"
    run = bench(
        "--url",
        f"http://{host.address}:8000",
        "--api-key-file",
        api_key[1],
        "--depths",
        "128,256",
        "--runs",
        "2",
        "--gen",
        "32",
        "--out",
        str(second),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((second / "bench.json").read_text())
    assert data["provenance"]["engine"]["build"] == 11312  # from /props over HTTP
    assert data["provenance"]["argv"] is None  # --url alone: the host is not probed
    cmp = bench(
        "compare",
        str(first / "bench.json"),
        str(second / "bench.json"),
        "--names",
        "inventory,url",
        "--out",
        str(tmp_path / "cmp"),
    )
    assert cmp.returncode == 0, cmp.stderr
    lines = cmp.stdout.splitlines()
    assert lines[0].startswith("| Context | prefill t/s: inventory / url / ratio")
    assert lines[2].startswith("| 128 |") and lines[3].startswith("| 256 |") and "x |" in lines[2]
    assert "Depths in only one of them: 512" in cmp.stdout
    assert (tmp_path / "cmp" / "compare-throughput.png").stat().st_size > 10_000


def test_server_stopped_mid_sweep_keeps_partial_results(sandbox_hosts, first_deploy, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    _, env = first_deploy
    proc = subprocess.Popen(
        [
            RIGKIT,
            "bench",
            "inventories/sandbox.py",
            "--service",
            "tiny",
            "--limit",
            "sandbox-1",
            "--depths",
            "128,256,384",
            "--runs",
            "3",
            "--gen",
            "400",
            "--no-warmup",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    stderr = []
    try:
        for line in proc.stderr:
            stderr.append(line)
            if line.startswith("[1/9]"):
                ssh(sb, host, f"systemctl stop {UNIT}")
                break
        _, rest = proc.communicate(timeout=300)
        stderr.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
        ssh(sb, host, f"systemctl start {UNIT}")  # later tests find it serving again
        deadline = time.monotonic() + 60
        while not healthy(host.address) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert healthy(host.address), ssh(sb, host, f"journalctl -u {UNIT} -n 30 --no-pager", check=False)
    err = "".join(stderr)
    assert proc.returncode == 1
    m = re.search(
        r"stopped answering during depth (\d+), run (\d)/3: .*\((\d) of 9 samples kept\); "
        r"partial results in (\S+bench.json)",
        err,
    )
    assert m, err[-2000:]
    kept = int(m.group(3))
    assert 1 <= kept < 9 and (int(m.group(1)), int(m.group(2))) == ((128, 256, 384)[kept // 3], kept % 3 + 1)
    data = json.loads((tmp_path / "sandbox-1" / "tiny" / "bench.json").read_text())
    assert data["status"] == "partial" and len(data["samples"]) == kept
    assert "Status: partial" in (tmp_path / "sandbox-1" / "tiny" / "bench.md").read_text()


FAKE_SMI = r"""#!/usr/bin/env python3
# A stand-in nvidia-smi for one test: one "GPU" drawing 250 W, nothing else.
import sys, time
args = " ".join(sys.argv[1:])
if "power.draw" in args:
    lms = [a for a in sys.argv if a.startswith("-lms=")]
    while True:
        print("0, 250.00", flush=True)
        if not lms:
            break
        time.sleep(int(lms[0][5:]) / 1000)
elif "--query-gpu" in args:
    print("0, Stand-in GPU, 580.0, 1000 MiB, 300.00 W")
"""


def test_power_sampled_over_the_ssh_connection(sandbox_hosts, first_deploy, tmp_path):
    """A stand-in nvidia-smi on the host (no NVML there): the sampler runs over pyinfra's SSH
    connection during the sweep and its samples give watts per phase and tokens per kWh."""
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    _, env = first_deploy
    path = "/usr/local/bin/nvidia-smi"
    ssh(sb, host, f"cat > {path} <<'EOF'\n{FAKE_SMI}EOF\nchmod 755 {path}")
    try:
        run = bench(
            "inventories/sandbox.py",
            "--service",
            "tiny",
            "--limit",
            "sandbox-1",
            "--depths",
            "256",
            "--runs",
            "2",
            "--gen",
            "64",
            "--out",
            str(tmp_path),
            env=env,
        )
    finally:
        ssh(sb, host, f"rm -f {path}")
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "sandbox-1" / "tiny" / "bench.json").read_text())
    assert data["power"]["header"]["source"] == "nvidia-smi"
    assert len(data["power"]["t"]) > 5
    assert data["provenance"]["gpus"][0]["name"] == "Stand-in GPU"
    row = data["rows"][0]
    assert row["decode_watts"] == pytest.approx(250, rel=0.1)
    assert row["decode_tokens_per_kwh"] == pytest.approx(row["decode_tps"] * 3.6e6 / row["decode_watts"], rel=0.25)
    assert (tmp_path / "sandbox-1" / "tiny" / "power.png").stat().st_size > 10_000


def test_loopback_service_reached_through_an_ssh_forward(sandbox_hosts, first_deploy, api_key):
    """What rigkit bench does for a service on the host's 127.0.0.1 (rigkit's default): a
    local port forwarded over the SSH connection."""
    import paramiko

    from rigkit.bench.client import Client
    from rigkit.bench.tunnel import SSHTunnel

    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    client = paramiko.SSHClient()
    client.load_host_keys(sb.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, username="root", key_filename=sb.ssh_key, timeout=30)
    tunnel = SSHTunnel(client.get_transport(), "127.0.0.1", 8000)
    try:
        bench_client = Client(tunnel.url, api_key=api_key[0])
        assert bench_client.engine() == "llama.cpp"
        sample = bench_client.complete("The forwarded port", max_tokens=8, depth=4, run=0)
        assert sample.completion_tokens == 8 and sample.timings["predicted_n"] == 8
    finally:
        tunnel.close()
        client.close()
