"""A STAND-IN ``sglang`` package for the SGLang e2e image (no GPU or torch here): the two
modules rigkit's entrypoint (files/sglang/entrypoint.py) relies on, ``sglang.srt.server_args``
(``ServerArgs``, ``prepare_server_args``) and ``sglang.launch_server``, which parses SGLang's
flags it is given and serves the OpenAI API with the vLLM stand-in's server (tests/standin_vllm.py,
the image's ``vllm``) in its own process: the key given with ``--api-key`` stays in this
process, on no command line."""

from __future__ import annotations

from pathlib import Path

SERVER_ARGS = """
import argparse
import dataclasses


@dataclasses.dataclass
class ServerArgs:
    model_path: str = ""
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    context_length: int | None = None
    tp_size: int = 1


def prepare_server_args(argv):
    parser = argparse.ArgumentParser(prog="sglang.launch_server (stand-in)")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--api-key")
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--tp-size", type=int, default=1)
    known, _ = parser.parse_known_args(argv)
    return ServerArgs(**{k: v for k, v in vars(known).items()})
"""

LAUNCH_SERVER = """
import os
import runpy
import sys

from sglang.srt.server_args import prepare_server_args

args = prepare_server_args(sys.argv[1:])
print(f"stand-in sglang.launch_server: {args!r}", flush=True)
if args.api_key:
    os.environ["VLLM_API_KEY"] = args.api_key
sys.argv = ["vllm", "serve", args.model_path, "--served-model-name", args.served_model_name or args.model_path,
            "--host", args.host, "--port", str(args.port)]
runpy.run_path("/usr/local/bin/vllm", run_name="__main__")
"""


def write_package(root: Path) -> Path:
    """The stand-in package under ``root/sglang``; returns ``root``."""
    (root / "sglang" / "srt").mkdir(parents=True, exist_ok=True)
    (root / "sglang" / "__init__.py").write_text("")
    (root / "sglang" / "srt" / "__init__.py").write_text("")
    (root / "sglang" / "srt" / "server_args.py").write_text(SERVER_ARGS)
    (root / "sglang" / "launch_server.py").write_text(LAUNCH_SERVER)
    return root


def build_image(dockerd, tag: str, base: str, work: Path) -> str:
    """``tag``: ``base`` (a vLLM stand-in base image) with the stand-in package installed."""
    if dockerd.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    context = write_package(work / f"sglang-context-{tag.replace('/', '_').replace(':', '_')}")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY sglang /usr/local/lib/python3.11/dist-packages/sglang\n")
    dockerd.docker("build", "--network", "host", "-t", tag, str(context))
    return tag
