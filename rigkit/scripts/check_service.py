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

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]
# Seed 001: llama.cpp b7991 crashed rendering exactly this (arguments as a JSON *string*).
TOOL_REPLAY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature_c\": 18, \"sky\": \"sunny\"}"},
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
    out = subprocess.run(["systemctl", "show", "-p", "ActiveState,SubState,NRestarts", unit],
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_tail(unit: str, lines: int = 40) -> str:
    return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout


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
    status, body = request(f"{base}/v1/chat/completions", key, {
        "model": svc["model_id"], "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]})
    if status != 200:
        return f"chat completion returned {status}: {body[:300]}"
    if "choices" not in json.loads(body):
        return f"chat completion without choices: {body[:300]}"
    status, body = request(f"{base}/v1/chat/completions", key, {
        "model": svc["model_id"], "max_tokens": 8, "temperature": 0,
        "messages": TOOL_REPLAY, "tools": TOOLS})
    if status != 200:
        return f"tool-call replay returned {status}: {body[:300]}"
    return None


def check_all(services: list[dict], log=print) -> list[str]:
    """What failed, per service, with its journal tail; empty when every service answers."""
    problems = []
    for svc in services:
        problem = check_service(svc)
        if problem:
            problems.append(f"{svc['name']}: {problem}\n--- journal of {svc['unit']} ---\n"
                            f"{journal_tail(svc['unit'])}")
        else:
            log(f"[rigkit] {svc['name']}: ready, /v1/models, chat and tool-call replay answered")
    return problems


def main() -> None:
    manifest = json.loads(Path(sys.argv[1]).read_text())
    problems = check_all(manifest["services"])
    if problems:
        print("[rigkit] ERROR: " + "\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
