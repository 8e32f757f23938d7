"""
``rigkit bench``: prefill, decode, TTFT, power and decode tokens per kWh over a sweep of
context depths, against any OpenAI-compatible server (llama-server, vLLM), with the
provenance of every figure, tables, charts and comparisons.

Modules: ``client`` (streaming client, server token counts and timings), ``prompts`` (prompts
of N tokens from real text), ``power`` (GPU energy sampled on the host), ``hostside`` (what
runs on the host: power sampler, probe, GGUF reader), ``roofline`` (the bandwidth ceiling),
``provenance``, ``sweep`` (the run loop), ``report`` (JSON, CSV, markdown, PNG, compare),
``command`` (the CLI).
"""

from rigkit.bench.client import Client, Sample, ServerError
from rigkit.bench.sweep import BenchError, SweepConfig, plan_depths, run_sweep

__all__ = ["BenchError", "Client", "Sample", "ServerError", "SweepConfig", "plan_depths", "run_sweep"]
