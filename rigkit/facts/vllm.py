"""
Facts for vLLM services in containers: where rigkit's vLLM host tool is, and what the DGX
Spark preflight looks at (the services' state: rigkit.facts.images.ContainerStatus).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase, QuoteString, StringCommand

from rigkit.host_paths import TOOLS_DIR

#: rigkit's host-side vLLM tool (``rigkit/scripts/vllm_host.py``), beside check_service.py.
VLLM_TOOL = f"{TOOLS_DIR}/vllm_host.py"


class SparkPreflight(FactBase[dict]):
    """What a DGX Spark deploy needs to know, read in one go (each line ``key=value``; a
    missing tool leaves its key empty): OS release, DGX release, architecture, GPU name,
    compute capability and driver, Docker and its NVIDIA runtime, whether the deploy user may
    use Docker, free disk (GB) under the model and Docker roots."""

    def command(self, model_root: str = "/srv/models") -> StringCommand:
        return StringCommand(
            "sh",
            "-c",
            QuoteString(
                'echo "os=$(. /etc/os-release 2>/dev/null; echo $ID-$VERSION_ID)"; '
                "echo \"dgx=$(grep -h DGX_OTA_VERSION /etc/dgx-release 2>/dev/null | head -1 | cut -d= -f2 | tr -d '\\\"' ||"
                ' true)"; '
                "test -f /etc/dgx-release && echo dgx_release=1; "
                'echo "arch=$(uname -m)"; '
                "if command -v nvidia-smi >/dev/null; then "
                'echo "gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null'
                ' | head -1)"; fi; '
                "if command -v docker >/dev/null; then echo docker=1; "
                'echo "docker_access=$(docker info --format ok 2>/dev/null)"; '
                "echo \"runtimes=$(docker info --format '{{range $k, $v := .Runtimes}}{{$k}},{{end}}' 2>/dev/null)\"; "
                "echo \"docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)\"; fi; "
                "d=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null); "
                'echo "disk_docker=$(df -P -B1G "${d:-/var/lib}" 2>/dev/null | awk \'NR==2{print $4}\')"; '
                f'm={shlex.quote(model_root)}; while [ ! -d "$m" ]; do m=$(dirname "$m"); done; '
                'echo "disk_models=$(df -P -B1G "$m" 2>/dev/null | awk \'NR==2{print $4}\')"'
            ),
        )

    def process(self, output: list[str]) -> dict:
        facts: dict = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                facts[key.strip()] = value.strip()
        return facts
