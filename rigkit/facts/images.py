"""What a host's Docker holds of rigkit's images."""

from __future__ import annotations

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
