"""rigkit.checkpoints on generated checkpoints with Qwen3.5-122B-A10B's real tensor layout
(48 layers, tiny shapes): the hybrid's replacements byte for byte, what it skipped and why,
the MTP weights added, the index, idempotency, range reads, hostile input refused with the
old output kept."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest

from rigkit.checkpoints import build as ckbuild
from rigkit.checkpoints import command, recipes, safetensors, sources, synthetic
from rigkit.checkpoints.safetensors import CheckpointError
from rigkit.models import mirror
from rigkit.models.hub import HubClient, ModelRef
from rigkit.scripts.vllm_host import mtp_weights_problem

REPO_ROOT = Path(__file__).resolve().parents[1]
HYBRID, MTP = recipes.HYBRID.name, recipes.MTP_INDEX.name
MODEL = synthetic.INT4_REPO


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    synthetic.write_int4_autoround(root / "int4")
    synthetic.write_int4_autoround(root / "int4-no-mtp", mtp_in_index=False)
    synthetic.write_fp8(root / "fp8")
    return {"int4": root / "int4", "int4-no-mtp": root / "int4-no-mtp", "fp8": root / "fp8"}


def tensor_bytes(directory: Path, name: str) -> bytes:
    ckpt = sources.LocalCheckpoint(directory)
    return b"".join(ckpt.chunks(name))


def run_hybrid(base: Path, fp8: Path, out: Path, model: str | None = MODEL, mtp: Path | None = None):
    base_ckpt = sources.LocalCheckpoint(base)
    inputs: dict[str, sources.Checkpoint] = {"fp8": sources.LocalCheckpoint(fp8)}
    names = [HYBRID]
    if mtp is not None:
        inputs["mtp"] = sources.LocalCheckpoint(mtp)
        names.append(MTP)
    parts = {"base": ckbuild.fingerprint(base_ckpt), "fp8": ckbuild.fingerprint(sources.LocalCheckpoint(fp8))}
    return ckbuild.build(base_ckpt, inputs, names, out, identity=ckbuild.identity_of(parts), model=model)


def inc_hybrid():
    """The patched vLLM's own FP8-layer finder (files/vllm/rigkit_vllm_patches/inc_hybrid.py)."""
    path = REPO_ROOT / "files/vllm/rigkit_vllm_patches/inc_hybrid.py"
    spec = importlib.util.spec_from_file_location("inc_hybrid_under_test", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- #
# The hybrid
# --------------------------------------------------------------------------- #


def test_hybrid_replaces_shared_experts_byte_for_byte(inputs, tmp_path):
    out = tmp_path / "hybrid"
    result = run_hybrid(inputs["int4"], inputs["fp8"], out)
    report = result.reports[0]
    layers = [
        f"model.language_model.layers.{i}.mlp.shared_expert.{p}_proj" for i in range(48) for p in ("gate", "up", "down")
    ]
    assert sorted(report.replaced) == sorted(layers)
    assert report.block_size == [128, 128]
    done = sources.LocalCheckpoint(out)
    base = sources.LocalCheckpoint(inputs["int4"])
    for layer in layers:
        for suffix in (".weight", ".weight_scale_inv"):
            assert tensor_bytes(out, layer + suffix) == tensor_bytes(inputs["fp8"], layer + suffix)
        assert done.ref(layer + ".weight").info(layer + ".weight").dtype == "F8_E4M3"
    for name in base.weight_map:  # everything else is the base's, unchanged
        if not any(name.startswith(layer + ".") for layer in layers):
            assert done.ref(name).info(name).to_json() == base.ref(name).info(name).to_json()
    sample = "model.language_model.layers.7.mlp.experts.1.down_proj.qweight"
    assert tensor_bytes(out, sample) == tensor_bytes(inputs["int4"], sample)


def test_hybrid_skips_are_counted_and_named(inputs, tmp_path):
    report = run_hybrid(inputs["int4"], inputs["fp8"], tmp_path / "hybrid").reports[0]
    base = set(sources.LocalCheckpoint(inputs["int4"]).weight_map)
    fp8 = set(sources.LocalCheckpoint(inputs["fp8"]).weight_map)
    taken = {f"{layer}{s}" for layer in report.replaced for s in (".weight", ".weight_scale_inv")}
    experts = {n for n in fp8 if ".experts." in n}
    # Computed here from the two layouts, not from the recipe's rules.
    lacking = {n for n in fp8 - taken - experts if n not in base or n.startswith("mtp.")}
    assert set(report.skipped[recipes.NO_COUNTERPART]) == lacking
    assert set(report.skipped[recipes.EXCLUDED_BY_PATTERN]) == experts
    assert set(report.skipped[recipes.BASE_KEEPS_OWN]) == (fp8 & base) - taken - experts - lacking
    assert len(lacking) == 408  # seed 003's count for this layout
    assert "model.language_model.layers.0.linear_attn.in_proj_a.weight" in lacking
    assert "model.language_model.layers.0.linear_attn.in_proj_qkv.weight_scale_inv" in lacking
    manifest = json.loads((tmp_path / "hybrid" / ckbuild.MANIFEST_NAME).read_text())
    assert manifest["recipes"][0]["counts"]["replaced"] == 144
    assert manifest["recipes"][0]["skipped"][recipes.NO_COUNTERPART] == sorted(lacking)


def test_hybrid_is_what_the_patched_vllm_serves(inputs, tmp_path):
    out = tmp_path / "hybrid"
    run_hybrid(inputs["int4"], inputs["fp8"], out)
    done = sources.LocalCheckpoint(out)
    metadata = {n: done.ref(n).info(n).to_json() for n in done.weight_map}
    layers, block = inc_hybrid().find_fp8_layers(metadata)
    assert len(layers) == 144 and block == [128, 128]
    config = json.loads((out / "config.json").read_text())
    assert all(recipes.inc_bits(config["quantization_config"], layer) == 16 for layer in layers)


def test_index_lists_every_tensor_once_and_every_file(inputs, tmp_path):
    out = tmp_path / "hybrid"
    run_hybrid(inputs["int4"], inputs["fp8"], out, mtp=inputs["int4"])
    index = json.loads((out / sources.INDEX_NAME).read_text())
    seen: dict[str, str] = {}
    for path in sorted(out.glob("*.safetensors")):
        for name in safetensors.read_header(path).tensors:
            assert name not in seen, f"{name} in {seen.get(name)} and {path.name}"
            seen[name] = path.name
    assert index["weight_map"] == seen
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    sizes = sum(t.nbytes for p in out.glob("*.safetensors") for t in safetensors.read_header(p).tensors.values())
    assert index["metadata"]["total_size"] == sizes


def test_unchanged_files_are_hard_linked(inputs, tmp_path):
    out = tmp_path / "hybrid"
    result = run_hybrid(inputs["int4"], inputs["fp8"], out, mtp=inputs["int4"])
    # The first shard (embeddings) and the MTP file keep every tensor: linked, not copied.
    for name in ("model-00001-of-00005.safetensors", synthetic.EXTRA_FILE):
        assert name in result.linked
        assert os.stat(out / name).st_ino == os.stat(inputs["int4"] / name).st_ino
    assert "model-00002-of-00005.safetensors" in result.written  # lost its BF16 shared experts


def test_copies_where_links_cannot_be_made(inputs, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(ckbuild.os, "link", no_links)
    out = tmp_path / "hybrid"
    run_hybrid(inputs["int4"], inputs["fp8"], out)
    first = "model-00001-of-00005.safetensors"
    assert os.stat(out / first).st_ino != os.stat(inputs["int4"] / first).st_ino
    assert (out / first).read_bytes() == (inputs["int4"] / first).read_bytes()


def test_rerun_is_a_noop(inputs, tmp_path):
    out = tmp_path / "hybrid"
    assert run_hybrid(inputs["int4"], inputs["fp8"], out).changed
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = run_hybrid(inputs["int4"], inputs["fp8"], out)
    assert not again.changed
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before


# --------------------------------------------------------------------------- #
# MTP
# --------------------------------------------------------------------------- #


def test_mtp_index_adds_the_mtp_weights_a_hybrid_lacks(inputs, tmp_path):
    hybrid = tmp_path / "hybrid"
    run_hybrid(inputs["int4-no-mtp"], inputs["fp8"], hybrid)
    assert mtp_weights_problem(hybrid) is not None  # rigkit's MTP check refuses it
    assert command.main(["mtp-index", "--source", str(inputs["int4"]), "--target", str(hybrid), "--model", MODEL]) == 0
    manifest = json.loads((hybrid / ckbuild.MANIFEST_NAME).read_text())
    assert manifest["recipes"][0]["counts"]["added"] == 785
    assert mtp_weights_problem(hybrid) is None
    assert tensor_bytes(hybrid, "mtp.fc.weight") == tensor_bytes(inputs["int4"], "mtp.fc.weight")
    # Again: everything is in place, nothing written.
    before = {p.name: p.stat().st_mtime_ns for p in hybrid.iterdir()}
    assert command.main(["mtp-index", "--source", str(inputs["int4"]), "--target", str(hybrid)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in hybrid.iterdir()} == before


def test_mtp_index_refuses_a_source_without_mtp(inputs, tmp_path, capsys):
    hybrid = tmp_path / "hybrid"
    run_hybrid(inputs["int4-no-mtp"], inputs["fp8"], hybrid)
    assert command.main(["mtp-index", "--source", str(inputs["int4-no-mtp"]), "--target", str(hybrid)]) == 1
    assert "no mtp.* tensors" in capsys.readouterr().err


def test_cli_hybrid_prints_what_it_did(inputs, tmp_path, capsys):
    out = tmp_path / "hybrid"
    args = ["hybrid-fp8", "--base", str(inputs["int4"]), "--fp8", str(inputs["fp8"]), "--out", str(out)]
    assert command.main([*args, "--model", MODEL]) == 0
    text = capsys.readouterr().out
    assert "replaced 144" in text and "skipped: no counterpart 408" in text and "block size [128, 128]" in text
    assert command.main(args) == 0
    assert "nothing built" in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# Failures keep the old output
# --------------------------------------------------------------------------- #


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def rewrite(path: Path, change) -> None:
    """A copy of a safetensors file with its header changed by ``change(header dict)``."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    body = change(header, body)
    raw = json.dumps(header).encode()
    path.unlink()  # not through a hard link into another checkpoint
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def drop_tensor(name: str):
    def change(header, body):
        begin, end = header.pop(name)["data_offsets"]
        for entry in header.values():
            if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] >= end:
                entry["data_offsets"] = [o - (end - begin) for o in entry["data_offsets"]]
        return body[:begin] + body[end:]

    return change


def drop_from_index(directory: Path, name: str) -> None:
    index = json.loads((directory / sources.INDEX_NAME).read_text())
    del index["weight_map"][name]
    (directory / sources.INDEX_NAME).write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("problem", "error"),
    [
        ("scale missing", "without its scale"),
        ("block sizes disagree", "differs from"),
        ("header lies", "runs past the end of the file"),
        ("hostile name", "expected a tensor name"),
    ],
)
def test_bad_fp8_input_is_refused_and_old_output_kept(inputs, tmp_path, problem, error):
    out = tmp_path / "hybrid"
    run_hybrid(inputs["int4"], inputs["fp8"], out)
    kept = snapshot(out)
    fp8 = copy_checkpoint(inputs["fp8"], tmp_path / "fp8")
    shard = fp8 / "model-00002-of-00005.safetensors"
    layer = "model.language_model.layers.0.mlp.shared_expert.up_proj"
    if problem == "scale missing":
        rewrite(shard, drop_tensor(layer + ".weight_scale_inv"))
        drop_from_index(fp8, layer + ".weight_scale_inv")
    elif problem == "block sizes disagree":

        def wider(header, body):  # a [1, 2] scale: blocks of [128, 64]
            header[layer + ".weight_scale_inv"]["shape"] = [1, 2]
            begin, end = header[layer + ".weight_scale_inv"]["data_offsets"]
            for entry in header.values():
                if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] >= end:
                    entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
            header[layer + ".weight_scale_inv"]["data_offsets"] = [begin, end + 4]
            return body[:end] + b"\0\0\0\0" + body[end:]

        rewrite(shard, wider)
    elif problem == "header lies":
        data = shard.read_bytes()
        shard.unlink()
        shard.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    else:

        def hostile(header, body):
            header["../../etc/passwd"] = header.pop(layer + ".weight")
            return body

        rewrite(shard, hostile)
    with pytest.raises(CheckpointError, match=error.replace("[", r"\[").replace("]", r"\]")):
        run_hybrid(inputs["int4"], fp8, out)
    assert snapshot(out) == kept
    assert not [p for p in tmp_path.iterdir() if ".rigkit-build" in p.name]  # the staging is gone


def test_known_model_counts_that_differ_fail_before_anything_is_replaced(inputs, tmp_path):
    out = tmp_path / "hybrid"
    run_hybrid(inputs["int4"], inputs["fp8"], out)
    kept = snapshot(out)
    fp8 = copy_checkpoint(inputs["fp8"], tmp_path / "fp8")
    name = "model.language_model.layers.5.mlp.shared_expert.gate_proj"
    shard = fp8 / "model-00002-of-00005.safetensors"
    rewrite(shard, drop_tensor(name + ".weight"))
    rewrite(shard, drop_tensor(name + ".weight_scale_inv"))
    drop_from_index(fp8, name + ".weight")
    drop_from_index(fp8, name + ".weight_scale_inv")
    with pytest.raises(CheckpointError, match="replaced: expected 144, got 143"):
        run_hybrid(inputs["int4"], fp8, out)
    assert snapshot(out) == kept
    # An unknown model has no expected counts: the same inputs build.
    assert len(run_hybrid(inputs["int4"], fp8, tmp_path / "other", model=None).reports[0].replaced) == 143


# --------------------------------------------------------------------------- #
# Headers
# --------------------------------------------------------------------------- #


def header_file(entries: dict, data: bytes, length: int | None = None, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(entries).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def parse(blob: bytes) -> safetensors.Header:
    n = safetensors.header_length(blob[:8], len(blob), "test")
    return safetensors.parse_header(blob[8 : 8 + n], len(blob), "test")


REAL_NAMES = [
    "model.language_model.layers.0.mlp.shared_expert.gate_proj.weight",
    "model.language_model.layers.3.self_attn.q_proj.qweight",
    "model.language_model.layers.0.linear_attn.A_log",
    "mtp.layers.0.mlp.experts.255.down_proj.weight",
    "model.visual.blocks.26.attn.qkv.weight_scale_inv",
    "lm_head.weight",
]


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_tensor_names_parse(name):
    blob = header_file({name: {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"abcd")
    assert list(parse(blob).tensors) == [name]


def test_metadata_and_padding_parse():
    body = json.dumps(
        {"__metadata__": {"format": "pt"}, "a.weight": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}}
    ).encode()
    body += b" " * (-len(body) % 8)
    header = parse(header_file({}, b"wxyz", raw=body))
    assert header.metadata == {"format": "pt"} and header.file_range("a.weight") == (8 + len(body), 4)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "a/b.weight", "a..b", "layer.0\n.weight", "m\u043ede1.weight", " a.weight", "a.weight ", ""],
)
def test_hostile_tensor_names_are_refused(name):
    blob = header_file({name: {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"abcd")
    with pytest.raises(CheckpointError, match="expected a tensor name"):
        parse(blob)


@pytest.mark.parametrize(
    ("entries", "data", "error"),
    [
        (
            {
                "a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                "b": {"dtype": "BF16", "shape": [2], "data_offsets": [2, 6]},
            },
            b"x" * 6,
            "overlaps",
        ),
        ({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"x" * 2, "data ends at 4"),
        ({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]}}, b"x" * 8, "leaves a gap at 0"),
        ({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}}, b"x" * 4, "need 6"),
        ({"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 4]}}, b"x" * 4, "dtype"),
        ({"a": {"dtype": "BF16", "shape": [-2], "data_offsets": [0, 4]}}, b"x" * 4, "shape"),
        ({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4], "extra": 1}}, b"x" * 4, "exactly the keys"),
        ({"a": {"dtype": "BF16", "shape": [True, 2], "data_offsets": [0, 4]}}, b"x" * 4, "shape"),
    ],
)
def test_inconsistent_headers_are_refused(entries, data, error):
    with pytest.raises(CheckpointError, match=error):
        parse(header_file(entries, data))


def test_duplicate_keys_and_lying_lengths_are_refused():
    dup = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    with pytest.raises(CheckpointError, match="appears twice"):
        parse(header_file({}, b"x", raw=dup))
    ok = header_file({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"x")
    with pytest.raises(CheckpointError, match="runs past the end"):
        safetensors.header_length(struct.pack("<Q", len(ok)), len(ok), "test")
    with pytest.raises(CheckpointError, match="header length 0"):
        safetensors.header_length(struct.pack("<Q", 0), 100, "test")


def test_index_that_disagrees_with_headers_is_refused(inputs, tmp_path):
    fp8 = copy_checkpoint(inputs["fp8"], tmp_path / "fp8")
    index = json.loads((fp8 / sources.INDEX_NAME).read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00005.safetensors"
    (fp8 / sources.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="weight_map does not match"):
        sources.LocalCheckpoint(fp8)
    index["weight_map"]["lm_head.weight"] = "../model-00005-of-00005.safetensors"
    (fp8 / sources.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="no '/'"):
        sources.LocalCheckpoint(fp8)


def test_inc_bits_marks_replaced_layers_unquantized():
    config = {"quantization_config": {"bits": 4, "block_name_to_quantize": "model.language_model.layers"}}
    plan = recipes.Plan(base=sources.Checkpoint(), tensors={}, config=config)
    layer = "model.language_model.layers.0.mlp.shared_expert.gate_proj"
    assert recipes.inc_bits(config["quantization_config"], layer) == 4
    assert recipes.mark_unquantized(plan, [layer])
    assert recipes.inc_bits(config["quantization_config"], layer) == 16
    assert recipes.mark_unquantized(plan, [layer]) == []  # already bits 16: no second change


# --------------------------------------------------------------------------- #
# Range reads
# --------------------------------------------------------------------------- #


@pytest.fixture
def fp8_hub(inputs, tmp_path):
    """The FP8 checkpoint served by rigkit's mirror under its Hub repository path."""
    root = tmp_path / "hub"
    repo = root / synthetic.FP8_REPO
    repo.mkdir(parents=True)
    for p in inputs["fp8"].iterdir():
        os.link(p, repo / p.name)
    srv = mirror.serve(str(root), lfs_redirect=True)
    try:
        res = HubClient(srv.url).resolve(ModelRef(synthetic.FP8_REPO, dest="/srv/models/fp8"))
        yield srv, res
    finally:
        srv.stop()


def remote(srv, res, locked=None) -> sources.RemoteCheckpoint:
    files = {f.path: f.size for f in res.files if f.path.endswith(".safetensors")}
    reader = sources.RangeReader(lambda path: f"{srv.url}/{synthetic.FP8_REPO}/resolve/{res.sha}/{path}")
    return sources.RemoteCheckpoint(synthetic.FP8_REPO, reader, files, locked)


def test_range_reads_fetch_only_headers_and_the_needed_tensors(inputs, fp8_hub, tmp_path):
    srv, res = fp8_hub
    srv.reset_stats()
    fp8 = remote(srv, res)
    out = tmp_path / "hybrid"
    base = sources.LocalCheckpoint(inputs["int4"])
    ckbuild.build(base, {"fp8": fp8}, [HYBRID], out, identity="r", model=MODEL)
    wanted = recipes.shared_expert_wanted(fp8)
    needed = sum(fp8.ref(n).info(n).nbytes for n in wanted)
    headers = sum(h.data_start for h in fp8.headers.values())
    assert fp8.reader.fetched == srv.total_sent() == needed + headers
    assert fp8.reader.fetched < fp8.whole_size / 5  # tiny shapes, 2 routed experts; the real model: 0.4%
    local = tmp_path / "local"
    run_hybrid(inputs["int4"], inputs["fp8"], local)
    for name in wanted:
        assert tensor_bytes(out, name) == tensor_bytes(local, name)


def test_range_reads_are_checked_against_the_lock(inputs, fp8_hub, tmp_path):
    srv, res = fp8_hub
    first = remote(srv, res)
    for name in recipes.shared_expert_wanted(first):
        b"".join(first.chunks(name))
    locked = dict(first.seen)
    key = next(k for k in locked if k[1].endswith("shared_expert.up_proj.weight"))
    good = locked[key]
    locked[key] = sources.LockedRange(good.path, good.name, good.start, good.size, "0" * 64)
    fp8 = remote(srv, res, locked)
    out = tmp_path / "hybrid"
    with pytest.raises(CheckpointError, match="the remote changed or lies"):
        ckbuild.build(sources.LocalCheckpoint(inputs["int4"]), {"fp8": fp8}, [HYBRID], out, identity="r")
    assert not out.exists()


def test_a_server_that_ignores_ranges_is_not_read(inputs, tmp_path):
    import http.server
    import threading

    blob = (inputs["fp8"] / "model-00001-of-00005.safetensors").read_bytes()

    class WholeFile(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WholeFile)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        reader = sources.RangeReader(lambda path: f"http://127.0.0.1:{srv.server_address[1]}/{path}")
        with pytest.raises(CheckpointError, match="does not serve ranges"):
            sources.RemoteCheckpoint("x", reader, {"model-00001-of-00005.safetensors": len(blob)})
        assert reader.fetched == 0
    finally:
        srv.shutdown()
        srv.server_close()
