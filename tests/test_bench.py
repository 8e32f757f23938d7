"""
rigkit bench without a real model: prompts, the streaming client, the sweep, power
integration, the GGUF reader and roofline, reports and compare, and a server that dies
mid-sweep, against a small fake OpenAI-compatible server (llama-server's endpoints, a
word-level tokenizer). The real thing is tests/test_bench_e2e.py.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rigkit.bench import command, report
from rigkit.bench.client import Client, ServerError
from rigkit.bench.hostside import gguf_read, model_info
from rigkit.bench.power import PowerMonitor, Runner
from rigkit.bench.prompts import PromptMaker, corpus
from rigkit.bench.roofline import bandwidth_for, ceiling, roofline, weights_per_token
from rigkit.bench.sweep import BenchError, SweepConfig, plan_depths, run_sweep

WORD = re.compile(r"\s*\S+|\s+")


class FakeLlamaServer:
    """llama-server's bench-relevant endpoints: /props, /v1/models, /tokenize,
    /detokenize, /health, streaming /v1/completions with usage and timings. A token is a
    word with its leading whitespace; BOS is token 0 when add_special."""

    def __init__(
        self,
        n_ctx: int = 4096,
        decode_s: float = 0.002,
        die_after: int | None = None,
        api_key: str | None = None,
        vllm_mtp: bool = False,
    ):
        self.api_key = api_key
        # vllm_mtp: vLLM's endpoints instead (/version, max_model_len, its /tokenize bodies, no
        # timings) and an MTP head that accepts every second draft, counted on /metrics only.
        self.vllm_mtp = vllm_mtp
        self.drafts = self.accepted = 0
        self.vocab: dict[str, int] = {"<s>": 0}
        self.words: list[str] = ["<s>"]
        self.n_ctx = n_ctx
        self.decode_s = decode_s
        self.die_after = die_after  # completions answered before the server goes away
        self.completions = 0
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def unauthorized(self):
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": {"message": "Invalid API Key"}})
                    return True
                return False

            def do_GET(self):
                if self.path != "/health" and self.unauthorized():
                    return
                if fake.vllm_mtp and self.path == "/version":
                    self._send(200, {"version": "0.20.2"})
                elif fake.vllm_mtp and self.path == "/metrics":
                    labels = 'engine="0",model_name="fake"'
                    text = (
                        "# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.\n"
                        "# TYPE vllm:spec_decode_num_drafts_total counter\n"
                        f"vllm:spec_decode_num_drafts_total{{{labels}}} {float(fake.drafts)}\n"
                        f"vllm:spec_decode_num_draft_tokens_total{{{labels}}} {float(fake.drafts)}\n"
                        f"vllm:spec_decode_num_accepted_tokens_total{{{labels}}} {float(fake.accepted)}\n"
                        f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{labels},position="0"}} '
                        f"{float(fake.accepted)}\n"
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                elif fake.vllm_mtp and self.path == "/props":
                    self._send(404, {"detail": "Not Found"})
                elif self.path == "/props":
                    self._send(
                        200,
                        {
                            "build_info": "b11312-82af735a2",
                            "total_slots": 1,
                            "model_path": "/srv/models/fake.gguf",
                            "default_generation_settings": {"n_ctx": fake.n_ctx},
                        },
                    )
                elif self.path == "/v1/models":
                    model = {"id": "fake", **({"max_model_len": fake.n_ctx} if fake.vllm_mtp else {})}
                    self._send(200, {"data": [model]})
                elif self.path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.unauthorized():
                    return
                if self.path == "/tokenize" and fake.vllm_mtp:
                    ids = fake.tokenize(body["prompt"])
                    self._send(200, {"tokens": ([0] if body.get("add_special_tokens") else []) + ids})
                elif self.path == "/detokenize" and fake.vllm_mtp:
                    self._send(200, {"prompt": "".join(fake.words[i] for i in body["tokens"])})
                elif self.path == "/tokenize":
                    ids = fake.tokenize(body["content"])
                    self._send(200, {"tokens": ([0] if body.get("add_special") else []) + ids})
                elif self.path == "/detokenize":
                    self._send(200, {"content": "".join(fake.words[i] for i in body["tokens"])})
                elif self.path == "/v1/completions":
                    fake.requests.append(body)
                    with fake.lock:
                        fake.completions += 1
                        if fake.die_after is not None and fake.completions > fake.die_after:
                            self.close_connection = True
                            self.connection.close()
                            threading.Thread(target=fake.httpd.shutdown).start()
                            return
                    self.stream(body)
                else:
                    self._send(404, {"error": "not found"})

            def stream(self, body):
                n_prompt = 1 + len(fake.tokenize(body["prompt"]))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(obj):
                    data = f"data: {json.dumps(obj) if not isinstance(obj, str) else obj}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                time.sleep(n_prompt * 1e-5)  # "prefill"
                for i in range(body["max_tokens"]):
                    chunk({"choices": [{"text": f" w{i}", "index": 0, "finish_reason": None}]})
                    time.sleep(fake.decode_s)
                n = body["max_tokens"]
                if fake.vllm_mtp:  # one draft per step after the first token, every second accepted
                    with fake.lock:
                        fake.drafts += n - 1
                        fake.accepted += (n - 1) // 2
                    chunk({"choices": [{"text": "", "index": 0, "finish_reason": "length"}]})
                    chunk({"choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n}})
                    chunk("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                # The server's own timings are what it was told to take (as llama-server reports
                # its compute time, not the client's): exact however loaded this machine is.
                t0, t1, t2 = 0.0, n_prompt * 1e-5, n_prompt * 1e-5 + n * fake.decode_s
                chunk(
                    {
                        "choices": [{"text": "", "index": 0, "finish_reason": "length"}],
                        "timings": {
                            "cache_n": 0,
                            "prompt_n": n_prompt,
                            "prompt_ms": (t1 - t0) * 1e3,
                            "prompt_per_second": n_prompt / (t1 - t0),
                            "predicted_n": n,
                            "predicted_ms": (t2 - t1) * 1e3,
                            "predicted_per_second": n / (t2 - t1),
                        },
                    }
                )
                chunk(
                    {
                        "choices": [],
                        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n},
                    }
                )
                chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def tokenize(self, text: str) -> list[int]:
        ids = []
        with self.lock:
            for w in WORD.findall(text):
                if w not in self.vocab:
                    self.vocab[w] = len(self.words)
                    self.words.append(w)
                ids.append(self.vocab[w])
        return ids

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    server = FakeLlamaServer()
    yield server
    server.close()


class FakeRunner(Runner):
    """A power sampler at a constant 300 W (energy rising 300 J/s)."""

    where = "fake"

    def stream(self, args):
        stopped = threading.Event()

        def lines():
            yield json.dumps({"source": "nvml-energy", "gpus": [0]}) + "\n"
            t0 = time.time()
            while not stopped.is_set():
                t = time.time()
                yield f"{t:.4f} {300 * (t - t0):.3f} 300.00\n"
                time.sleep(0.01)

        return lines(), stopped.set


# --- prompts ---------------------------------------------------------------------------------


def test_corpus_is_real_text_not_repeated_tokens():
    text = corpus()
    words = text.split()
    assert len(text) > 300_000
    assert len(set(words)) > 10_000  # prose, not one token repeated
    assert "for" in words and "def" in words


def test_prompts_have_the_exact_token_count_and_never_share_a_prefix(fake):
    client = Client(fake.url)
    maker = PromptMaker(client, "abcd1234")
    prompts = [maker.make(n, run) for n in (128, 512, 2000) for run in range(3)]
    for p in prompts:
        assert p.tokens == p.target_tokens == len(client.tokenize(p.text, add_special=True))
    # different runs at one depth: different prefix and different text from the first token on
    first_lines = {p.text.split("\n", 1)[0] for p in prompts}
    assert len(first_lines) == len(prompts)
    bodies = [p.text.split("\n", 1)[1][:200] for p in prompts]
    assert len(set(bodies)) == len(prompts)


# --- client and sweep --------------------------------------------------------------------------


def test_sample_figures_come_from_the_server(fake):
    client = Client(fake.url)
    assert client.engine() == "llama.cpp" and client.context_per_request() == 4096
    s = client.complete(("hello world " * 50).strip(), max_tokens=20, depth=101, run=0)
    assert s.prompt_tokens == 101 and s.completion_tokens == 20 and s.chunks == 20
    assert s.timings["predicted_n"] == 20
    assert 0 < s.ttft_s < s.e2e_s
    assert s.decode_tps > 0 and s.prefill_tps > 0 and s.server_decode_tps > 0
    body = fake.requests[-1]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["cache_prompt"] is False and body["ignore_eos"] is True


def test_vllm_draft_acceptance_comes_from_its_metrics():
    """vLLM streams no timings: each sample's acceptance is the change of vLLM's /metrics
    spec-decode counters over its request, and the report shows it (not n/a)."""
    server = FakeLlamaServer(vllm_mtp=True)
    try:
        client = Client(server.url)
        assert client.engine() == "vllm"
        result = run_sweep(client, SweepConfig(depths=[256, 512], runs=2, gen_tokens=33, warmup=True),
                           progress=lambda m: None)  # fmt: skip
    finally:
        server.close()
    samples = result["samples"]
    assert len(samples) == 4 and all(s["timings"] is None for s in samples)
    for s in samples:  # 32 drafts per request (33 tokens), 16 accepted: the warm-up's are not counted
        assert s["extra"]["spec_decode"]["vllm:spec_decode_num_draft_tokens_total"] == 32
        assert s["acceptance"] == pytest.approx(0.5)
    assert "50%" in report.markdown(result)


def test_prometheus_counters_sum_label_sets_and_skip_others():
    from rigkit.bench.client import prometheus_counters

    text = (
        "# TYPE vllm:spec_decode_num_drafts_total counter\n"
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 3.0\n'
        'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 4.0\n'
        'vllm:spec_decode_num_drafts_created{engine="0"} 1.7e9\n'
        "vllm:spec_decode_num_accepted_tokens_total 2\n"
        'vllm:spec_decode_num_draft_tokens_total{engine="0"} not-a-number\n'
    )
    names = ("vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_accepted_tokens_total",
             "vllm:spec_decode_num_draft_tokens_total")  # fmt: skip
    assert prometheus_counters(text, names) == {
        "vllm:spec_decode_num_drafts_total": 7.0,
        "vllm:spec_decode_num_accepted_tokens_total": 2.0,
    }


def test_plan_depths_caps_at_the_context_and_adds_the_deepest_that_fits():
    assert plan_depths([4096, 8192], None, 128) == ([4096, 8192], [])
    assert plan_depths([128, 256, 512, 4096], 2048, 64, 16) == ([128, 256, 512, 1968], [4096])
    assert plan_depths([256, 128], 4096, 64) == ([128, 256], [])


def test_sweep_with_power_report_and_charts(fake, tmp_path):
    client = Client(fake.url)
    power = PowerMonitor(FakeRunner(), interval=0.01).start()
    progress = []
    saved = []
    try:
        result = run_sweep(
            client,
            SweepConfig(depths=[64, 256, 1024], runs=2, gen_tokens=16),
            power=power,
            save=lambda r: saved.append(len(r["samples"])),
            progress=progress.append,
        )
    finally:
        power.stop()
    assert result["status"] == "complete" and len(result["samples"]) == 6
    assert saved == [1, 2, 3, 4, 5, 6, 6]  # written after every sample
    assert sum(1 for p in progress if p.startswith("[")) == 6 and "[6/6]" in progress[-1]
    for s in result["samples"]:
        assert s["prompt_tokens"] == s["depth"] == s["extra"]["prompt_tokens_tokenized"]
        decode = s["power"]["decode"]
        assert decode["watts"] == pytest.approx(300, rel=0.15)
    rows = report.rows(result)
    assert [r["depth"] for r in rows] == [64, 256, 1024]
    for r in rows:
        # tokens/kWh = decode tokens / decode energy: at 300 W, (t/s) * 3.6e6 / 300
        assert r["decode_tokens_per_kwh"] == pytest.approx(r["decode_tps"] * 3.6e6 / 300, rel=0.2)
        assert r["prefill_tps_min"] <= r["prefill_tps"] <= r["prefill_tps_max"]
    files = report.write_all(result, tmp_path)
    md = files["md"].read_text()
    assert md.startswith("| Context | Prefill (t/s) | Decode (t/s) | TTFT (ms) | Power (W) | Decode (tokens/kWh) |")
    assert "| 1,024 |" in md
    for key in ("throughput_png", "ttft_png", "power_png"):
        assert files[key].stat().st_size > 10_000
    data = json.loads(files["json"].read_text())
    assert len(data["samples"]) == 6 and data["power"]["header"]["source"] == "nvml-energy"
    assert "decode_tokens_per_kwh" in files["csv"].read_text().splitlines()[0]


def test_without_a_gpu_power_is_na_never_zero(fake, tmp_path):
    client = Client(fake.url)
    result = run_sweep(
        client,
        SweepConfig(depths=[64], runs=1, gen_tokens=8),
        power=PowerMonitor(None).start(),
        progress=lambda m: None,
    )
    row = report.rows(result)[0]
    assert row["decode_watts"] is None and row["decode_tokens_per_kwh"] is None
    md = report.markdown(result)
    assert "| n/a | n/a |" in md.splitlines()[2]
    assert " 0 |" not in md.splitlines()[2]
    files = report.write_all(result, tmp_path)
    assert "power_png" not in files  # no power chart without power


def test_server_that_dies_mid_sweep_keeps_partial_results(tmp_path):
    server = FakeLlamaServer(die_after=4)  # warm-up + 3 samples, then it is gone
    try:
        rc = command.main(
            ["--url", server.url, "--depths", "64,128,256", "--runs", "2", "--gen", "8", "--out", str(tmp_path)]
        )
    finally:
        server.httpd.server_close()
    assert rc == 1
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["status"] == "partial" and len(data["samples"]) == 3
    assert "stopped answering during depth 128, run 2/2" in data["error"]
    assert "Status: partial" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "throughput.png").exists()


def test_nothing_fits_is_an_error_not_an_empty_result():
    server = FakeLlamaServer(n_ctx=100)
    try:
        with pytest.raises(BenchError, match="no depth fits the context one request may use .100 tokens"):
            run_sweep(Client(server.url), SweepConfig(depths=[4096], runs=1, gen_tokens=128), progress=lambda m: None)
    finally:
        server.close()


def test_sweep_error_names_the_place_and_what_was_kept():
    server = FakeLlamaServer(die_after=2)
    try:
        with pytest.raises(BenchError) as err:
            run_sweep(Client(server.url), SweepConfig(depths=[64, 128], runs=1, gen_tokens=4), progress=lambda m: None)
    finally:
        server.httpd.server_close()
    assert "during depth 128, run 1/1" in str(err.value) and "(1 of 2 samples kept)" in str(err.value)
    assert len(err.value.result["samples"]) == 1


def test_api_key_from_a_file_and_a_clear_401(tmp_path):
    server = FakeLlamaServer(api_key="rk-secret")
    try:
        with pytest.raises(ServerError, match="401 Unauthorized .*API key"):
            Client(server.url).engine() == "llama.cpp" and Client(server.url).model()
        key = tmp_path / "key"
        key.write_text("rk-secret\n")
        assert (
            command.main(
                [
                    "--url",
                    server.url,
                    "--api-key-file",
                    str(key),
                    "--depths",
                    "32",
                    "--runs",
                    "1",
                    "--gen",
                    "4",
                    "--out",
                    str(tmp_path / "o"),
                ]
            )
            == 0
        )
        assert "rk-secret" not in (tmp_path / "o" / "bench.json").read_text()
    finally:
        server.close()


# --- GGUF, roofline ------------------------------------------------------------------------------


def write_gguf(path: Path, moe: bool) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    if moe:
        w.add_expert_count(8)
        w.add_expert_used_count(2)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float16))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.zeros(64, dtype=np.float32))
    if moe:
        w.add_tensor("blk.0.ffn_up_exps.weight", np.zeros((8, 32, 64), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((100, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_tensor_sizes_and_moe_roofline(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, moe=True)
    info = gguf_read(str(path))
    sizes = {t["name"]: t["bytes"] for t in info["tensors"]}
    assert sizes == {
        "token_embd.weight": 12800,
        "blk.0.attn_q.weight": 8192,
        "blk.0.attn_norm.weight": 256,
        "blk.0.ffn_up_exps.weight": 32768,
        "output.weight": 12800,
    }
    assert info["meta"]["llama.expert_used_count"] == 2
    w = weights_per_token(model_info(str(path)))
    # everything but the embedding; experts at 2 of 8
    assert w["bytes_per_token"] == 8192 + 256 + 12800 + 32768 * 2 / 8
    roof = roofline(model_info(str(path)), ["NVIDIA GB10"], type_k="f16", type_v="f16")
    assert roof["bandwidth"] == 273e9
    kv = 2 * 2 * (16 * 2 + 16 * 2)  # layers * kv heads * (k + v head dim * 2 bytes)
    assert roof["kv_bytes_per_context_token"] == kv
    assert ceiling(roof, 1000) == pytest.approx(273e9 / (w["bytes_per_token"] + kv * 1000))


def test_dense_roofline_and_known_gpus(tmp_path):
    path = tmp_path / "d.gguf"
    write_gguf(path, moe=False)
    assert weights_per_token(model_info(str(path)))["expert_share"] == 1.0
    assert bandwidth_for("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bandwidth_for("NVIDIA GeForce RTX 3090") == 936e9
    assert bandwidth_for("NVIDIA H100 PCIe") == 2.0e12
    assert roofline(model_info(str(path)), ["Mystery GPU"])["bandwidth"] is None
    assert ceiling(None, 10) is None


# --- compare -------------------------------------------------------------------------------------


def test_compare_prints_ratios_and_draws_both(fake, tmp_path):
    results = []
    for name, decode_s in (("before", 0.004), ("after", 0.001)):
        fake.decode_s = decode_s
        out = tmp_path / name
        assert (
            command.main(
                [
                    "--url",
                    fake.url,
                    "--depths",
                    "64,256",
                    "--runs",
                    "1",
                    "--gen",
                    "16",
                    "--out",
                    str(out),
                    "--no-warmup",
                ]
            )
            == 0
        )
        results.append(out / "bench.json")
    assert command.main(["compare", str(results[0]), str(results[1]), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "decode t/s: before / after / ratio" in text
    ratios = [float(m) for m in re.findall(r"/ (\d+\.\d+)x", text.splitlines()[2])]
    assert ratios[2] > 1.5  # server decode t/s, about 4x faster "after" (streamed decode is noisier)
    assert (tmp_path / "cmp" / "compare-throughput.png").stat().st_size > 10_000


def test_provenance_takes_the_model_hashes_from_the_lock():
    from types import SimpleNamespace as NS

    from rigkit.bench.provenance import lock_hashes

    files = (
        NS(path="Q6/m-00001-of-00002.gguf", size=10, sha256="a" * 64),
        NS(path="Q6/m-00002-of-00002.gguf", size=20, sha256="b" * 64),
    )
    other = (NS(path="x.gguf", size=1, sha256="c" * 64),)
    rig = NS(
        locks={"k1": NS(repo="org/m", sha="1" * 40, files=files), "k2": NS(repo="org/x", sha="2" * 40, files=other)}
    )
    service = NS(model="/srv/models/m/m-00001-of-00002.gguf")
    got = lock_hashes(rig, service)
    assert [(h["path"], h["sha256"][0], h["commit"][0]) for h in got] == [
        ("Q6/m-00001-of-00002.gguf", "a", "1"),
        ("Q6/m-00002-of-00002.gguf", "b", "1"),
    ]
    assert lock_hashes(NS(locks={}), service) == []


def test_depth_parsing():
    assert command.parse_depths("512, 4k,128K") == [512, 4096, 131072]
    with pytest.raises(argparse.ArgumentTypeError):
        command.parse_depths("lots")
