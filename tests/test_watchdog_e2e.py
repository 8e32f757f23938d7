"""
The watchdog on a real llama-server (sandbox-1 after the shared first deploy): a one-slot
service kept busy by one long answer, longer than ``failures x interval``, is not restarted
and the answer completes (busy is not hung: its decode counter moves); the same service
stopped with SIGSTOP is restarted. The host is deployed back to the suite's inventory at the
end, so later tests find it as the first deploy left it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from mutated_inventory import write_inventory
from pyinfra_run import run_pyinfra, ssh

pytestmark = pytest.mark.e2e

UNIT = "rigkit-llama-tiny.service"
INTERVAL, FAILURES = 5, 2
# One slot, a fast watchdog; a context long enough for one answer of many intervals (the
# tiny model's KV cache at 64k tokens is a few MB).
# llama-server caps a slot's context at the model's training context (server-context.cpp
# n_ctx_slot: min(n_ctx, n_ctx_train), 4096 for the tiny model), so the model's own is raised.
ONE_SLOT = {
    "parallel": 1,
    "watchdog_interval": INTERVAL,
    "watchdog_failures": FAILURES,
    "ctx": 65536,
    "extra_args": ["--no-warmup", "--override-kv", "llama.context_length=int:65536"],
}
# How long the long answer should last: several watchdog rounds (a busy round takes the
# probe's timeout plus the interval).
ANSWER_SECONDS = 8 * INTERVAL * FAILURES


def deploy(first_deploy, tmp_path, mutation: dict | None = None):
    env = dict(first_deploy[1], PYTHONPATH=str(tmp_path))
    inv = write_inventory(tmp_path, mutation) if mutation is not None else "inventories/sandbox.py"
    return run_pyinfra(str(inv), "deploys/rig.py", "--limit", "sandbox-1", env=env)


def complete(address: str, key: str, max_tokens: int, timeout: float) -> dict:
    """A completion of exactly ``max_tokens`` tokens (ignore_eos: the tiny model's text may
    end any time)."""
    body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.6}
    req = urllib.request.Request(
        f"http://{address}:8000/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def main_pid(sb, host) -> str:
    return ssh(sb, host, f"systemctl show -p MainPID --value {UNIT}")


def watchdog_journal(sb, host, since: int) -> str:
    return ssh(sb, host, f"journalctl -u rigkit-watchdog-tiny --since @{since} --no-pager -o cat")


def test_busy_is_not_hung_and_hung_is_restarted(sandbox_hosts, first_deploy, api_key, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    stopped = ""
    try:
        run = deploy(first_deploy, tmp_path, ONE_SLOT)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "--parallel 1" in ssh(sb, host, f"systemctl cat {UNIT}")
        # The answer's length from this host's speed, so it lasts ANSWER_SECONDS here too.
        began = time.monotonic()
        sample = complete(host.address, api_key[0], 512, timeout=120)
        rate = sample["usage"]["completion_tokens"] / (time.monotonic() - began)
        max_tokens = min(int(rate * ANSWER_SECONDS), ONE_SLOT["ctx"] - 256)
        pid = main_pid(sb, host)
        since = int(ssh(sb, host, "date +%s"))
        answer: dict = {}

        def long_answer() -> None:
            try:
                answer["body"] = complete(host.address, api_key[0], max_tokens, timeout=600)
            except Exception as err:  # the assertion below says what happened
                answer["error"] = repr(err)

        worker = threading.Thread(target=long_answer)
        worker.start()
        worker.join(timeout=600)
        assert not worker.is_alive(), "the long answer did not end in 600 s"
        assert "error" not in answer, answer
        assert answer["body"]["usage"]["completion_tokens"] == max_tokens
        assert main_pid(sb, host) == pid, "the watchdog restarted a busy server"
        journal = watchdog_journal(sb, host, since)
        assert "restarting" not in journal, journal
        # The rule was exercised: rounds whose probe got no answer, excused by the counters.
        busy_rounds = journal.count(f"{UNIT} is busy, not hung")
        assert busy_rounds >= FAILURES, (
            f"{busy_rounds} busy rounds in a {max_tokens}-token answer ({rate:.0f} tok/s):\n{journal}"
        )

        # Hung: alive, port open, nothing answers; restarted within a bounded time.
        since = int(ssh(sb, host, "date +%s"))
        ssh(sb, host, f"kill -STOP {pid}")
        stopped = pid
        deadline = time.monotonic() + 150
        now = pid
        while time.monotonic() < deadline:
            now = main_pid(sb, host)
            if now not in (pid, "0"):
                break
            time.sleep(2)
        assert now not in (pid, "0"), "the watchdog did not restart the stopped server in 150 s"
        stopped = ""
        journal = watchdog_journal(sb, host, since)
        assert f"restarting {UNIT} after {FAILURES} failed probes in a row" in journal, journal
        assert "counters unreadable" in journal, journal
    finally:
        if stopped:  # never leave a stopped process behind for the tests after this one
            ssh(sb, host, f"kill -CONT {stopped}", check=False)
        back = deploy(first_deploy, tmp_path)
        assert back.returncode == 0, back.stderr[-3000:]
        assert ssh(sb, host, f"systemctl is-active {UNIT}") == "active"
