"""
The context sweep: for each depth, ``runs`` requests of a fresh prompt of that many tokens
and a fixed number of generated tokens, power sampled on the host throughout. The result
(a plain dict, what bench.json holds) is saved after every sample, so a sweep that breaks
off keeps what it measured.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rigkit.bench.client import Client, ServerError
from rigkit.bench.power import PowerMonitor
from rigkit.bench.prompts import PromptMaker, corpus_sha256

K = 1024
# The seeds' depths: 4K ... 128K, 198K, 262K.
SEED_DEPTHS = [4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K, 198 * K, 256 * K]


class BenchError(RuntimeError):
    """The sweep could not go on; ``result`` holds what was measured before."""

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class SweepConfig:
    depths: list[int] = field(default_factory=lambda: list(SEED_DEPTHS))
    runs: int = 3
    gen_tokens: int = 128
    chat: bool = False
    seed: int = 0
    warmup: bool = True
    cap_margin: int = 16  # tokens kept free below the context per request


def plan_depths(depths: list[int], ctx: int | None, gen: int, margin: int = 16) -> tuple[list[int], list[int]]:
    """(depths to run, depths skipped): a depth runs when it and the generated tokens fit in
    the context one request may use; when any were cut, the deepest that fits is added."""
    depths = sorted(set(int(d) for d in depths))
    if not ctx:
        return depths, []
    limit = ctx - gen - margin
    keep = [d for d in depths if d <= limit]
    skipped = [d for d in depths if d > limit]
    if skipped and limit > 0 and (not keep or keep[-1] < limit):
        keep.append(limit)
    return keep, skipped


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def run_sweep(
    client: Client,
    cfg: SweepConfig,
    power: PowerMonitor | None = None,
    provenance: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[str], None] | None = None,
    ctx: int | None = None,
) -> dict[str, Any]:
    """Run the sweep; returns the result dict. Raises BenchError (with ``result``) when the
    server stops answering; ``save`` has then already written the partial result."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sweep_id = secrets.token_hex(4)
    engine = client.engine()
    ctx = ctx or client.context_per_request()
    depths, skipped = plan_depths(cfg.depths, ctx, cfg.gen_tokens, cfg.cap_margin)
    result: dict[str, Any] = {
        "rigkit_bench": 1,
        "sweep_id": sweep_id,
        "url": client.url,
        "engine": engine,
        "model": client.model(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": None,
        "status": "running",
        "error": None,
        "config": {
            "depths": depths,
            "requested_depths": sorted(cfg.depths),
            "skipped_depths": skipped,
            "context_per_request": ctx,
            "runs": cfg.runs,
            "gen_tokens": cfg.gen_tokens,
            "api": "chat" if cfg.chat else "completions",
            "seed": cfg.seed,
            "prompt_text": "CPython documentation (pydoc_data topics, stdlib docstrings)",
            "prompt_text_sha256": corpus_sha256(),
            "cache_defeated": "unique prefix per run" + (", cache_prompt false" if engine == "llama.cpp" else ""),
        },
        "provenance": provenance or {},
        "samples": [],
        "power": None,
    }
    if not depths:
        raise BenchError(
            f"no depth fits the context one request may use ({ctx} tokens, "
            f"{cfg.gen_tokens} of them generated): ask for smaller --depths or --gen"
        )
    if skipped:
        say(
            f"bench: depths {skipped} do not fit the context per request ({ctx} tokens with "
            f"{cfg.gen_tokens} generated): running {depths}"
        )

    def keep() -> None:
        if power is not None:
            result["power"] = power.log()
        if save:
            save(result)

    maker = PromptMaker(client, sweep_id, cfg.seed)
    total = len(depths) * cfg.runs
    done = 0
    started = time.monotonic()
    where = "warm-up"
    try:
        if cfg.warmup:
            say(f"bench: {engine} at {client.url}, model {client.model()}: warm-up request")
            client.complete(
                maker.make(min(64, depths[0] if depths else 64), run=-1).text,
                max_tokens=8,
                depth=0,
                run=-1,
                chat=cfg.chat,
            )
        for depth in depths:
            for run in range(cfg.runs):
                where = f"depth {depth}, run {run + 1}/{cfg.runs}"
                prompt = maker.make(depth, run)
                sample = client.complete(prompt.text, cfg.gen_tokens, depth, run, chat=cfg.chat)
                sample.extra["prompt_tokens_tokenized"] = prompt.tokens
                sample.extra["corpus_offset"] = prompt.offset
                if power is not None and power.available:
                    sample.power = {
                        "prefill": power.phase(sample.t_start, sample.t_first),
                        "decode": power.phase(sample.t_first, sample.t_last),
                    }
                result["samples"].append(sample.to_json())
                done += 1
                keep()
                elapsed = time.monotonic() - started
                watts = (sample.power or {}).get("decode") or {}
                say(
                    f"[{done}/{total}] depth {depth:>6} run {run + 1}/{cfg.runs}: "
                    f"prompt {sample.prompt_tokens} tok, prefill {fmt(sample.prefill_tps, '.0f')} t/s, "
                    f"decode {fmt(sample.decode_tps)} t/s (server {fmt(sample.server_decode_tps)}), "
                    f"TTFT {sample.ttft_s * 1000:.0f} ms, decode power {fmt(watts.get('watts'), '.0f')} W"
                    f"; elapsed {elapsed:.0f}s"
                )
    except (ServerError, OSError) as exc:
        alive = client.health()
        result["status"] = "partial"
        result["error"] = (
            f"the server at {client.url} {'failed' if alive else 'stopped answering'} during {where}: {exc}"
        )
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        keep()
        raise BenchError(f"{result['error']} ({done} of {total} samples kept)", result) from None
    result["status"] = "complete"
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keep()
    return result
