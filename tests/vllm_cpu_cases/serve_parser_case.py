"""Run inside the CPU venv (PYTHONPATH = a pristine vLLM tree): build vLLM's real ``vllm serve``
parser the way vllm/entrypoints/cli/serve.py does (make_arg_parser on a FlexibleArgumentParser),
parse each argv it is given, and read the registries rigkit validates against. The parser and
the registries are vLLM's own; the CUDA platform is presented (cuda_platform.py: the engine
arguments' defaults ask the platform for its device type, which a machine without a GPU lacks).

    python serve_parser_case.py IN.json OUT.json
    IN:  {"argvs": {name: [arg, ...]}}
    OUT: {"vllm": ..., "parsed": {name: {"ok": bool, "error": str, "namespace": {...}}},
          "registries": {...}, "dtype_choices": [...]}
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import typing
from pathlib import Path

import cuda_platform  # beside this file


def jsonable(value: object) -> object:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "model_dump"):
            return value.model_dump()
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        return repr(value)


def literal_names(tp: object) -> list[str]:
    out: list[str] = []
    for arg in typing.get_args(tp):
        out.extend(literal_names(arg) if typing.get_origin(arg) is typing.Literal else [arg])
    return sorted(set(out))


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text())
    cuda_platform.present()
    import vllm
    from vllm.config.speculative import SpeculativeMethod
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve", description="vLLM's serve parser"))
    parsed: dict[str, dict] = {}
    for name, argv in request["argvs"].items():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = parser.parse_args(argv)
            parsed[name] = {"ok": True, "error": "", "namespace": {k: jsonable(v) for k, v in vars(ns).items()}}
        except SystemExit:
            parsed[name] = {"ok": False, "error": err.getvalue(), "namespace": {}}
    dtype = next(a for a in parser._actions if "--dtype" in a.option_strings)
    result = {
        "vllm": vllm.__version__,
        "parsed": parsed,
        "dtype_choices": sorted(dtype.choices or []),
        "registries": {
            "reasoning_parser": sorted(ReasoningParserManager.list_registered()),
            "tool_call_parser": sorted(ToolParserManager.list_registered()),
            "attention_backend": sorted(member.name for member in AttentionBackendEnum),
            "speculative_method": literal_names(SpeculativeMethod),
        },
    }
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
