#!/usr/bin/env python3
"""
rigkit's engine-neutral service check (stdlib only; uploaded to /opt/rigkit/bin): for any
OpenAI-compatible server (llama-server, vLLM) wait for readiness while its unit stays up,
ask ``/v1/models``, run a short chat completion and the tool-call replay, with the API key
when the service has one.

    check_service.py MANIFEST   (JSON: {"services": [{name, unit, port, model, model_id, key_file}]})

Exit 0 when every service answers; else 1 and, per failed service, what failed and its journal.
A llama-server router (an entry with ``models``, the default first, and ``models_max``) has
each model loaded in turn by a request naming it, and checked alike; the default last, so it
stays loaded.

    check_service.py MANIFEST --watchdog NAME --failures N --timeout S

One watchdog round (a timer runs it every S seconds): a short generation probe; after N
failures in a row, the unit is restarted. The manifest entry's ``engine`` (llama.cpp's or
vLLM's manifest) says which work counters tell a busy server from a hung one, and its
``ready_timeout`` how long a load may take; state per service in /var/lib/rigkit/watchdog.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
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


def systemctl(*args: str) -> str:
    """systemctl's output: the watchdog's one way to systemd (tests put a recorded fake here)."""
    return subprocess.run(["systemctl", *args], capture_output=True, text=True).stdout


def unit_properties(unit: str, props: str) -> dict[str, str]:
    """``systemctl show -p PROPS UNIT`` as a mapping."""
    out = systemctl("show", "-p", props, unit)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def ready_timeout(svc: dict) -> float:
    """Seconds a service may take to load: the manifest's ``ready_timeout`` (vLLM), else what
    loading reads the whole model in: 60 s plus 15 s per GB (slow disks, 100 GB models)."""
    return float(svc.get("ready_timeout") or 60 + 15 * model_bytes(svc["model"]) / 1e9)


def unit_state(unit: str) -> dict:
    return unit_properties(unit, "ActiveState,SubState,NRestarts")


def journal_tail(unit: str, lines: int = 40) -> str:
    return subprocess.run(
        ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"], capture_output=True, text=True
    ).stdout


def wait_ready(svc: dict, base: str, key: str | None) -> str | None:
    """Until /health (or, where a server has none, /v1/models) answers 200 while the unit stays up."""
    timeout = ready_timeout(svc)
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
    key = service_key(svc)
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
    if svc.get("models"):
        return check_router(svc, base, key)
    return answers(base, key, svc["model_id"], timeout=600)


def answers(base: str, key: str | None, model_id: str, timeout: float) -> str | None:
    """None when ``model_id`` answers a chat completion and the tool-call replay."""
    status, body = request(
        f"{base}/v1/chat/completions",
        key,
        {
            "model": model_id,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
        timeout=timeout,
    )
    if status != 200:
        return f"chat completion returned {status}: {body[:300]}"
    if "choices" not in json.loads(body):
        return f"chat completion without choices: {body[:300]}"
    status, body = request(
        f"{base}/v1/chat/completions",
        key,
        {"model": model_id, "max_tokens": 8, "temperature": 0, "messages": TOOL_REPLAY, "tools": TOOLS},
        timeout=timeout,
    )
    if status != 200:
        return f"tool-call replay returned {status}: {body[:300]}"
    return None


# A router's model states (llama.cpp b11312 tools/server/server-models.h): these hold a
# model's llama-server (a sleeping one was unloaded from memory but wakes on a request).
RUNNING = ("loading", "loaded", "sleeping")


def router_models(base: str, key: str | None, timeout: float = 30) -> dict[str, str] | None:
    """A router's models and their state (``GET /models``, server-models.cpp
    get_router_models: ``{"data": [{"id", "status": {"value"}}]}``), or None when it does not
    answer so."""
    status, body = request(f"{base}/models", key, timeout=timeout)
    if status != 200:
        return None
    try:
        return {m["id"]: m["status"]["value"] for m in json.loads(body)["data"]}
    except (ValueError, TypeError, KeyError):
        return None


def check_router(svc: dict, base: str, key: str | None) -> str | None:
    """Each model of a router, the default last (it stays loaded): loaded by a request naming
    it (the router starts its llama-server and unloads the least recently used past
    ``models_max``), then it must answer, and no more than ``models_max`` may be loaded."""
    listed = router_models(base, key)
    if listed is None:
        return "GET /models did not list the router's models"
    missing = [m["model_id"] for m in svc["models"] if m["model_id"] not in listed]
    if missing:
        return f"GET /models lists {sorted(listed)}, not {missing}"
    limit = svc.get("models_max") or 0
    for model in [*svc["models"][1:], svc["models"][0]]:
        model_id = model["model_id"]
        problem = answers(base, key, model_id, timeout=ready_timeout(model) + 600)
        if problem:
            return f"model {model_id}: {problem}"
        states = router_models(base, key) or {}
        if states.get(model_id) != "loaded":
            return f"model {model_id} answered but is {states.get(model_id)!r}, not loaded"
        running = sorted(m for m, state in states.items() if state in RUNNING)
        if limit and len(running) > limit:
            return f"{running} are loaded, more than models_max {limit}"
    return None


def check_all(services: list[dict], log=print) -> list[str]:
    """What failed, per service, with its journal tail; empty when every service answers."""
    problems = []
    for svc in services:
        problem = check_service(svc)
        if problem:
            problems.append(f"{svc['name']}: {problem}\n--- journal of {svc['unit']} ---\n{journal_tail(svc['unit'])}")
        else:
            note_answered(svc)
            log(f"[rigkit] {svc['name']}: ready, /v1/models, chat and tool-call replay answered")
    return problems


WATCHDOG_STATE = Path("/var/lib/rigkit/watchdog")
# The engines' own work counters (Prometheus /metrics), checked against their sources:
# llama.cpp b11312 (where /slots is off) tools/server/server-task.cpp to_metrics(): n_decode_total grows with every
# llama_decode() (prompt and generation, server-context.cpp metrics_post_decode);
# tokens_predicted_total only when a request ends (metrics_on_prediction on slot reset), so
# alone it would look frozen during one long answer. vLLM 0.19.1 v1/metrics/loggers.py:
# vllm:generation_tokens and vllm:prompt_tokens counters, incremented every engine step.
# SGLang 0.5.12 srt/observability/metrics_collector.py (with --enable-metrics):
# realtime_tokens_total grows every decode log interval, generation_tokens_total only when a
# request ends (observe_one_finished_request).
COUNTERS: dict[str, tuple[str, ...]] = {
    "llama.cpp": ("llamacpp:n_decode_total", "llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total"),
    "vllm": ("vllm:generation_tokens_total", "vllm:prompt_tokens_total"),
    "sglang": ("sglang:realtime_tokens_total", "sglang:generation_tokens_total", "sglang:prompt_tokens_total"),
}
# The gauge saying how much work is in progress (llama.cpp: slots processing; vLLM, SGLang:
# requests in the running batch).
BUSY_GAUGE = {
    "llama.cpp": "llamacpp:requests_processing",
    "vllm": "vllm:num_requests_running",
    "sglang": "sglang:num_running_reqs",
}
# How long a round waits for the counters: the engine answers them between two decode steps.
COUNTERS_TIMEOUT = 30.0


def service_key(svc: dict) -> str | None:
    return Path(svc["key_file"]).read_text().strip() if svc.get("key_file") else None


def probed_model(svc: dict, base: str, key: str | None, timeout: float) -> tuple[str | None, str]:
    """The model a watchdog round probes and the query that keeps a router from loading
    another (server-models.cpp is_autoload: ``?autoload=false``): a service's own model; a
    router's loaded one, its default first, or None when none is loaded (nothing to probe
    but the router itself: loading one would evict what a user loaded)."""
    if not svc.get("models"):
        return svc["model_id"], ""
    states = router_models(base, key, timeout=timeout) or {}
    loaded = [m["model_id"] for m in svc["models"] if states.get(m["model_id"]) == "loaded"]
    return (loaded[0] if loaded else None), "?autoload=false"


def probe(svc: dict, base: str, key: str | None, timeout: float) -> tuple[str | None, bool]:
    """A few generated tokens within ``timeout``: (None, False), or (why not, whether the
    server gave no answer at all, which a busy server and a hung one have in common)."""
    status, body = request(f"{base}/health", None, timeout=timeout)
    if status not in (200, 404):  # 404: a server without /health
        return f"/health: {status or 'no answer'} {body[:200]}", status == 0
    model_id, query = probed_model(svc, base, key, timeout)
    if model_id is None:
        return None, False
    status, body = request(
        f"{base}/v1/chat/completions{query}",
        key,
        {
            "model": model_id,
            "max_tokens": 2,
            "temperature": 0,
            "messages": [{"role": "user", "content": "ping"}],
        },
        timeout=timeout,
    )
    if status != 200:
        return f"chat completion: {status or 'no answer'} {body[:200]}", status == 0
    return None, False


def prometheus_values(text: str) -> dict[str, float]:
    """Each sample's value in a Prometheus text exposition, summed over its label sets (vLLM
    labels per engine and model)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, rest = line.partition(" ")
        if "}" in line:  # labels may hold spaces: the value follows the closing brace
            name_labels, _, rest = line.rpartition("}")
        name = name_labels.split("{", 1)[0].strip()
        try:
            values[name] = values.get(name, 0.0) + float(rest.split()[0])
        except (IndexError, ValueError):
            continue
    return values


def progress(engine: str, base: str, key: str | None, timeout: float, model: str = "") -> dict | None:
    """The engine's work counters now, ``{"counters": {...}, "busy": n}``, or None when
    unreadable. llama-server's come from ``/slots`` (read-only; a ``/metrics`` scrape resets
    the averaged gauges a user's Prometheus reads), else, with ``--no-slots``, ``/metrics``;
    a router's from its loaded ``model`` (``?model=ID&autoload=false``: GET routes by the
    query, server-models.cpp proxy_get)."""
    query = f"?model={urllib.parse.quote(model, safe='')}&autoload=false" if model else ""
    if engine == "llama.cpp":
        status, body = request(f"{base}/slots{query}", key, timeout=timeout)
        if status == 0:  # no answer: /metrics would wait as long again
            return None
        if status == 200:
            return slot_counters(body)
    status, body = request(f"{base}/metrics{query}", key, timeout=timeout)
    if status != 200:
        return None
    values = prometheus_values(body)
    counters = {name: values[name] for name in COUNTERS.get(engine, ()) if name in values}
    if not counters:
        return None
    return {"counters": counters, "busy": values.get(BUSY_GAUGE.get(engine, ""))}


def slot_counters(body: str) -> dict | None:
    """Per slot of llama-server's ``/slots``: its task (a new id with each request) and the
    tokens it processed (server-context.cpp server_slot::to_json: n_prompt_tokens_processed
    grows with each prompt token, next_token[0].n_decoded with each generated one)."""
    try:
        slots = json.loads(body)
        counters = {
            f"slot {s['id']} task {s.get('id_task')}": float(
                sum(t.get("n_decoded", 0) for t in s.get("next_token", [])) + s.get("n_prompt_tokens_processed", 0)
            )
            for s in slots
        }
        return {"counters": counters, "busy": float(sum(bool(s.get("is_processing")) for s in slots))}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def started(unit: dict[str, str]) -> tuple[str, float | None]:
    """The unit's current start, (an id that changes with every start, seconds since it),
    from systemd: InvocationID, and ActiveEnterTimestampMonotonic (CLOCK_MONOTONIC, µs)."""
    start = unit.get("InvocationID") or unit.get("ActiveEnterTimestampMonotonic") or ""
    try:
        entered = int(unit.get("ActiveEnterTimestampMonotonic", "0")) / 1e6
    except ValueError:
        entered = 0
    return start, (time.monotonic() - entered if entered > 0 else None)


START_PROPS = "ActiveState,SubState,InvocationID,ActiveEnterTimestampMonotonic"


def load_state(state_file: Path) -> dict:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    return state if isinstance(state, dict) else {}


def save_state(state_file: Path, state: dict) -> None:
    """Replace the state file whole (the status command reads it any time)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".new")
    tmp.write_text(json.dumps(state, sort_keys=True) + "\n")
    tmp.rename(state_file)


def note_answered(svc: dict) -> None:
    """Tell the watchdog the service answered since its current start (the deploy's check
    just saw it answer), so its load grace ends now; best effort."""
    start, _ = started(unit_properties(svc["unit"], START_PROPS))
    if not start:
        return
    state_file = WATCHDOG_STATE / f"{svc['name']}.json"
    try:
        state = load_state(state_file)
        state.update(start=start, answered=True, failures=0)
        save_state(state_file, state)
    except OSError:
        pass


def watchdog(manifest: dict, name: str, failures: int, timeout: float, log=print) -> None:
    """One watchdog round for service ``name``: probe, count failures in a row, restart the
    service after ``failures`` of them, saying why in the journal.

    A failed probe counts only once the service has answered since its current start, or
    once its ``ready_timeout`` has passed since that start (so a long load is never killed).
    A probe that got no answer counts only when the engine's work counters did not move
    since the last round (a one-slot server busy with a long answer is not hung)."""
    svc = next((s for s in manifest["services"] if s["name"] == name), None)
    if svc is None:
        log(f"[rigkit] watchdog: {name} is not an enabled service here; nothing to do")
        return
    engine = svc.get("engine") or manifest.get("engine") or "llama.cpp"
    state_file = WATCHDOG_STATE / f"{name}.json"
    state = {"failures": 0, "restarts": 0, **load_state(state_file)}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state["last_check"] = now
    unit = unit_properties(svc["unit"], START_PROPS)
    if unit.get("ActiveState") != "active":
        # Not running, or starting: systemd's Restart= handles that. A new start resets the
        # rest (its InvocationID); a reload keeps the start it had.
        state["failures"] = 0
        return save_state(state_file, state)
    start, age = started(unit)
    if state.get("start") != start:
        state.update(start=start, answered=False, failures=0, progress=None)
        state.pop("seen_at", None)
    if age is None:  # systemd gave no start time: count from the first round that saw this start
        state.setdefault("seen_at", time.time())
        age = time.time() - state["seen_at"]
    key = service_key(svc)
    base = f"http://127.0.0.1:{svc['port']}"
    problem, no_answer = probe(svc, base, key, timeout)
    model = probed_model(svc, base, key, min(timeout, COUNTERS_TIMEOUT))[0] if svc.get("models") else ""
    before, after = state.get("progress"), progress(engine, base, key, min(timeout, COUNTERS_TIMEOUT), model or "")
    state["progress"] = after
    grace = ready_timeout(svc)
    if problem is None:
        state.update(failures=0, answered=True, last_ok=now)
    elif not state.get("answered") and age < grace:
        log(
            f"[rigkit] watchdog: {svc['unit']} has not answered since its start {age:.0f}s ago "
            f"(loading; failures count after {grace:.0f}s): {problem}"
        )
        state["failures"] = 0
    elif no_answer and before and after and before["counters"] != after["counters"]:
        log(
            f"[rigkit] watchdog: {svc['unit']} is busy, not hung: no answer within {timeout:g}s, but its "
            f"counters moved ({describe(before, after)})"
        )
        state["failures"] = 0
    else:
        if no_answer:
            frozen = "counters unreadable" if after is None else f"counters did not move ({describe(before, after)})"
            problem = f"{problem}; {frozen}"
        state["failures"] = state.get("failures", 0) + 1
        state["last_error"] = problem
        log(f"[rigkit] watchdog: {svc['unit']} probe failed ({state['failures']}/{failures}): {problem}")
        if state["failures"] >= failures:
            log(
                f"[rigkit] watchdog: restarting {svc['unit']} after {failures} failed probes in a row (last: {problem})"
            )
            systemctl("restart", "--no-block", svc["unit"])
            state.update(failures=0, restarts=state.get("restarts", 0) + 1, last_restart=now)
    save_state(state_file, state)


def describe(before: dict | None, after: dict | None) -> str:
    """The counters of two rounds, for the journal: ``name a -> b``, and the busy gauge."""
    if not after:
        return "unreadable"
    old = (before or {}).get("counters", {})
    moved = ", ".join(f"{k} {f'{old[k]:g}' if k in old else '-'} -> {v:g}" for k, v in after["counters"].items())
    busy = after.get("busy")
    return moved + (f"; {busy:g} in progress" if busy is not None else "")


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
