"""
What a sweep leaves behind: bench.json (every raw sample, the power log, provenance),
bench.csv and bench.md (one row per depth: median, min, max), and PNG charts; and the
comparison of two sweeps.

Columns, per depth (median over the runs; min and max in the CSV and JSON):
  prefill t/s    prompt tokens / TTFT (the server's own prompt_per_second beside it)
  decode t/s     streamed tokens after the first / (last - first token time): what a user
                 gets. "server decode" is llama-server's predicted_per_second (decode steps);
                 with MTP or a draft model the two differ, and the acceptance rate is shown
  TTFT           request sent -> first generated text arrived
  power          mean GPU watts over the decode phase (prefill watts in the CSV/JSON)
  tokens/kWh     decode tokens per kWh of GPU energy in the decode phase
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from rigkit.bench.roofline import ceiling

METRICS = {  # key: (label, unit, how to get it from a sample)
    "prefill_tps": ("Prefill", "t/s", lambda s: s.get("prefill_tps")),
    "server_prefill_tps": ("Server prefill", "t/s", lambda s: s.get("server_prefill_tps")),
    "decode_tps": ("Decode", "t/s", lambda s: s.get("decode_tps")),
    "server_decode_tps": ("Server decode", "t/s", lambda s: s.get("server_decode_tps")),
    "ttft_ms": ("TTFT", "ms", lambda s: s["ttft_s"] * 1000),
    "e2e_s": ("End-to-end", "s", lambda s: s["e2e_s"]),
    "prefill_watts": ("Prefill power", "W", lambda s: _power(s, "prefill", "watts")),
    "decode_watts": ("Decode power", "W", lambda s: _power(s, "decode", "watts")),
    "decode_tokens_per_kwh": ("Decode", "tokens/kWh", lambda s: _per_kwh(s)),
    "acceptance": ("Draft acceptance", "", lambda s: s.get("acceptance")),
    "prompt_tokens": ("Prompt tokens", "", lambda s: s.get("prompt_tokens")),
    "completion_tokens": ("Generated tokens", "", lambda s: s.get("completion_tokens")),
}


def _power(s: dict, phase: str, key: str) -> float | None:
    p = (s.get("power") or {}).get(phase)
    return p.get(key) if p else None


def _per_kwh(s: dict) -> float | None:
    joules = _power(s, "decode", "joules")
    n = s.get("completion_tokens")
    if not joules or not n or n < 2:
        return None
    return (n - 1) / (joules / 3.6e6)  # tokens after the first were made in the decode phase


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per depth: median/min/max of every metric over the runs; None = n/a."""
    by_depth: dict[int, list[dict]] = {}
    for s in result.get("samples", []):
        by_depth.setdefault(s["depth"], []).append(s)
    roof = result.get("roofline")
    gen = (result.get("config") or {}).get("gen_tokens", 0)
    out = []
    for depth in sorted(by_depth):
        samples = by_depth[depth]
        row: dict[str, Any] = {"depth": depth, "runs": len(samples)}
        for key, (_, _, get) in METRICS.items():
            values = [v for v in (get(s) for s in samples) if v is not None]
            row[key] = statistics.median(values) if values else None
            row[key + "_min"] = min(values) if values else None
            row[key + "_max"] = max(values) if values else None
        prompt = row["prompt_tokens"] or depth
        row["roofline_tps"] = ceiling(roof, prompt + gen / 2)
        row["roofline_share"] = (
            (row["server_decode_tps"] or row["decode_tps"] or 0) / row["roofline_tps"] if row["roofline_tps"] else None
        )
        out.append(row)
    return out


def _n(v: float | None, spec: str = ",.1f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    """The seeds' table, then the details and where the figures came from."""
    rs = rows(result)
    p = result.get("provenance") or {}
    lines = [
        "| Context | Prefill (t/s) | Decode (t/s) | TTFT (ms) | Power (W) | Decode (tokens/kWh) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rs:
        lines.append(
            f"| {r['depth']:,} | {_n(r['prefill_tps'])} | {_n(r['decode_tps'])} | "
            f"{_n(r['ttft_ms'], ',.0f')} | {_n(r['decode_watts'], ',.0f')} | "
            f"{_n(r['decode_tokens_per_kwh'], ',.0f')} |"
        )
    lines += [
        "",
        "| Context | prompt tokens | runs | prefill t/s (min-max) | server prefill t/s | "
        "decode t/s (min-max) | server decode t/s | draft acceptance | TTFT ms (min-max) | "
        "end-to-end s | prefill W | decode ceiling t/s | of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        lines.append(
            f"| {r['depth']:,} | {_n(r['prompt_tokens'], ',.0f')} | {r['runs']} | "
            f"{_n(r['prefill_tps'])} ({_n(r['prefill_tps_min'])}-{_n(r['prefill_tps_max'])}) | "
            f"{_n(r['server_prefill_tps'])} | "
            f"{_n(r['decode_tps'])} ({_n(r['decode_tps_min'])}-{_n(r['decode_tps_max'])}) | "
            f"{_n(r['server_decode_tps'])} | {_n(r['acceptance'], '.0%')} | "
            f"{_n(r['ttft_ms'], ',.0f')} ({_n(r['ttft_ms_min'], ',.0f')}-{_n(r['ttft_ms_max'], ',.0f')}) | "
            f"{_n(r['e2e_s'], '.2f')} | {_n(r['prefill_watts'], ',.0f')} | {_n(r['roofline_tps'])} | "
            f"{_n(r['roofline_share'], '.0%')} |"
        )
    cfg = result.get("config") or {}
    lines += [
        "",
        f"{result.get('engine')} at {result.get('url')}, model `{result.get('model')}`; "
        f"{cfg.get('runs')} runs per depth, {cfg.get('gen_tokens')} generated tokens, "
        f"/v1/{cfg.get('api')}, prompts from {cfg.get('prompt_text')} "
        f"(sha256 {str(cfg.get('prompt_text_sha256'))[:12]}), caching defeated: "
        f"{cfg.get('cache_defeated')}. Median of the runs.",
    ]
    power = (result.get("power") or {}).get("header") or {}
    lines.append(
        f"Power: {power.get('source') or 'n/a'}"
        + (f" ({power['why']})" if power.get("why") and not power.get("source") else "")
        + (f", GPUs {power.get('gpus')}" if power.get("gpus") else "")
        + "."
    )
    roof = result.get("roofline") or {}
    if roof.get("bandwidth"):
        lines.append(
            f"Decode ceiling: {roof['bandwidth'] / 1e9:,.0f} GB/s ({roof['bandwidth_source']}) "
            f"/ ({roof['bytes_per_token'] / 1e9:.2f} GB of weights per token"
            + (f", {roof['expert_used_count']} of {roof['expert_count']} experts" if roof.get("expert_count") else "")
            + (
                f" + {roof['kv_bytes_per_context_token'] / 1e3:.1f} kB of K/V per context token"
                if roof.get("kv_bytes_per_context_token")
                else ""
            )
            + ")."
        )
    elif roof.get("why"):
        lines.append(f"Decode ceiling: n/a ({roof['why']}).")
    lines += provenance_lines(p)
    if result.get("status") != "complete":
        lines.append(f"**Status: {result.get('status')}**: {result.get('error') or ''}")
    return "\n".join(lines) + "\n"


def provenance_lines(p: dict[str, Any]) -> list[str]:
    out = []
    eng = p.get("engine") or {}
    if eng:
        out.append("Engine: " + ", ".join(f"{k} {v}" for k, v in eng.items() if v not in (None, "")) + ".")
    gpus = p.get("gpus") or []
    if gpus:
        g = gpus[0]
        out.append(
            f"GPU: {len(gpus)} x {g.get('name')}, driver {g.get('driver_version')}, power limit "
            f"{g.get('power.limit')} (default {g.get('power.default_limit')})."
        )
    if p.get("argv"):
        out.append("Server argv: `" + " ".join(p["argv"]) + "`")
    if p.get("host"):
        out.append(f"Host: {p['host']}; rigkit {p.get('rigkit_version')}; {p.get('date')}.")
    return out


def write_csv(result: dict[str, Any], path: Path) -> None:
    rs = rows(result)
    with open(path, "w", newline="") as f:
        if not rs:
            f.write("depth\n")
            return
        w = csv.DictWriter(f, fieldnames=list(rs[0]))
        w.writeheader()
        for r in rs:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def write_json(result: dict[str, Any], path: Path) -> None:
    data = dict(result, rows=rows(result))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def write_all(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "bench.json", "csv": out / "bench.csv", "md": out / "bench.md"}
    write_json(result, files["json"])
    write_csv(result, files["csv"])
    files["md"].write_text(markdown(result))
    files.update(charts([("", result)], out))
    return files


# --- charts --------------------------------------------------------------------------------


def _series(result: dict, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    xs, med, lo, hi = [], [], [], []
    for r in rows(result):
        if r.get(key) is not None:
            xs.append(r["depth"])
            med.append(r[key])
            lo.append(r[key] - r[key + "_min"] if r.get(key + "_min") is not None else 0)
            hi.append(r[key + "_max"] - r[key] if r.get(key + "_max") is not None else 0)
    return xs, med, lo, hi


def charts(results: list[tuple[str, dict]], out: Path, prefix: str = "") -> dict[str, Path]:
    """throughput.png, ttft.png, power.png (when any power was measured): context on a log
    axis, median with min-max bars, one line per result (compare draws both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def ctx_axis(ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (prompt tokens)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1024:g}K" if v >= 1024 else f"{v:g}"))
        ax.grid(True, which="both", alpha=0.3)

    def title(res: dict) -> str:
        return f"{res.get('model')} ({res.get('engine')})"

    def line(ax, res, key, label, style="-o", **kw):
        xs, med, lo, hi = _series(res, key)
        if xs:
            ax.errorbar(xs, med, yerr=[lo, hi], fmt=style, capsize=3, label=label, **kw)
        return bool(xs)

    files = {}
    multi = len(results) > 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results:
        tag = f"{name}: " if multi else ""
        line(ax1, res, "prefill_tps", f"{tag}prefill (prompt / TTFT)")
        line(ax1, res, "server_prefill_tps", f"{tag}server prefill (timings)", "--x", alpha=0.7)
        line(ax2, res, "decode_tps", f"{tag}decode, streamed (user)")
        line(ax2, res, "server_decode_tps", f"{tag}decode, server timings", "--x", alpha=0.7)
        xs = [r["depth"] for r in rows(res) if r.get("roofline_tps")]
        if xs:
            ax2.plot(
                xs,
                [r["roofline_tps"] for r in rows(res) if r.get("roofline_tps")],
                ":",
                color="grey",
                label=f"{tag}bandwidth ceiling",
            )
    for ax, what in ((ax1, "Prefill"), (ax2, "Decode")):
        ctx_axis(ax)
        ax.set_ylabel(f"{what} throughput (tokens/s)")
        ax.set_title(f"{what} throughput vs context")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.legend(fontsize=8)
    fig.suptitle(" vs ".join(title(r) for _, r in results) if multi else title(results[0][1]), fontsize=10)
    fig.tight_layout()
    files["throughput_png"] = out / f"{prefix}throughput.png"
    fig.savefig(files["throughput_png"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in results:
        line(ax, res, "ttft_ms", f"{name}: time to first token" if multi else "time to first token")
    ctx_axis(ax)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    low, high = ax.get_ylim()
    wide = high / max(low, 1e-9) > 30  # many decades: label minor ticks at 2 and 5 only
    minor = FuncFormatter(lambda v, _: plain(v) if not wide or f"{v:e}"[0] in "25" else "")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(minor)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("TTFT (ms, log scale)")
    ax.set_title("Time to first token vs context")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files["ttft_png"] = out / f"{prefix}ttft.png"
    fig.savefig(files["ttft_png"], dpi=110)
    plt.close(fig)

    if any(_series(res, "decode_watts")[0] for _, res in results):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, res in results:
            tag = f"{name}: " if multi else ""
            line(ax1, res, "decode_watts", f"{tag}decode")
            line(ax1, res, "prefill_watts", f"{tag}prefill", "--s")
            line(ax2, res, "decode_tokens_per_kwh", f"{tag}decode")
        ctx_axis(ax1)
        ax1.set_ylabel("GPU power (W)")
        ax1.set_title("Mean GPU power per phase vs context")
        ax1.set_ylim(0, ax1.get_ylim()[1] * 1.1)
        ax1.legend(fontsize=8)
        ctx_axis(ax2)
        ax2.set_ylabel("decode tokens per kWh")
        ax2.set_title("Decode energy efficiency vs context")
        ax2.set_ylim(0, ax2.get_ylim()[1] * 1.1)
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax2.legend(fontsize=8)
        fig.tight_layout()
        files["power_png"] = out / f"{prefix}power.png"
        fig.savefig(files["power_png"], dpi=110)
        plt.close(fig)
    return files


# --- compare -------------------------------------------------------------------------------

COMPARED = [
    ("prefill_tps", "prefill t/s", ",.1f"),
    ("decode_tps", "decode t/s", ",.1f"),
    ("server_decode_tps", "server decode t/s", ",.1f"),
    ("ttft_ms", "TTFT ms", ",.0f"),
    ("decode_watts", "power W", ",.0f"),
    ("decode_tokens_per_kwh", "tokens/kWh", ",.0f"),
]


def compare(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """Per-depth ratios B/A of the medians (depths both have); n/a where either lacks it."""
    ra = {r["depth"]: r for r in rows(a)}
    rb = {r["depth"]: r for r in rows(b)}
    common = sorted(set(ra) & set(rb))
    head = "| Context | " + " | ".join(f"{label}: {names[0]} / {names[1]} / ratio" for _, label, _ in COMPARED) + " |"
    lines = [head, "|---|" + "---|" * len(COMPARED)]
    for d in common:
        cells = []
        for key, _, spec in COMPARED:
            x, y = ra[d].get(key), rb[d].get(key)
            ratio = f"{y / x:.2f}x" if x and y is not None else "n/a"
            cells.append(f"{_n(x, spec)} / {_n(y, spec)} / {ratio}")
        lines.append(f"| {d:,} | " + " | ".join(cells) + " |")
    only = sorted(set(ra) ^ set(rb))
    out = "\n".join(lines) + "\n"
    if only:
        out += f"\nDepths in only one of them: {', '.join(f'{d:,}' for d in only)}\n"
    for name, res in zip(names, (a, b)):
        p = res.get("provenance") or {}
        eng = p.get("engine") or {}
        out += (
            f"\n{name}: {res.get('model')} at {res.get('url')}, {res.get('started')}, "
            + ", ".join(f"{k} {v}" for k, v in eng.items() if v)
            + f"; status {res.get('status')}"
        )
    return out + "\n"
