"""
A service's ``extra_args`` (host data: untrusted) parsed the way its engine parses argv, with
the option table of the pinned version (:mod:`rigkit.hostdata.option_tables`), and refused
unless every word is an option of that engine (its exact full spelling), followed by the
values it takes, of the kind it takes, and not an option rigkit manages.

How each engine reads argv (mirrored here; the table's ``rules`` say the same):

- llama-server (``common/arg.cpp`` ``common_params_parse_ex``): a word starting with ``--``
  has every ``_`` replaced by ``-``, then must be exactly one of the spellings of its table
  (``arg_to_options``), else "invalid argument"; no ``=`` forms, no prefixes, no positionals;
  a value is the next word, whatever it holds.
- vLLM (``vllm/utils/argparse_utils.py`` ``FlexibleArgumentParser.parse_args``, then
  argparse): in a word starting with ``--``, ``_`` becomes ``-`` up to the first ``.``;
  ``--x=v`` is ``--x v``; a word starting with ``-`` that holds ``.`` is a dotted key of a JSON
  option (``--x.k v``); ``-O3`` is ``--optimization-level 3``; ``--config FILE`` reads more
  flags from a YAML file; argparse accepts unambiguous prefixes (``--api-ke``): refused here,
  only full spellings are accepted; a bare word is the positional model.

- SGLang (``sglang/srt/server_args.py`` ``prepare_server_args``: a plain
  ``argparse.ArgumentParser``): ``--x=v`` is ``--x v``; no ``_`` -> ``-`` rewriting
  (``--api_key`` is an error there and here); argparse accepts unambiguous prefixes (``--tp``
  is ``--tp-size``): refused here, as for vLLM; the word ``--config`` splices a YAML file's
  options in: a managed option. Options whose name says they carry a secret (``*-api-key``,
  ``*-token``, ``*-password``, ``*-secret``) are managed whatever the version adds.

A value may hold JSON, spaces and quotes: it reaches the unit through
:func:`rigkit.render.systemd.escape`; control characters are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rigkit.hostdata.schema import CONTROL, HostDataError

INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# A dotted JSON key of vLLM (`--compilation-config.pass_config.fuse_norm_quant`), `+` appends.
DOTTED_KEY = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\+?", re.ASCII)

# What rigkit sets itself (or never allows), by one spelling of each option; every other
# spelling of the same option (its table's "canonical") is managed with it. The reason says
# what to use instead.
_EXITS = "prints and exits: the service would never serve"
LLAMA_SERVER_MANAGED: dict[str, str] = {
    "--model": "the service's model (rigkit sets -m)",
    "--host": "the service's host (rigkit sets --host)",
    "--port": "the service's port (rigkit sets --port)",
    "--api-key": "api_key_file (keys never go on a command line)",
    "--api-key-file": "api_key_file (rigkit installs the key file)",
    "--alias": "the service's alias",
    "--ctx-size": "the service's ctx",
    "-ngl": "n_gpu_layers",
    "-ctk": "cache_type_k",
    "-ctv": "cache_type_v",
    "--parallel": "parallel",
    "--split-mode": "split_mode",
    "--tensor-split": "tensor_split",
    "--flash-attn": "flash_attn",
    "--jinja": "jinja",
    "--metrics": "metrics",
    "--path": "nothing: rigkit serves no static files",
    "--ssl-key-file": "nothing: TLS belongs in front of the service",
    "--ssl-cert-file": "nothing: TLS belongs in front of the service",
    # Fetch models from the network: models come through the model lock.
    "--hf-repo": "models (ref: a locked Hub model)",
    "--hf-file": "models (ref: a locked Hub model)",
    "--hf-repo-draft": "models (ref: a locked Hub model)",
    "--hf-repo-v": "models (ref: a locked Hub model)",
    "--hf-file-v": "models (ref: a locked Hub model)",
    "--hf-token": "hf_token_file on the deploying machine (tokens never go on a command line)",
    "--model-url": "models (ref: a locked Hub model)",
    "--mmproj-url": "models (ref: a locked Hub model)",
    "--docker-repo": "models (ref: a locked Hub model)",
    "--offline": "nothing: rigkit's services never download",
    # Router mode: the models come from the service's router_models, through rigkit's preset.
    "--models-dir": "router_models (rigkit writes the router's preset)",
    "--models-preset": "router_models (rigkit writes the router's preset)",
    "--models-max": "models_max of a router service",
    "--models-autoload": "nothing: a router service loads the model a request names",
    "--sleep-idle-seconds": "sleep_idle_seconds",
    "--help": _EXITS,
    "--version": _EXITS,
    "--list-devices": _EXITS,
    "--completion-bash": _EXITS,
    "--cache-list": _EXITS,
}
VLLM_MANAGED: dict[str, str] = {
    "--model": "the service's model",
    "--host": "the service's host",
    "--port": "the service's port",
    "--uds": "the service's host and port",
    "--api-key": "api_key_file (keys never go on a command line)",
    "--served-model-name": "the service's alias",
    "--max-model-len": "the service's ctx",
    "--tensor-parallel-size": "tensor_parallel",
    "--pipeline-parallel-size": "pipeline_parallel",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--distributed-executor-backend": "cluster (rigkit sets Ray for a cluster)",
    "--config": "typed keys or extra_args (a YAML file of more flags is not checked)",
    "--hf-token": "hf_token_file on the deploying machine (tokens never go on a command line)",
    "--ssl-keyfile": "nothing: TLS belongs in front of the service",
    "--ssl-certfile": "nothing: TLS belongs in front of the service",
    "--allowed-local-media-path": "nothing: the container reads only its model",
    "--trust-remote-code": "nothing: it runs code from the model repository",
    "--download-dir": "models (ref: a locked Hub model)",
    "--dtype": "dtype",
    "--reasoning-parser": "reasoning_parser",
    "--enable-auto-tool-choice": "enable_auto_tool_choice",
    "--tool-call-parser": "tool_call_parser",
    "--attention-backend": "attention_backend",
    "--speculative-config": "speculative",
    "--skip-mm-profiling": "skip_mm_profiling",
    "--limit-mm-per-prompt": "limit_mm_per_prompt",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--max-num-seqs": "max_num_seqs",
    "--enable-prefix-caching": "enable_prefix_caching",
    "--help": _EXITS,
}


SGLANG_MANAGED: dict[str, str] = {
    "--model-path": "the service's model",
    "--host": "the service's host",
    "--port": "the service's port",
    "--api-key": "api_key_file (keys never go on a command line)",
    "--admin-api-key": "nothing: keys never go on a command line (the admin endpoints stay closed)",
    "--served-model-name": "the service's alias",
    "--context-length": "the service's ctx",
    "--tensor-parallel-size": "tensor_parallel",
    "--mem-fraction-static": "mem_fraction_static",
    "--config": "typed keys or extra_args (a YAML file of more flags is not checked)",
    "--trust-remote-code": "nothing: it runs code from the model repository",
    "--enable-custom-logit-processor": "nothing: it runs code that a request sends",
    "--download-dir": "models (ref: a locked Hub model)",
    "--remote-instance-weight-loader-seed-instance-ip": "models (the service loads its own model directory)",
    "--ssl-keyfile": "nothing: TLS belongs in front of the service",
    "--ssl-certfile": "nothing: TLS belongs in front of the service",
    "--ssl-ca-certs": "nothing: TLS belongs in front of the service",
    "--ssl-keyfile-password": "nothing: TLS belongs in front of the service",
    "--enable-ssl-refresh": "nothing: TLS belongs in front of the service",
    "--grpc-mode": "nothing: the service speaks the OpenAI HTTP API rigkit verifies",
    "--encoder-only": "nothing: the service speaks the OpenAI HTTP API rigkit verifies",
    "--use-ray": "nothing: one host per SGLang service",
    "--dist-init-addr": "nothing: one host per SGLang service",
    "--nnodes": "nothing: one host per SGLang service",
    "--node-rank": "nothing: one host per SGLang service",
    "--reasoning-parser": "reasoning_parser",
    "--tool-call-parser": "tool_call_parser",
    "--speculative-algorithm": "speculative.algorithm",
    "--speculative-num-steps": "speculative.num_steps",
    "--speculative-eagle-topk": "speculative.eagle_topk",
    "--speculative-num-draft-tokens": "speculative.num_draft_tokens",
    "--speculative-draft-model-path": "speculative.draft_model_path",
    "--help": _EXITS,
}
#: An option whose name says it carries a secret: managed in every table of SGLang, so a
#: version that adds one (``--hf-token``) does not open a way around api_key_file.
SECRET_OPTION = re.compile(r"--(?:[a-z0-9-]+-)?(?:api-key|key|token|password|secret)", re.ASCII)


def secret_options(table: Mapping[str, Any]) -> dict[str, str]:
    """canonical option -> why: every option of ``table`` taking a value whose name (any
    spelling) says it carries a secret."""
    out: dict[str, str] = {}
    for spelling, entry in table["options"].items():
        if entry["arity"] != 0 and entry.get("kind") == "text" and SECRET_OPTION.fullmatch(spelling):
            out.setdefault(entry["canonical"], "nothing: secrets never go on a command line (api_key_file for the key)")
    return out


def managed_options(table: Mapping[str, Any], managed: Mapping[str, str], rendered: Sequence[str]) -> dict[str, str]:
    """canonical option -> why it is refused: ``managed``'s options and every flag of the
    command line rigkit ``rendered`` for the service, in the table's canonical names."""
    options = table["options"]
    out: dict[str, str] = {}
    for spelling, reason in managed.items():
        if spelling in options:
            out.setdefault(options[spelling]["canonical"], reason)
    for word in rendered:
        if word in options:
            out.setdefault(options[word]["canonical"], "nothing: rigkit sets it from the service's keys")
    return out


def _engine(table: Mapping[str, Any]) -> str:
    return f"{table['engine']} {table['version']}"


def _looks_like_option(word: str) -> bool:
    """What both parsers read as an option rather than a value: a word starting with '-' that
    is not a number (argparse's negative-number rule; llama-server would take it as a value,
    but a value that reads as a flag is a flag smuggled past an arity)."""
    return word.startswith("-") and not FLOAT.fullmatch(word)


def _check_value(
    host: str, key: str, table: Mapping[str, Any], option: str, entry: Mapping[str, Any], value: str
) -> None:
    if CONTROL.search(value):
        raise HostDataError(host, key, "text without control characters (no newlines or tabs)", value)
    if _looks_like_option(value):
        raise HostDataError(host, key, f"a value for {option}, not an option (it starts with '-')", value)
    if table["engine"] == "vllm" and value.startswith("-") and "." in value:
        # FlexibleArgumentParser reads any word starting with '-' holding '.' as a dotted key.
        raise HostDataError(
            host, key, f"a value for {option} vLLM reads as a value (it reads '-N.M' as a dotted option)", value
        )
    kind = entry.get("kind", "text")
    problem = None
    if kind == "int" and not INT.fullmatch(value):
        problem = "an integer"
    elif kind == "float" and not FLOAT.fullmatch(value):
        problem = "a number"
    elif kind == "json":
        try:
            json.loads(value)
        except ValueError:
            problem = "a JSON value"
    elif kind == "choice" and value not in entry.get("choices", ()):
        problem = f"one of {', '.join(entry['choices'])}"
    if problem:
        raise HostDataError(host, key, f"{problem} for {option}", value)


def check_extra_args(
    host: str, key: str, args: Sequence[str], table: Mapping[str, Any], managed: Mapping[str, str]
) -> None:
    """Parse ``args`` (``key`` is ``services[i]``) as the table's engine would; raise
    HostDataError naming ``services[i].extra_args[j]`` for the first word it refuses."""
    options: Mapping[str, Mapping[str, Any]] = table["options"]
    vllm = table["engine"] == "vllm"
    engine = _engine(table)
    i = 0
    while i < len(args):
        word = args[i]
        at = f"{key}.extra_args[{i}]"
        if CONTROL.search(word):
            raise HostDataError(host, at, "text without control characters (no newlines or tabs)", word)
        if not word.isascii():
            # Look-alike dashes and letters are no spelling of either engine.
            raise HostDataError(host, at, f"an option of {engine} (ASCII only: '-' and letters, not look-alikes)", word)
        if not word.startswith("-") or not _looks_like_option(word):
            raise HostDataError(
                host, at, f"an option of {engine} (a value belongs after the option that takes it)", word
            )
        name, inline = word, None
        if vllm and word.startswith("-O") and word != "-O":
            # FlexibleArgumentParser: -O3, -O=3 -> --optimization-level 3
            name, inline = "--optimization-level", word[3:] if word[2:3] == "=" else word[2:]
        elif vllm and word == "-O" and i + 1 < len(args) and args[i + 1] in ("0", "1", "2", "3"):
            name = "--optimization-level"
        elif table["rules"].get("equals_form") is True and "=" in word:
            name, inline = word.split("=", 1)
        dotted = None
        if vllm and "." in name:
            name, dotted = name.split(".", 1)
        if name.startswith("--") and table["rules"].get("underscore_to_dash") != "none":
            name = name.replace("_", "-")  # llama-server and vLLM (vLLM's only before the first '.': split off)
        entry = options.get(name)
        if entry is None:
            raise HostDataError(host, at, _unknown(table, name, word), word)
        canonical = entry["canonical"]
        if canonical in managed:
            raise HostDataError(host, at, f"no {canonical} (rigkit manages it; use {managed[canonical]})", word)
        if dotted is not None:
            if entry.get("kind") != "json" or not DOTTED_KEY.fullmatch(dotted):
                raise HostDataError(host, at, f"a dotted key only of a JSON option ({name} is not one)", word)
            entry = {"arity": 1, "kind": "text"}  # the value is parsed as JSON, else kept as text
        arity = entry["arity"]
        if arity == 0:
            if inline is not None:
                raise HostDataError(host, at, f"{name} without a value (it takes none)", word)
            i += 1
            continue
        values: list[tuple[int, str]] = []
        if inline is not None:
            values.append((i, inline))
            i += 1
        else:
            i += 1
        wanted = arity if isinstance(arity, int) else 1
        while len(values) < wanted:
            if i >= len(args):
                raise HostDataError(host, at, f"{'a value' if wanted == 1 else f'{wanted} values'} after {name}", word)
            values.append((i, args[i]))
            i += 1
        if arity in ("+", "*") and inline is None:
            # argparse takes every following word that does not read as an option.
            while i < len(args) and not _looks_like_option(args[i]):
                values.append((i, args[i]))
                i += 1
        for j, value in values:
            _check_value(host, f"{key}.extra_args[{j}]", table, name, entry, value)


def _unknown(table: Mapping[str, Any], name: str, word: str) -> str:
    """What to say of a word that is no spelling of the table."""
    engine = _engine(table)
    options = table["options"]
    if not word.isascii():
        return f"an option of {engine} (ASCII only: '-' and letters, not look-alikes)"
    if not table["rules"].get("equals_form") and "=" in word and word.split("=", 1)[0].replace("_", "-") in options:
        return f"an option of {engine}: it takes no '=' form; give the option and its value as two elements"
    if name.startswith("--") and len(name) > 2:
        longer = sorted(o for o in options if o.startswith(name))
        if longer:
            return f"an option of {engine} by its full name ({', '.join(longer[:5])}), not a prefix"
    return f"an option of {engine} (not one of its options)"
