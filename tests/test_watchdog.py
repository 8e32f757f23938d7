"""
The watchdog's rules (rigkit/scripts/check_service.py ``watchdog``), run for real against a
stand-in engine: a local HTTP server on 127.0.0.1 that speaks the endpoints the watchdog
asks (/health, /v1/chat/completions, /metrics, /slots) like llama-server or vLLM, put in the
states a real one passes through (loading, answering, busy, hung). systemd is a recorded
fake in the script's one seam (``check_service.systemctl``); the unit's start time is the
fake's to set, so a 15-minute load takes no time here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rigkit.scripts import check_service

KEY = "rk-test-key"
# Short enough that a round against a server that never answers stays well under a second.
TIMEOUT = 0.3
# How long a blocked request of the stand-in waits at most (a stand-in never outlives a test).
BLOCK_LIMIT = 5.0
BASE = "vllm/vllm-openai:v0.19.1"  # a pinned base image, as vLLM host data needs


class StandInEngine:
    """A stand-in for llama-server or vLLM (not the real thing): the endpoints the watchdog
    uses, in one of these states:

    - ``loading``: /health and everything else 503 (llama-server while it loads);
    - ``answering``: /health 200, chat completions answer, counters as they are;
    - ``busy``: /health 200, a chat completion waits (queued behind the one slot), the work
      counters grow with every read (a long answer being generated);
    - ``busy-frozen``: like busy, but the counters never move (a wedged slot);
    - ``hung``: no request gets an answer (SIGSTOP: the port is open, nothing answers).

    ``slots=False`` answers /slots 501 as llama-server with ``--no-slots`` does, so the
    counters come from /metrics; ``engine="vllm"`` names its counters as vLLM does, with labels.
    /v1/*, /metrics and /slots need the key (as llama-server's ``--api-key`` does)."""

    def __init__(self, engine: str = "llama.cpp", slots: bool = True) -> None:
        self.engine, self.slots = engine, slots
        self.state = "answering"
        self.decoded = 100  # tokens decoded so far (all counters derive from it)
        self.released = threading.Event()
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def _counters_text(self) -> str:
        busy = 1 if self.state.startswith("busy") else 0
        if self.engine == "vllm":
            labels = '{engine="0",model_name="tiny model"}'  # a space inside labels, as names may have
            return (
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
                "# TYPE vllm:generation_tokens_total counter\n"
                f"vllm:generation_tokens_total{labels} {float(self.decoded)}\n"
                f"vllm:prompt_tokens_total{labels} 42.0\n"
                f"vllm:num_requests_running{labels} {float(busy)}\n"
            )
        return (
            "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n"
            "# TYPE llamacpp:n_decode_total counter\n"
            f"llamacpp:n_decode_total {self.decoded}\n"
            "llamacpp:tokens_predicted_total 7\n"
            "llamacpp:prompt_tokens_total 42\n"
            f"llamacpp:requests_processing {busy}\n"
        )

    def _slots(self) -> list[dict]:
        busy = self.state.startswith("busy")
        return [
            {
                "id": 0,
                "id_task": 17,
                "is_processing": busy,
                "n_prompt_tokens_processed": 12,
                "next_token": [{"has_next_token": busy, "n_remain": -1, "n_decoded": self.decoded}],
            }
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _block(self) -> None:
                engine.released.wait(BLOCK_LIMIT)

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                engine.seen.append((path, self.headers.get("Authorization")))
                if engine.state == "hung":
                    return self._block()
                if engine.state == "loading":
                    return self._send(503, '{"error": {"message": "Loading model", "code": 503}}')
                if path == "/health":
                    return self._send(200, '{"status": "ok"}')
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, '{"error": {"message": "Invalid API Key"}}')
                if path == "/v1/chat/completions":
                    if engine.state.startswith("busy"):
                        return self._block()  # queued behind the slot's long answer
                    engine.decoded += 2
                    return self._send(200, json.dumps({"choices": [{"message": {"content": "po"}}]}))
                if path == "/slots" and (engine.engine != "llama.cpp" or not engine.slots):
                    return self._send(501, '{"error": {"message": "Start it with `--slots`"}}')
                if path in ("/metrics", "/slots"):
                    if engine.state == "busy":
                        engine.decoded += 33  # tokens of the long answer since the last look
                    if path == "/metrics":
                        return self._send(200, engine._counters_text(), "text/plain; version=0.0.4")
                    return self._send(200, json.dumps(engine._slots()))
                return self._send(404, '{"error": "not found"}')

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer()

        return Handler


class FakeSystemd:
    """A recorded fake of ``systemctl`` for one unit: ``show`` tells its state and current
    start (an InvocationID and ActiveEnterTimestampMonotonic ``age`` seconds ago), ``restart``
    is recorded and starts the unit anew."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.calls: list[tuple[str, ...]] = []
        self.active = True
        self.invocation = uuid.uuid4().hex
        self.age = 0.0

    @property
    def restarts(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == "restart"]

    def __call__(self, *args: str) -> str:
        self.calls.append(args)
        if args[0] == "restart":
            assert args[-1] == self.unit
            self.invocation, self.age = uuid.uuid4().hex, 0.0
            return ""
        assert args[0] == "show" and args[-1] == self.unit, args
        entered = int((time.monotonic() - self.age) * 1e6)
        return (
            f"ActiveState={'active' if self.active else 'activating'}\nSubState=running\n"
            f"InvocationID={self.invocation}\nActiveEnterTimestampMonotonic={entered}\nNRestarts=0\n"
        )


class Rig:
    """One watched service: the stand-in engine, the fake systemd, its manifest, and rounds."""

    def __init__(self, tmp_path: Path, engine: StandInEngine, failures: int, ready_timeout: int | None) -> None:
        self.engine, self.failures = engine, failures
        key_file = tmp_path / "tiny.key"
        key_file.write_text(KEY + "\n")
        prefix = "vllm" if engine.engine == "vllm" else "llama"
        entry = {
            "name": "tiny",
            "unit": f"rigkit-{prefix}-tiny.service",
            "port": engine.port,
            "model": str(tmp_path / "models/none-00001-of-00002.gguf"),  # absent: 60 s grace
            "model_id": "tiny",
            "engine": engine.engine,
            "key_file": str(key_file),
        }
        if ready_timeout is not None:
            entry["ready_timeout"] = ready_timeout
        self.manifest = {"services": [entry]}
        self.systemd = FakeSystemd(entry["unit"])
        self.log: list[str] = []

    def round(self, age: float | None = None) -> None:
        """One watchdog round (the timer's), the unit started ``age`` seconds ago if given."""
        if age is not None:
            self.systemd.age = age
        check_service.watchdog(self.manifest, "tiny", self.failures, TIMEOUT, log=self.log.append)

    def state(self) -> dict:
        return json.loads((check_service.WATCHDOG_STATE / "tiny.json").read_text())


@pytest.fixture
def make_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    engines: list[StandInEngine] = []
    monkeypatch.setattr(check_service, "WATCHDOG_STATE", tmp_path / "watchdog")

    def make(engine: str = "llama.cpp", slots: bool = True, failures: int = 2, ready_timeout: int | None = None):
        standin = StandInEngine(engine, slots)
        engines.append(standin)
        rig = Rig(tmp_path, standin, failures, ready_timeout)
        monkeypatch.setattr(check_service, "systemctl", rig.systemd)
        return rig

    yield make
    for standin in engines:
        standin.close()


def test_a_load_shorter_than_ready_timeout_is_never_restarted(make_rig):
    """vLLM's 15-minute load: 503 every round for 870 s of a 900 s ready_timeout, then it
    answers; hung after that, it is restarted after ``failures`` rounds."""
    rig = make_rig(engine="vllm", ready_timeout=900)
    rig.engine.state = "loading"
    for age in range(0, 900, 30):
        rig.round(age)
    assert rig.systemd.restarts == []
    assert rig.state()["failures"] == 0 and not rig.state()["answered"]
    assert "has not answered since its start" in rig.log[-1] and "after 900s" in rig.log[-1]
    rig.engine.state = "answering"
    rig.round(905)
    assert rig.state()["answered"] and rig.state()["failures"] == 0
    rig.engine.state = "hung"
    rig.round(935)
    assert rig.systemd.restarts == [] and rig.state()["failures"] == 1
    rig.round(965)
    assert rig.systemd.restarts == [("restart", "--no-block", "rigkit-vllm-tiny.service")]
    assert "restarting rigkit-vllm-tiny.service after 2 failed probes" in rig.log[-1]
    assert "counters unreadable" in rig.log[-1]
    assert rig.state()["restarts"] == 1


def test_a_load_without_any_answer_at_all_is_in_grace_too(make_rig, tmp_path):
    """vLLM's API server listens only once the engine loaded: connection refused is loading."""
    rig = make_rig(engine="vllm", ready_timeout=900)
    rig.manifest["services"][0]["port"] = rig.engine.port
    rig.engine.close()  # nothing listens on the port any more
    for age in range(0, 900, 60):
        rig.round(age)
    assert rig.systemd.restarts == []


def test_hung_after_answering_is_restarted_after_failures_rounds(make_rig):
    rig = make_rig(failures=3)
    rig.round(5)
    assert rig.state()["answered"] and rig.state()["last_ok"]
    rig.engine.state = "hung"
    for n in (1, 2):
        rig.round()
        assert rig.state()["failures"] == n and rig.systemd.restarts == []
    rig.round()
    assert rig.systemd.restarts == [("restart", "--no-block", "rigkit-llama-tiny.service")]
    # The restart is a new start: grace again until the new process answers.
    rig.round()
    assert rig.state()["answered"] is False and rig.state()["failures"] == 0
    assert len(rig.systemd.restarts) == 1


def test_never_answering_is_restarted_once_ready_timeout_passed(make_rig):
    """llama.cpp's grace without ready_timeout: 60 s plus 15 s per GB of the (absent) model."""
    rig = make_rig()
    rig.engine.state = "loading"
    rig.round(30)
    rig.round(59)
    assert rig.systemd.restarts == [] and rig.state()["failures"] == 0
    rig.round(61)
    assert rig.state()["failures"] == 1
    rig.round(62)
    assert rig.systemd.restarts == [("restart", "--no-block", "rigkit-llama-tiny.service")]


def test_the_manifests_ready_timeout_is_the_grace(make_rig):
    rig = make_rig(ready_timeout=10)
    rig.engine.state = "loading"
    rig.round(9)
    assert rig.state()["failures"] == 0
    rig.round(11)
    rig.round(12)
    assert len(rig.systemd.restarts) == 1


def test_busy_with_moving_counters_is_not_hung(make_rig):
    """One slot serving a long answer: every probe times out behind it, for many rounds, but
    its slot's counters grow: never restarted; and the watchdog sent the key."""
    rig = make_rig(failures=2)
    rig.round(120)
    rig.engine.state = "busy"
    for _ in range(8):
        rig.round()
    assert rig.systemd.restarts == []
    assert rig.state()["failures"] == 0
    assert "is busy, not hung" in rig.log[-1] and "slot 0 task 17" in rig.log[-1]
    assert "1 in progress" in rig.log[-1]
    assert ("/slots", f"Bearer {KEY}") in rig.engine.seen
    assert not any(path == "/metrics" for path, _ in rig.engine.seen)  # its scrape resets gauges
    # The answer ends; the server answers again.
    rig.engine.state = "answering"
    rig.round()
    assert rig.state()["failures"] == 0 and rig.state()["last_ok"]


def test_busy_with_frozen_counters_is_restarted(make_rig):
    rig = make_rig(failures=2)
    rig.round(120)
    rig.engine.state = "busy-frozen"
    rig.round()
    assert rig.state()["failures"] == 1
    assert "counters did not move" in rig.state()["last_error"]
    rig.round()
    assert len(rig.systemd.restarts) == 1


def test_busy_then_frozen_counts_from_the_freeze(make_rig):
    """Rounds that saw progress break a run of failures: the count starts when it froze."""
    rig = make_rig(failures=2)
    rig.round(120)
    rig.engine.state = "busy"
    rig.round()
    rig.round()
    rig.engine.state = "busy-frozen"
    rig.round()
    assert rig.systemd.restarts == [] and rig.state()["failures"] == 1
    rig.round()
    assert len(rig.systemd.restarts) == 1


def test_llama_server_without_slots_is_read_through_metrics(make_rig):
    """llamacpp:n_decode_total grows with every decode (tokens_predicted_total only when a
    request ends)."""
    rig = make_rig(slots=False)
    rig.round(120)
    rig.engine.state = "busy"
    for _ in range(4):
        rig.round()
    assert rig.systemd.restarts == []
    assert "llamacpp:n_decode_total 201 -> 234" in rig.log[-1]
    rig.engine.state = "busy-frozen"
    rig.round()
    rig.round()
    assert len(rig.systemd.restarts) == 1


def test_vllm_busy_counters_with_labels(make_rig):
    rig = make_rig(engine="vllm", ready_timeout=900)
    rig.round(1000)
    rig.engine.state = "busy"
    for _ in range(4):
        rig.round()
    assert rig.systemd.restarts == []
    assert "vllm:generation_tokens_total" in rig.log[-1]
    rig.engine.state = "busy-frozen"
    rig.round()
    rig.round()
    assert len(rig.systemd.restarts) == 1


def test_an_error_answer_is_a_failure_even_while_others_progress(make_rig):
    """Busy excuses only a probe without answer: a server that answers the chat with an
    error (here: a key it refuses) fails however its counters move."""
    rig = make_rig(failures=2)
    rig.round(120)
    Path(rig.manifest["services"][0]["key_file"]).write_text("rk-wrong\n")
    rig.round()
    rig.round()
    assert len(rig.systemd.restarts) == 1
    assert "chat completion: 401" in rig.state()["last_error"]


def test_an_inactive_unit_is_left_to_systemd(make_rig):
    rig = make_rig()
    rig.systemd.active = False
    rig.engine.state = "hung"
    for _ in range(3):
        rig.round(1000)
    assert rig.systemd.restarts == []
    assert [c[0] for c in rig.systemd.calls] == ["show"] * 3
    assert rig.engine.seen == []


def test_the_deploys_check_ends_the_grace(make_rig):
    """check_all's verified answer counts as the answer since this start (note_answered)."""
    rig = make_rig()
    rig.engine.state = "loading"
    rig.round(5)
    assert not rig.state()["answered"]
    check_service.note_answered(rig.manifest["services"][0])
    rig.engine.state = "hung"
    rig.round()
    rig.round()
    assert len(rig.systemd.restarts) == 1


def test_state_of_an_earlier_start_does_not_count(make_rig):
    """A new start (systemd's Restart=, a deploy) begins with no failures and the grace."""
    rig = make_rig()
    rig.round(120)
    rig.engine.state = "hung"
    rig.round()
    assert rig.state()["failures"] == 1
    rig.systemd.invocation = uuid.uuid4().hex
    rig.round(1)
    assert rig.state()["failures"] == 0 and rig.systemd.restarts == []


def test_prometheus_values_sums_label_sets():
    text = (
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="a b"} 10.0\n'
        'vllm:generation_tokens_total{engine="1",model_name="a b"} 5.0 1700000000\n'
        "llamacpp:n_decode_total 3\n"
        "garbage\n"
    )
    assert check_service.prometheus_values(text) == {
        "vllm:generation_tokens_total": 15.0,
        "llamacpp:n_decode_total": 3.0,
    }


def test_manifests_name_each_entrys_engine():
    from rigkit.hostdata.rig import parse_rig
    from rigkit.render import llama_server, vllm

    rig = parse_rig(
        "h",
        {
            "gpus": {"count": 0},
            "llama_cpp": {"ref": "b11312", "cuda": False},
            "services": [
                {"name": "a", "model": "/srv/models/a.gguf", "port": 8000},
                {"name": "b", "engine": "vllm", "model": "/srv/models/b", "port": 8001, "base_image": BASE},
            ],
        },
    )
    llama = json.loads(llama_server.services_manifest(rig, "/opt/rigkit/llama.cpp"))
    assert [(s["name"], s["engine"]) for s in llama["services"]] == [("a", "llama.cpp")]
    served = json.loads(vllm.services_manifest(rig, {"b": "rigkit-vllm:x"}))
    assert [(s["name"], s["engine"], s["ready_timeout"]) for s in served["services"]] == [("b", "vllm", 900)]


def test_render_watchdog_is_engine_neutral():
    from rigkit.hostdata.rig import parse_rig
    from rigkit.render.vllm import MANIFEST
    from rigkit.render.watchdog import render_watchdog

    rig = parse_rig(
        "h",
        {
            "gpus": {"count": 0},
            "model_roots": ["/home/me/models"],
            "services": [
                {
                    "name": "b",
                    "engine": "vllm",
                    "model": "/home/me/models/b",
                    "watchdog_interval": 120,
                    "base_image": BASE,
                }
            ],
        },
    )
    unit, timer = render_watchdog(rig.services[0], MANIFEST)
    assert f"check_service.py {MANIFEST} --watchdog b --failures 3 --timeout 120" in unit
    assert "rigkit-vllm-b.service" in unit and "ProtectHome=read-only" in unit
    assert "OnUnitInactiveSec=120" in timer
