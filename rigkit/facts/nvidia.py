"""
Facts about a host's NVIDIA stack: its GPUs (``nvidia-smi``), the loaded kernel module next to
the installed userspace (a mismatch is "reboot pending", not a crash), CUDA toolkits, DGX OS,
Secure Boot, the distribution and the driver packages. Every command only reads.

``nvidia-smi`` prints ``[N/A]`` or ``[Not Supported]`` for what a GPU lacks (a GB10 has unified
memory and no settable power limit): such values become ``None``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pyinfra.api import FactBase

#: What ``NvidiaGpus`` asks ``nvidia-smi`` for, in this order.
GPU_FIELDS = (
    "index",
    "uuid",
    "name",
    "compute_cap",
    "memory.total",
    "power.limit",
    "power.min_limit",
    "power.max_limit",
    "driver_version",
)
GPU_QUERY = f"nvidia-smi --query-gpu={','.join(GPU_FIELDS)} --format=csv,noheader,nounits"
MISSING = ("[N/A]", "[Not Supported]", "N/A", "[Unknown Error]", "")
VERSION = re.compile(r"\d{3}\.\d{1,3}(?:\.\d{1,3})?", re.ASCII)
NVML_MISMATCH = "Driver/library version mismatch"
# What a GPU (or MIG device) UUID looks like; it ends up in a unit's ExecStart.
UUID = re.compile(r"(?:GPU|MIG)-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", re.ASCII)


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` reports it; ``None`` where it reports ``[N/A]``."""

    index: int
    uuid: str
    name: str
    compute_cap: str | None  # "8.6"
    memory_mib: int | None
    power_limit_w: float | None
    power_min_w: float | None
    power_max_w: float | None
    driver_version: str | None

    @property
    def cuda_arch(self) -> str | None:
        """The CUDA architecture llama.cpp builds for: "86", "90", "121"."""
        return self.compute_cap.replace(".", "") if self.compute_cap else None

    @property
    def power_settable(self) -> bool:
        return self.power_min_w is not None and self.power_max_w is not None


def _value(raw: str) -> str | None:
    raw = raw.strip()
    return None if raw in MISSING else raw


def _number(raw: str) -> float | None:
    value = _value(raw)
    return float(value) if value is not None else None


def parse_gpu_line(line: str) -> Gpu:
    """One line of :data:`GPU_QUERY`'s output; ``ValueError`` if it is not one."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(GPU_FIELDS):
        raise ValueError(f"expected {len(GPU_FIELDS)} comma-separated fields from nvidia-smi, got {line!r}")
    index, uuid, name, cap, memory, limit, low, high, driver = parts
    if not UUID.fullmatch(uuid):
        raise ValueError(f"not a GPU UUID: {uuid!r}")
    mem = _number(memory)
    return Gpu(
        index=int(index),
        uuid=uuid,
        name=name,
        compute_cap=_value(cap),
        memory_mib=int(mem) if mem is not None else None,
        power_limit_w=_number(limit),
        power_min_w=_number(low),
        power_max_w=_number(high),
        driver_version=_value(driver),
    )


def parse_gpus(output: list[str]) -> list[Gpu] | None:
    """All GPUs, or ``None`` when nvidia-smi printed an error instead (no driver, NVML mismatch)."""
    lines = [line for line in output if line.strip()]
    try:
        return [parse_gpu_line(line) for line in lines]
    except ValueError:
        return None


class NvidiaGpus(FactBase[list[Gpu] | None]):
    """
    The host's NVIDIA GPUs; ``None`` without nvidia-smi or when it cannot talk to the driver.

    .. code:: python

        [Gpu(index=0, uuid="GPU-73736827-...", name="NVIDIA H100 80GB HBM3", compute_cap="9.0",
             memory_mib=81559, power_limit_w=700.0, power_min_w=200.0, power_max_w=700.0,
             driver_version="580.159.04")]
    """

    def requires_command(self) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        # A failing nvidia-smi (no driver loaded, NVML mismatch) is a state, not an error.
        return f"{GPU_QUERY} 2>&1 || true"

    def process(self, output: list[str]) -> list[Gpu] | None:
        return parse_gpus(output)

    @staticmethod
    def default() -> None:
        return None


@dataclass(frozen=True)
class DriverState:
    """The loaded kernel module's version next to the installed userspace (NVML)'s."""

    kernel: str | None  # /sys/module/nvidia/version; None: no module loaded
    userspace: str | None  # from libnvidia-ml.so.<version>; None: no driver installed
    open_kernel: bool | None = None  # the loaded module is the open one
    nvml_error: str | None = None  # what nvidia-smi said instead of answering

    @property
    def reboot_pending(self) -> bool:
        """The installed driver is not the one running: nvidia-smi fails or reports the old one
        until a reboot (or a module reload)."""
        return self.userspace is not None and self.kernel != self.userspace


def parse_driver(output: list[str]) -> DriverState:
    kernel = userspace = error = None
    open_kernel = None
    libs: list[str] = []
    for line in output:
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if kind == "sys" and VERSION.fullmatch(rest):
            kernel = rest
        elif kind == "proc" and rest:
            found = VERSION.search(rest.split("Release Build")[0])
            if found and kernel is None:
                kernel = found.group(0)
            open_kernel = "Open Kernel Module" in rest
        elif kind == "lib":
            version = rest.rsplit("libnvidia-ml.so.", 1)[-1]
            if VERSION.fullmatch(version):
                libs.append(version)
        elif kind == "smi" and rest:
            error = rest
    if libs:
        userspace = max(libs, key=lambda v: tuple(int(p) for p in v.split(".")))
    return DriverState(kernel=kernel, userspace=userspace, open_kernel=open_kernel, nvml_error=error)


class NvidiaDriver(FactBase[DriverState]):
    """
    The loaded NVIDIA kernel module and the installed userspace; ``reboot_pending`` when
    they differ (what "Failed to initialize NVML: Driver/library version mismatch" means).

    .. code:: python

        DriverState(kernel="580.95.05", userspace="580.126.09", open_kernel=True,
                    nvml_error="Failed to initialize NVML: Driver/library version mismatch")
    """

    def command(self) -> str:
        return (
            "printf 'sys %s\\n' \"$(cat /sys/module/nvidia/version 2>/dev/null)\"; "
            "printf 'proc %s\\n' \"$(head -n1 /proc/driver/nvidia/version 2>/dev/null)\"; "
            "for f in /usr/lib/*/libnvidia-ml.so.* /usr/lib64/libnvidia-ml.so.* /usr/lib/libnvidia-ml.so.*; "
            'do [ -e "$f" ] && printf \'lib %s\\n\' "$(readlink -f "$f")"; done; '
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            "printf 'smi %s\\n' \"$(nvidia-smi -L 2>&1 | grep -E 'Failed|failed|mismatch' | head -n1)\"; fi; true"
        )

    def process(self, output: list[str]) -> DriverState:
        return parse_driver(output)

    @staticmethod
    def default() -> DriverState:
        return DriverState(kernel=None, userspace=None)


@dataclass(frozen=True)
class CudaToolkits:
    installed: tuple[str, ...]  # "13.0", from /usr/local/cuda-X.Y/version.json (or its nvcc)
    default: str | None  # what /usr/local/cuda is
    # (directory, release) for each toolkit found: ("/usr/local/cuda-13.0", "13.0")
    dirs: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def found_at(self, release: str) -> tuple[str, ...]:
        """The directories holding toolkit ``release``."""
        return tuple(path for path, version in self.dirs if version == release)


def _major_minor(version: str) -> str | None:
    found = re.match(r"(\d+)\.(\d+)", version)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def parse_toolkits(output: list[str]) -> CudaToolkits:
    installed: set[str] = set()
    dirs: list[tuple[str, str]] = []
    default = None
    for line in output:
        path, _, doc = line.partition(" ")
        if doc.startswith("nvcc "):
            version = _major_minor(doc.removeprefix("nvcc ").removeprefix("release "))
        else:
            try:
                version = _major_minor(json.loads(doc)["cuda"]["version"])
            except (ValueError, KeyError, TypeError):
                continue
        if version is None:
            continue
        if path == "/usr/local/cuda":
            default = version
        installed.add(version)
        dirs.append((path, version))
    return CudaToolkits(installed=tuple(sorted(installed)), default=default, dirs=tuple(dirs))


class CudaToolkit(FactBase[CudaToolkits]):
    """
    CUDA toolkits under ``/usr/local`` (each ``version.json``) and the one ``/usr/local/cuda`` is.

    .. code:: python

        CudaToolkits(installed=("12.8", "13.0"), default="13.0")
    """

    def command(self) -> str:
        # version.json where the toolkit ships one, else what its nvcc says.
        return (
            'for d in /usr/local/cuda /usr/local/cuda-*; do if [ -f "$d/version.json" ]; then '
            "printf '%s ' \"$d\"; tr -d '\\n' < \"$d/version.json\"; echo; "
            'elif [ -x "$d/bin/nvcc" ]; then printf \'%s nvcc %s\\n\' "$d" '
            '"$("$d/bin/nvcc" --version 2>/dev/null | grep -o \'release [0-9.]*\')"; fi; done; true'
        )

    def process(self, output: list[str]) -> CudaToolkits:
        return parse_toolkits(output)

    @staticmethod
    def default() -> CudaToolkits:
        return CudaToolkits(installed=(), default=None)


class DgxOs(FactBase[dict[str, str] | None]):
    """
    ``/etc/dgx-release`` as a dict (DGX OS ships and manages its own driver); ``None`` elsewhere.

    .. code:: python

        {"DGX_NAME": "DGX Spark", "DGX_PRETTY_NAME": "NVIDIA DGX Spark", "DGX_SWBUILD_VERSION": "7.2.3"}
    """

    def command(self) -> str:
        return "cat /etc/dgx-release 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, str] | None:
        release = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep and key.strip():
                release[key.strip()] = value.strip().strip('"')
        return release or None

    @staticmethod
    def default() -> None:
        return None


#: Where DKMS finds the key it signs modules with (dkms 3; Ubuntu's shim-signed).
SIGNING_KEYS = ("/var/lib/dkms/mok.pub", "/var/lib/shim-signed/mok/MOK.der")


@dataclass(frozen=True)
class SecureBootState:
    enabled: bool | None  # None: not an EFI boot, or unknown
    signing_key: str | None  # a DKMS module signing key on the host


def parse_secure_boot(output: list[str]) -> SecureBootState:
    enabled = None
    key = None
    for line in output:
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if kind == "mokutil" and "SecureBoot" in rest:
            enabled = "enabled" in rest.split("SecureBoot", 1)[1]
        elif kind == "efivar" and enabled is None and rest:
            # attributes (4 bytes), then the value byte
            enabled = rest.split()[-1] == "1"
        elif kind == "key" and rest:
            key = rest
    return SecureBootState(enabled=enabled, signing_key=key)


class SecureBoot(FactBase[SecureBootState]):
    """
    Secure Boot (``mokutil --sb-state``, else the EFI variable) and whether DKMS has a
    signing key to sign the NVIDIA modules with.

    .. code:: python

        SecureBootState(enabled=True, signing_key="/var/lib/dkms/mok.pub")
    """

    def command(self) -> str:
        keys = " ".join(SIGNING_KEYS)
        return (
            "if command -v mokutil >/dev/null 2>&1; then printf 'mokutil %s\\n' \"$(mokutil --sb-state 2>&1 | head -n1)\"; fi; "
            'for f in /sys/firmware/efi/efivars/SecureBoot-*; do [ -r "$f" ] && '
            "printf 'efivar %s\\n' \"$(od -An -t u1 \"$f\" | tr -s ' ')\"; done; "
            f'for k in {keys}; do [ -f "$k" ] && printf \'key %s\\n\' "$k"; done; true'
        )

    def process(self, output: list[str]) -> SecureBootState:
        return parse_secure_boot(output)

    @staticmethod
    def default() -> SecureBootState:
        return SecureBootState(enabled=None, signing_key=None)


@dataclass(frozen=True)
class HostOs:
    distro: str  # "ubuntu", "debian"
    release: str  # "24.04", "12"
    arch: str  # uname -m: "x86_64", "aarch64"
    kernel: str  # uname -r


def parse_os(output: list[str]) -> HostOs:
    values = {}
    for line in output:
        key, _, value = line.partition(" ")
        values[key] = value.strip()
    return HostOs(
        distro=values.get("id", ""),
        release=values.get("version", ""),
        arch=values.get("arch", ""),
        kernel=values.get("kernel", ""),
    )


class NvidiaHostOs(FactBase[HostOs]):
    """
    Distribution, release, machine and kernel, for NVIDIA's repository path and the headers.

    .. code:: python

        HostOs(distro="ubuntu", release="24.04", arch="x86_64", kernel="6.8.0-45-generic")
    """

    def command(self) -> str:
        return (
            '( . /etc/os-release 2>/dev/null; printf \'id %s\\nversion %s\\n\' "$ID" "$VERSION_ID" ); '
            'printf \'arch %s\\nkernel %s\\n\' "$(uname -m)" "$(uname -r)"'
        )

    def process(self, output: list[str]) -> HostOs:
        return parse_os(output)


@dataclass(frozen=True)
class DebPackage:
    version: str
    held: bool


class NvidiaPackages(FactBase[dict[str, DebPackage]]):
    """
    Installed NVIDIA driver, CUDA and container packages with their version and hold state.

    .. code:: python

        {"nvidia-open": DebPackage(version="580.95.05-1", held=True), ...}
    """

    def requires_command(self) -> str:
        return "dpkg-query"

    def command(self) -> str:
        return (
            "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version} ${db:Status-Want}\\n' "
            "'nvidia-*' 'libnvidia-*' 'cuda-*' 'libcuda*' 'linux-headers-*' 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> dict[str, DebPackage]:
        packages = {}
        for line in output:
            parts = line.split()
            if len(parts) == 4 and parts[0].startswith(("ii", "hi")):
                _, name, version, want = parts
                packages[name] = DebPackage(version=version, held=want == "hold")
        return packages

    @staticmethod
    def default() -> dict[str, DebPackage]:
        return {}


class DockerRuntimes(FactBase[list[str] | None]):
    """
    Docker's runtimes (``docker info``); ``None`` without docker or when its daemon is down.

    .. code:: python

        ["io.containerd.runc.v2", "nvidia", "runc"]
    """

    def requires_command(self) -> str:
        return "docker"

    def command(self) -> str:
        return "docker info --format '{{json .Runtimes}}' 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str] | None:
        try:
            runtimes = json.loads("\n".join(output))
        except ValueError:
            return None
        return sorted(runtimes) if isinstance(runtimes, dict) else None

    @staticmethod
    def default() -> None:
        return None


class DockerInstalled(FactBase[bool]):
    """Whether the ``docker`` command is there (its daemon may be down)."""

    def command(self) -> str:
        return "command -v docker || true"

    def process(self, output: list[str]) -> bool:
        return any(line.strip() for line in output)

    @staticmethod
    def default() -> bool:
        return False


class DebianSourcesWithoutContrib(FactBase[list[tuple[str, str]]]):
    """
    Debian source files with ``main`` but not ``contrib`` (NVIDIA's Debian packages need it):
    ``("list", path)`` for one-line files, ``("sources", path)`` for deb822 files.

    .. code:: python

        [("list", "/etc/apt/sources.list")]
    """

    def command(self) -> str:
        return (
            'for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] || continue; '
            "grep -qE '^deb(-src)? [^#]*debian[^#]* main( |$)' \"$f\" && "
            "grep -E '^deb(-src)? [^#]*debian' \"$f\" | grep -qvE ' contrib( |$)' && printf 'list %s\\n' \"$f\"; done; "
            'for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] || continue; '
            "grep -qiE '^URIs:.*debian' \"$f\" && grep -E '^Components:' \"$f\" | grep -qvE ' contrib( |$)' "
            "&& printf 'sources %s\\n' \"$f\"; done; true"
        )

    def process(self, output: list[str]) -> list[tuple[str, str]]:
        found = []
        for line in output:
            kind, _, path = line.partition(" ")
            if kind in ("list", "sources") and path:
                found.append((kind, path.strip()))
        return found

    @staticmethod
    def default() -> list[tuple[str, str]]:
        return []


class SystemdBooted(FactBase[bool]):
    """Whether systemd runs the host (``sd_booted()``: ``/run/systemd/system`` exists); not in
    most containers."""

    def command(self) -> str:
        return "test -d /run/systemd/system && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output[:1] == ["yes"]

    @staticmethod
    def default() -> bool:
        return False
