#!/usr/bin/env python3
"""results/summary.md and summary.json from the runs' result.json and bench.json (here, after
the GPU calls): readiness, rigkit's check, the shared-expert dispatch, MTP counters, the sweep."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    rows, table, out = [], [], {}
    for d in sorted(p for p in R.iterdir() if (p / "result.json").is_file()):
        r = json.loads((d / "result.json").read_text())
        disp = r.get("dispatch", {})
        shared = disp.get("shared_expert_methods", [])
        main_shared = sorted(
            {x.rsplit("-> ", 1)[1] for x in shared if x.split(": ", 1)[1].startswith("language_model")}
        )
        spec = r.get("spec_decode") or {}
        c = spec.get("counters_during_bench") or {}
        s = {
            "ready_s": r.get("ready_s"),
            "error": r.get("error"),
            "check_ok": (r.get("check") or {}).get("ok"),
            "hybrid_log": [x.split("] ", 1)[-1] for x in disp.get("hybrid_log", [])],
            "main_model_shared_expert_methods": main_shared,
            "method_counts": disp.get("method_counts"),
            "mtp_drafts": c.get("vllm:spec_decode_num_draft_tokens_total"),
            "mtp_accepted": c.get("vllm:spec_decode_num_accepted_tokens_total"),
            "bench": "run" if (d / "bench/bench.json").is_file() else (r.get("bench") or {}).get("skipped", "not run"),
        }
        out[d.name] = s
        mtp = "n/a" if s["mtp_drafts"] is None else f"{int(s['mtp_accepted'])}/{int(s['mtp_drafts'])}"
        ready = s["ready_s"] if s["ready_s"] is not None else f"not ready: {s['error']}"
        rows.append(
            f"| {d.name} | {ready} | {s['check_ok']} | {', '.join(main_shared) or 'n/a'} | "
            f"{'; '.join(s['hybrid_log']) or '-'} | {mtp} |"
        )
        mtp_on = "yes" if "--speculative-config" in r.get("argv", []) else "no"
        if (d / "bench/bench.json").is_file():
            b = json.loads((d / "bench/bench.json").read_text())
            for depth in b["config"]["depths"]:
                ss = [x for x in b["samples"] if x["depth"] == depth]
                dec = [((x.get("power") or {}).get("decode") or {}) for x in ss]
                table.append(
                    f"| {d.name} | {mtp_on} | {depth:,} | {med([x['prefill_tps'] for x in ss]):,.0f} | "
                    f"{med([x['decode_tps'] for x in ss]):.1f} | {med([x['ttft_s'] for x in ss]) * 1000:.0f} | "
                    f"{med([x.get('watts') for x in dec]) or float('nan'):.0f} | "
                    f"{med([x.get('joules') for x in dec]) or float('nan'):.1f} |"
                )
    md = [
        "| run | ready (s) | rigkit check | main model's shared-expert layers | patch's log line | MTP accepted/drafted during the sweep |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "| run | MTP | context | prefill t/s | decode t/s (streamed) | TTFT ms | decode W (NVML) | decode J per request |",
        "|---|---|---|---|---|---|---|---|",
        *table,
    ]
    (R / "summary.md").write_text("\n".join(md) + "\n")
    (R / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
