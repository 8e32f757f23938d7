"""
The names and paths rigkit puts on a host, in one place: units, users, key and state
directories, manifests, tools, last-good directories. Nothing else spells them (the host
scripts under ``rigkit/scripts`` are given them through their manifests and arguments, or
name the few they own in their docstrings).

A service ``tiny`` of an engine whose prefix is ``llama`` is::

    rigkit-llama-tiny.service       its unit, run as user llama-tiny
    /var/lib/rigkit-llama-tiny      its state directory (the user's home)
    /etc/rigkit/llama/tiny.key      its API key (0400, the service's user)
    /etc/rigkit/llama/services.json what the engine's verifier reads
    /etc/rigkit/llama/tiny.<sha>.ini a router service's model preset
    rigkit-watchdog-tiny.{service,timer}
"""

from __future__ import annotations

from dataclasses import dataclass

UNIT_DIR = "/etc/systemd/system"
CONFIG_DIR = "/etc/rigkit"
TOOLS_DIR = "/opt/rigkit/bin"
STATE_DIR = "/var/lib/rigkit"
#: One directory per engine below (rigkit/scripts/last_good.py), side by side.
LAST_GOOD_DIR = f"{STATE_DIR}/last-good"
WATCHDOG_STATE_DIR = f"{STATE_DIR}/watchdog"
#: Each engine's memory plan and what its GPUs held after the load (rigkit.fit.measured).
MEMORY_DIR = f"{STATE_DIR}/memory"
#: The model fetcher (rigkit/scripts/fetch_shards.py) and its manifests, with their background
#: downloads' logs beside them.
FETCHER = f"{STATE_DIR}/fetch_shards.py"
MANIFEST_DIR = f"{STATE_DIR}/manifests"
#: opencode's provider entries for the host's llama.cpp services.
OPENCODE_CONFIG = f"{CONFIG_DIR}/opencode.json"

CHECK_TOOL = f"{TOOLS_DIR}/check_service.py"
LAST_GOOD_TOOL = f"{TOOLS_DIR}/last_good.py"
#: the fleet build cache's client, beside llama.cpp's host tool that imports it.
BUILD_CACHE_TOOL = f"{TOOLS_DIR}/build_cache.py"
#: the build cache's publish token on a host (0400 root), read by that client.
BUILD_CACHE_TOKEN = f"{CONFIG_DIR}/llama/build-cache.token"


def unit_path(unit: str) -> str:
    """Where a unit file lives."""
    return f"{UNIT_DIR}/{unit}"


def key_dir(prefix: str) -> str:
    """An engine's key directory (``/etc/rigkit/<prefix>``), which also holds its manifest."""
    return f"{CONFIG_DIR}/{prefix}"


def manifest_path(prefix: str) -> str:
    """What an engine's verifier, watchdog and status read: its services on this host."""
    return f"{key_dir(prefix)}/services.json"


def image_context_dir(prefix: str) -> str:
    """Where a container engine's image build contexts are uploaded, one directory per tag."""
    return f"/opt/rigkit/{prefix}/context"


def last_good_dir(engine: str) -> str:
    return f"{LAST_GOOD_DIR}/{engine}"


@dataclass(frozen=True)
class ServiceNames:
    """What a service is called on the host."""

    prefix: str  # the engine's: llama, vllm, sglang
    name: str

    @property
    def unit(self) -> str:
        return f"rigkit-{self.prefix}-{self.name}.service"

    @property
    def user(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def home(self) -> str:
        """The service's state directory (systemd's ``StateDirectory=``), its user's home."""
        return f"/var/lib/rigkit-{self.prefix}-{self.name}"

    @property
    def key_file(self) -> str:
        return f"{key_dir(self.prefix)}/{self.name}.key"

    def preset_file(self, digest: str) -> str:
        """A router service's model preset, named by its content's ``digest``: the unit names
        the one it runs with, so a changed preset is a changed unit (a restart), and the
        last verified unit's preset is still there when a rollback puts that unit back."""
        return f"{key_dir(self.prefix)}/{self.name}.{digest}.ini"

    @property
    def container(self) -> str:
        """The container of a container engine's service."""
        return f"rigkit-{self.prefix}-{self.name}"

    @property
    def watchdog_unit(self) -> str:
        return f"rigkit-watchdog-{self.name}.service"

    @property
    def watchdog_timer(self) -> str:
        return f"rigkit-watchdog-{self.name}.timer"

    @classmethod
    def of_unit(cls, unit: str, prefixes: tuple[str, ...]) -> ServiceNames | None:
        """The names of a service unit found on the host (``rigkit-<prefix>-<name>.service``
        with one of ``prefixes``), or None."""
        for prefix in prefixes:
            lead = f"rigkit-{prefix}-"
            if unit.startswith(lead) and unit.endswith(".service"):
                return cls(prefix, unit[len(lead) : -len(".service")])
        return None
