#!/usr/bin/env python3
"""
rigkit's engine-neutral service check (stdlib only; uploaded to /opt/rigkit/bin): for any
OpenAI-compatible server (llama-server, vLLM) wait for readiness while its unit stays up,
ask ``/v1/models``, run a short chat completion and the tool-call replay, with the API key
when the service has one.

    check_service.py MANIFEST   (JSON: {"services": [{name, unit, port, model, model_id, key_file}]})

Exit 0 when every service answers; else 1 and, per failed service, what failed and its journal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# Seed 001: llama.cpp b7991 crashed rendering exactly this (arguments as a JSON *string*).
TOOL_REPLAY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "sunny"}'},
]


def request(url: str, key: str | None, body: dict | None = None, timeout: float = 600) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)


def model_bytes(model: str) -> int:
    """Bytes of a model: all shards of a GGUF, or every file of a model directory."""
    path = Path(model)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    stem = path.name.split("-00001-of-")[0] if "-00001-of-" in path.name else None
    shards = list(path.parent.glob(f"{stem}-*-of-*.gguf")) if stem else [path]
    return sum(p.stat().st_size for p in shards if p.exists())


def unit_state(unit: str) -> dict:
    out = subprocess.run(
        ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts", unit], capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_tail(unit: str, lines: int = 40) -> str:
    return subprocess.run(
        ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"], capture_output=True, text=True
    ).stdout


def wait_ready(svc: dict, base: str, key: str | None) -> str | None:
    """Until /health (or, where a server has none, /v1/models) answers 200 while the unit stays up."""
    # Loading reads the whole model: allow 60 s plus 15 s per GB (slow disks, 100 GB models).
    timeout = svc.get("ready_timeout") or 60 + 15 * model_bytes(svc["model"]) / 1e9
    deadline = time.monotonic() + timeout
    restarts = unit_state(svc["unit"]).get("NRestarts")
    status, body = 0, ""
    while time.monotonic() < deadline:
        state = unit_state(svc["unit"])
        # Restart=on-failure turns a crash into "activating (auto-restart)": catch it at once.
        if state.get("SubState") in ("failed", "dead", "auto-restart") or state.get("NRestarts") != restarts:
            return f"{svc['unit']} did not stay up ({state.get('ActiveState')}/{state.get('SubState')})"
        status, body = request(f"{base}/health", None, timeout=5)
        if status == 404:
            status, body = request(f"{base}/v1/models", key, timeout=5)
        if status == 200:
            return None
        time.sleep(0.5)  # 503 while the model loads
    return f"not ready within {timeout:.0f}s (last: {status} {body[:200]})"


def check_service(svc: dict) -> str | None:
    """None when the service is ready and answers; else what went wrong."""
    key = Path(svc["key_file"]).read_text().strip() if svc.get("key_file") else None
    base = f"http://127.0.0.1:{svc['port']}"
    problem = wait_ready(svc, base, key)
    if problem:
        return problem
    status, body = request(f"{base}/v1/models", key, timeout=30)
    if status != 200:
        return f"/v1/models returned {status}: {body[:300]}"
    served = [m.get("id") for m in json.loads(body).get("data", [])]
    # llama-server without --alias lists the model's path; the alias (or file stem) is in it.
    if not any(isinstance(m, str) and svc["model_id"] in m for m in served):
        return f"/v1/models lists {served}, not {svc['model_id']}"
    status, body = request(
        f"{base}/v1/chat/completions",
        key,
        {
            "model": svc["model_id"],
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    )
    if status != 200:
        return f"chat completion returned {status}: {body[:300]}"
    if "choices" not in json.loads(body):
        return f"chat completion without choices: {body[:300]}"
    status, body = request(
        f"{base}/v1/chat/completions",
        key,
        {"model": svc["model_id"], "max_tokens": 8, "temperature": 0, "messages": TOOL_REPLAY, "tools": TOOLS},
    )
    if status != 200:
        return f"tool-call replay returned {status}: {body[:300]}"
    return None


def check_all(services: list[dict], log=print) -> list[str]:
    """What failed, per service, with its journal tail; empty when every service answers."""
    problems = []
    for svc in services:
        problem = check_service(svc)
        if problem:
            problems.append(f"{svc['name']}: {problem}\n--- journal of {svc['unit']} ---\n{journal_tail(svc['unit'])}")
        else:
            log(f"[rigkit] {svc['name']}: ready, /v1/models, chat and tool-call replay answered")
    return problems


WATCHDOG_STATE = Path("/var/lib/rigkit/watchdog")


def probe(svc: dict, timeout: float) -> str | None:
    """A few generated tokens within ``timeout``: None, or why not. A service still loading
    (/health 503) or not running (systemd's Restart= handles that) counts as no failure."""
    key = Path(svc["key_file"]).read_text().strip() if svc.get("key_file") else None
    base = f"http://127.0.0.1:{svc['port']}"
    if unit_state(svc["unit"]).get("ActiveState") != "active":
        return None
    status, body = request(f"{base}/health", None, timeout=timeout)
    if status == 503:
        return None
    if status not in (200, 404):
        return f"/health: {status or 'no answer'} {body[:200]}"
    status, body = request(
        f"{base}/v1/chat/completions",
        key,
        {
            "model": svc["model_id"],
            "max_tokens": 2,
            "temperature": 0,
            "messages": [{"role": "user", "content": "ping"}],
        },
        timeout=timeout,
    )
    if status != 200:
        return f"chat completion: {status or 'no answer'} {body[:200]}"
    return None


def watchdog(manifest: dict, name: str, failures: int, timeout: float) -> None:
    """One watchdog round for service ``name``: probe, count failures in a row, restart the
    service after ``failures`` of them, saying why in the journal."""
    svc = next((s for s in manifest["services"] if s["name"] == name), None)
    if svc is None:
        print(f"[rigkit] watchdog: {name} is not an enabled service here; nothing to do")
        return
    WATCHDOG_STATE.mkdir(parents=True, exist_ok=True)
    state_file = WATCHDOG_STATE / f"{name}.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {"failures": 0, "restarts": 0}
    problem = probe(svc, timeout)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state["last_check"] = now
    if problem is None:
        state.update(failures=0, last_ok=now)
    else:
        state["failures"] = state.get("failures", 0) + 1
        state["last_error"] = problem
        print(f"[rigkit] watchdog: {svc['unit']} probe failed ({state['failures']}/{failures}): {problem}")
        if state["failures"] >= failures:
            print(
                f"[rigkit] watchdog: restarting {svc['unit']} after {failures} failed probes in a row (last: {problem})"
            )
            subprocess.run(["systemctl", "restart", "--no-block", svc["unit"]], check=False)
            state.update(failures=0, restarts=state.get("restarts", 0) + 1, last_restart=now)
    tmp = state_file.with_suffix(".new")
    tmp.write_text(json.dumps(state) + "\n")
    tmp.rename(state_file)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="check_service.py")
    parser.add_argument("manifest")
    parser.add_argument("--watchdog", metavar="SERVICE", help="one watchdog round for this service")
    parser.add_argument("--failures", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    manifest = json.loads(Path(args.manifest).read_text())
    if args.watchdog:
        return watchdog(manifest, args.watchdog, args.failures, args.timeout)
    problems = check_all(manifest["services"])
    if problems:
        print("[rigkit] ERROR: " + "\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
