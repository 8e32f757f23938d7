"""
An OpenAI-compatible streaming client that measures one request the way a user sees it.

One request = one sample: the prompt goes to ``/v1/completions`` (or
``/v1/chat/completions``) with ``stream: true`` and ``stream_options.include_usage``, a
fixed ``max_tokens`` and ``ignore_eos``; the client stamps the request's start, the arrival
of the first chunk that carries generated text (the first content token: TTFT) and of the
last one. Token counts are the server's: ``usage`` (prompt_tokens, completion_tokens), and
llama-server's ``timings`` (prompt_n, predicted_n, its own prefill and decode speeds,
draft_n and draft_n_accepted with a draft model or MTP). vLLM has no per-request counts of
drafts: its ``/metrics`` counters (:data:`SPEC_DECODE_COUNTERS`), read before and after the
request, give them, which holds while the sweep is the server's only client.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

#: vLLM's speculative-decoding counters (vllm/v1/spec_decode/metrics.py, Prometheus names as
#: its /metrics serves them), each summed over its label sets.
SPEC_DECODE_COUNTERS = (
    "vllm:spec_decode_num_drafts_total",
    "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total",
)


def prometheus_counters(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The named series of a Prometheus text exposition, summed over their labels."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in names:
            continue
        fields = line.rsplit("}", 1)[-1].split() if "{" in line else line.split()[1:]
        try:
            found[name] = found.get(name, 0.0) + float(fields[0])
        except (IndexError, ValueError):
            continue
    return found


class ServerError(RuntimeError):
    """The server did not answer, or answered with an error."""


@dataclass
class Sample:
    depth: int  # the target prompt length in tokens
    run: int
    prompt_tokens: int | None  # counted by the server
    completion_tokens: int | None
    t_start: float  # time.monotonic() when the request was sent
    t_first: float  # first generated text arrived (TTFT = t_first - t_start)
    t_last: float  # last generated text arrived
    t_end: float  # the stream ended
    chunks: int  # chunks that carried generated text
    timings: dict[str, Any] | None = None  # llama-server's own, verbatim
    finish_reason: str | None = None
    wall_start: float = 0.0  # time.time() at t_start, to place the sample in the power log
    power: dict[str, Any] | None = None  # filled in by the sweep: watts and joules per phase
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft_s(self) -> float:
        return self.t_first - self.t_start

    @property
    def e2e_s(self) -> float:
        return self.t_end - self.t_start

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens over the time to the first token (what a user waits for)."""
        n = self.prompt_tokens
        return n / self.ttft_s if n and self.ttft_s > 0 else None

    @property
    def decode_tps(self) -> float | None:
        """Streamed tokens over wall time: tokens after the first over the time from the
        first to the last (what a user gets; with MTP or a draft model it differs from the
        server's step rate)."""
        n, dt = self.completion_tokens, self.t_last - self.t_first
        return (n - 1) / dt if n and n > 1 and dt > 0 else None

    @property
    def server_prefill_tps(self) -> float | None:
        return (self.timings or {}).get("prompt_per_second")

    @property
    def server_decode_tps(self) -> float | None:
        return (self.timings or {}).get("predicted_per_second")

    @property
    def acceptance(self) -> float | None:
        """Accepted draft tokens over drafted ones: llama-server's timings, vLLM's counters."""
        t = self.timings or {}
        if t.get("draft_n"):
            return t["draft_n_accepted"] / t["draft_n"]
        spec = self.extra.get("spec_decode") or {}
        drafted = spec.get("vllm:spec_decode_num_draft_tokens_total")
        return spec.get("vllm:spec_decode_num_accepted_tokens_total", 0.0) / drafted if drafted else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in (
            "ttft_s",
            "e2e_s",
            "prefill_tps",
            "decode_tps",
            "server_prefill_tps",
            "server_decode_tps",
            "acceptance",
        ):
            d[key] = getattr(self, key)
        return d


class Client:
    """One OpenAI-compatible server (llama-server or vLLM) at ``url``."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 3600.0):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self._model = model
        self._engine: str | None = None
        self.props: dict[str, Any] = {}
        self.version: dict[str, Any] = {}

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        try:
            resp = self.session.request(method, self.url + path, timeout=kw.pop("timeout", 60), **kw)
        except requests.ConnectionError as exc:
            raise ServerError(f"{self.url}{path}: the server does not answer ({_reason(exc)})") from None
        except requests.Timeout:
            raise ServerError(f"{self.url}{path}: no answer in time") from None
        if resp.status_code == 401:
            raise ServerError(
                f"{self.url}{path}: 401 Unauthorized (the server wants an API key: "
                "--api-key-file, or api_key_file in the service's host data)"
            )
        return resp

    def _json(self, method: str, path: str, **kw) -> Any:
        resp = self._request(method, path, **kw)
        if resp.status_code != 200:
            raise ServerError(f"{method} {self.url}{path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    # --- what the server is -----------------------------------------------------------------

    def engine(self) -> str:
        """``llama.cpp`` (it answers /props), ``vllm`` (/version) or ``openai`` (neither)."""
        if self._engine is None:
            resp = self._request("GET", "/props")
            if resp.status_code == 200 and "build_info" in resp.text:
                self.props = resp.json()
                self._engine = "llama.cpp"
            else:
                resp = self._request("GET", "/version")
                if resp.status_code == 200:
                    try:
                        self.version = resp.json()
                    except ValueError:
                        self.version = {"version": resp.text.strip()}
                    self._engine = "vllm"
                else:
                    self._engine = "openai"
        return self._engine

    def model(self) -> str:
        if self._model is None:
            data = self._json("GET", "/v1/models").get("data") or [{}]
            self._model = data[0].get("id", "")
        return self._model

    def context_per_request(self) -> int | None:
        """The most tokens (prompt + generated) one request may hold: llama-server's context
        per slot (``-c`` over ``--parallel``), vLLM's ``max_model_len``."""
        self.engine()
        if self.props:
            return (self.props.get("default_generation_settings") or {}).get("n_ctx")
        try:
            for m in self._json("GET", "/v1/models").get("data", []):
                if m.get("max_model_len"):
                    return int(m["max_model_len"])
        except ServerError:
            pass
        return None

    def spec_decode_counters(self) -> dict[str, float] | None:
        """vLLM's speculative-decoding counters now (None: not vLLM, or it drafts nothing)."""
        if self.engine() != "vllm":
            return None
        try:
            resp = self._request("GET", "/metrics", timeout=10)
        except ServerError:
            return None
        if resp.status_code != 200:
            return None
        return prometheus_counters(resp.text, SPEC_DECODE_COUNTERS) or None

    def health(self) -> bool:
        try:
            return self._request("GET", "/health", timeout=5).status_code == 200
        except ServerError:
            return False

    # --- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        if self.engine() == "llama.cpp":
            return self._json("POST", "/tokenize", json={"content": text, "add_special": add_special}, timeout=300)[
                "tokens"
            ]
        return self._json(
            "POST",
            "/tokenize",
            json={"model": self.model(), "prompt": text, "add_special_tokens": add_special},
            timeout=300,
        )["tokens"]

    def detokenize(self, tokens: list[int]) -> str:
        if self.engine() == "llama.cpp":
            return self._json("POST", "/detokenize", json={"tokens": tokens}, timeout=300)["content"]
        return self._json("POST", "/detokenize", json={"model": self.model(), "tokens": tokens}, timeout=300)["prompt"]

    # --- one measured request -----------------------------------------------------------------

    def complete(self, prompt: str, max_tokens: int, depth: int, run: int, chat: bool = False) -> Sample:
        body: dict[str, Any] = {
            "model": self.model(),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        if self.engine() == "llama.cpp":
            body["cache_prompt"] = False  # no reuse of an earlier prompt's KV cache
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        drafts_before = self.spec_decode_counters()
        wall = time.time()
        t_start = time.monotonic()
        resp = self._request("POST", path, json=body, stream=True, timeout=(30, self.timeout))
        if resp.status_code != 200:
            raise ServerError(f"POST {self.url}{path}: HTTP {resp.status_code}: {resp.text[:500]}")
        t_first = t_last = None
        chunks = 0
        usage: dict = {}
        timings = None
        finish = None
        try:
            for line in resp.iter_lines(chunk_size=None):
                if not line or not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.monotonic()
                msg = json.loads(data)
                if "error" in msg:
                    raise ServerError(f"POST {self.url}{path}: {msg['error']}")
                for choice in msg.get("choices") or []:
                    if chat:
                        delta = choice.get("delta") or {}
                        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                    else:
                        text = choice.get("text") or ""
                    if text:
                        chunks += 1
                        t_first = t_first or now
                        t_last = now
                    finish = choice.get("finish_reason") or finish
                if msg.get("usage"):
                    usage = msg["usage"]
                if msg.get("timings"):
                    timings = msg["timings"]
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise ServerError(f"POST {self.url}{path}: the stream broke off ({_reason(exc)})") from None
        t_end = time.monotonic()
        if t_first is None or t_last is None:
            raise ServerError(f"POST {self.url}{path}: the stream carried no generated text")
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if timings:  # llama-server's own counts where usage is missing
            if prompt_tokens is None and timings.get("prompt_n") is not None:
                prompt_tokens = timings["prompt_n"] + timings.get("cache_n", 0)
            if completion_tokens is None:
                completion_tokens = timings.get("predicted_n")
        extra: dict[str, Any] = {}
        drafts_after = self.spec_decode_counters() if drafts_before is not None else None
        if drafts_before is not None and drafts_after is not None:
            extra["spec_decode"] = {k: drafts_after.get(k, 0.0) - drafts_before.get(k, 0.0) for k in drafts_after}
        return Sample(
            depth=depth,
            run=run,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            t_start=t_start,
            t_first=t_first,
            t_last=t_last,
            t_end=t_end,
            chunks=chunks,
            timings=timings,
            finish_reason=finish,
            wall_start=wall,
            extra=extra,
        )


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for hint in (
        "Connection refused",
        "Connection reset",
        "Remote end closed",
        "timed out",
        "IncompleteRead",
        "Connection aborted",
    ):
        if hint in text:
            return hint.lower()
    return text[:200]
