"""What a host's Docker holds of rigkit's images, and the state of a container engine's services."""

from __future__ import annotations

import json

from pyinfra.api import FactBase, QuoteString, StringCommand


class DockerImages(FactBase[list]):
    """Tags of one of rigkit's image repositories in the host's Docker (empty without Docker).

    .. code:: python

        host.get_fact(DockerImages, repository="rigkit/vllm")
        ["rigkit/vllm:0123456789abcdef"]
    """

    def command(self, repository: str) -> StringCommand:
        return StringCommand(
            "docker",
            "image",
            "ls",
            "--format",
            QuoteString("{{.Repository}}:{{.Tag}}"),
            QuoteString(repository),
            "2>/dev/null",
            "||",
            "true",
        )

    def process(self, output: list[str]) -> list:
        return sorted(line.strip() for line in output if ":" in line.strip() and not line.strip().endswith(":<none>"))

    @staticmethod
    def default() -> list:
        return []


class ContainerStatus(FactBase[dict]):
    """Per service of a container engine: unit state, container state, running and verified
    image, health (its host tool's ``status``).

    .. code:: python

        host.get_fact(ContainerStatus, tool="/opt/rigkit/bin/vllm_host.py", manifest="/etc/rigkit/vllm/services.json")
        {"services": [{"name": "qwen122b", "active": "active", "container": "running", ...}]}
    """

    def command(self, tool: str, manifest: str, engine: str | None = None) -> StringCommand:
        return StringCommand(
            "python3",
            QuoteString(tool),
            "status",
            *((("--engine", QuoteString(engine))) if engine else ()),
            "--manifest",
            QuoteString(manifest),
            "2>/dev/null",
            "||",
            "echo",
            QuoteString('{"services": []}'),
        )

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output) or '{"services": []}')
