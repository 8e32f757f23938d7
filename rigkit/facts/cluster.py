"""Facts for a Ray cluster's nodes: an image's ID (the nodes compare it) and the base it
was built from, and the cluster's nodes as Ray on the head reports them (``rigkit status``)."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand

#: The label ``vllm_host.py build`` puts on rigkit's images: the base image's ID there.
BASE_ID_LABEL = "org.rigkit.vllm.base-id"


class ImageBase(FactBase[dict | None]):
    """An image's ID and the ID of the base it was built from (None when the image is absent).

    .. code:: python

        {"id": "sha256:5e1b...", "base": "sha256:0a7c..."}
    """

    def command(self, image: str) -> StringCommand:
        return StringCommand(
            "docker",
            "image",
            "inspect",
            "--format",
            QuoteString('{{.Id}} {{with index .Config.Labels "' + BASE_ID_LABEL + '"}}{{.}}{{end}}'),
            QuoteString(image),
            "2>/dev/null",
            "||",
            "true",
        )

    def process(self, output: list[str]) -> dict | None:
        fields = " ".join(output).split()
        if not fields:
            return None
        return {"id": fields[0], "base": fields[1] if len(fields) > 1 else None}


class RayNodes(FactBase[dict]):
    """The cluster's expected nodes as Ray on the head reports them (``ray_ready.py --json``,
    run with the argv of the head's readiness unit).

    .. code:: python

        {"nodes": [{"name": "spark-1", "address": "192.168.100.11", "alive": True,
                    "cpu": 20, "gpu": 1}], "gpus": 1, "reachable": True, "error": ""}
    """

    def command(self, ready_argv: list[str]) -> StringCommand:
        return StringCommand(
            *(QuoteString(a) for a in ready_argv),
            "--json",
            "2>/dev/null",
            "||",
            "echo",
            QuoteString('{"nodes": [], "reachable": false, "error": "ray_ready.py failed"}'),
        )

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output))


class ImageRayVersion(FactBase[dict | None]):
    """The version of the Ray in an image (its package metadata, read in a throw-away
    container with no network), None when the image is absent; ``ray`` is None when the
    image has no readable Ray.

    .. code:: python

        {"ray": "2.54.1"}
    """

    def command(self, image: str) -> StringCommand:
        probe = 'from importlib.metadata import version; print(version("ray"))'
        return StringCommand(
            "if",
            "docker",
            "image",
            "inspect",
            QuoteString(image),
            ">/dev/null",
            "2>&1;",
            "then",
            "echo",
            "present;",
            "docker",
            "run",
            "--rm",
            "--pull",
            "never",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            QuoteString(image),
            "-c",
            QuoteString(probe),
            "2>/dev/null;",
            "fi;",
            "true",
        )

    def process(self, output: list[str]) -> dict | None:
        lines = [line.strip() for line in output if line.strip()]
        if not lines or lines[0] != "present":
            return None
        return {"ray": lines[1] if len(lines) > 1 else None}


class RayAuth(FactBase[dict]):
    """Whether this node's Ray authenticates (``rigkit status``): the running Ray container's
    ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH`` (no other variable of its environment is
    read), the version of its Ray, and whether the token file is on the node (its size only:
    the token is never read).

    .. code:: python

        {"running": True, "mode": "token", "token_path": "/run/rigkit/ray-auth-token",
         "ray": "2.54.1", "token_file": True}
    """

    def command(self, container: str, token_file: str) -> StringCommand:
        probe = "import ray; print('ray=' + ray.__version__)"
        return StringCommand(
            "docker",
            "inspect",
            "--format",
            QuoteString("running={{.State.Running}}{{println}}{{range .Config.Env}}{{println .}}{{end}}"),
            QuoteString(container),
            "2>/dev/null",
            "|",
            "grep",
            "-E",
            QuoteString("^(running=|RAY_AUTH_MODE=|RAY_AUTH_TOKEN_PATH=)"),
            ";",
            "docker",
            "exec",
            QuoteString(container),
            "python3",
            "-c",
            QuoteString(probe),
            "2>/dev/null",
            ";",
            "test",
            "-s",
            QuoteString(token_file),
            "&&",
            "echo",
            "token-file=present",
            "||",
            "true",
        )

    def process(self, output: list[str]) -> dict:
        seen = dict(line.strip().split("=", 1) for line in output if "=" in line)
        return {
            "running": seen.get("running") == "true",
            "mode": seen.get("RAY_AUTH_MODE"),
            "token_path": seen.get("RAY_AUTH_TOKEN_PATH"),
            "ray": seen.get("ray"),
            "token_file": seen.get("token-file") == "present",
        }

    @staticmethod
    def default() -> dict:
        return {"running": False, "mode": None, "token_path": None, "ray": None, "token_file": False}


class RayTokens(FactBase[list]):
    """The names of the Ray token files in a directory (``/etc/rigkit/ray``; none read).

    .. code:: python

        ["qwen122b.token"]
    """

    def command(self, directory: str) -> StringCommand:
        return StringCommand("ls", "-1", QuoteString(directory), "2>/dev/null", "||", "true")

    def process(self, output: list[str]) -> list:
        return sorted(line.strip() for line in output if line.strip().endswith(".token"))

    @staticmethod
    def default() -> list:
        return []
