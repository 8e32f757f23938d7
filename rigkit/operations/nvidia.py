"""
The NVIDIA driver, CUDA toolkit and container toolkit from NVIDIA's network repository,
pinned to a branch and held against unattended upgrades; GPU power limits at every boot.

    from rigkit.operations import nvidia
    nvidia.setup(rig.nvidia)       # deploys/nvidia.py, and deploys/rig.py when a host declares it

Checked against the host's facts before anything changes (:func:`problems`): the
distribution has a repository, Secure Boot has a key to sign the modules with, each power
limit lies inside its GPU's range, the GPUs suit the kernel module flavour and the toolkit.
DGX OS manages its own driver and toolkit: rigkit leaves them alone and says so.

How a branch is pinned follows the repository: from branch 590 on (and on Debian) the
``nvidia-driver-pinning-<branch>`` package, then the unversioned ``nvidia-open`` (or
``cuda-drivers`` for the proprietary modules); on Ubuntu before 590 the branch's versioned
meta-package (``nvidia-open-580``, ``cuda-drivers-580``). The installed driver packages are
then held (``apt-mark hold``), which unattended-upgrades respects, so the userspace cannot
move away from the loaded kernel module ("Driver/library version mismatch") behind your back.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.facts.files import File, FindInFile
from pyinfra.operations import apt, files, python, server, systemd
from pyinfra.operations.util import any_changed

from rigkit.facts.nvidia import (
    DebianSourcesWithoutContrib,
    DebPackage,
    DgxOs,
    DockerInstalled,
    DockerRuntimes,
    DriverState,
    Gpu,
    HostOs,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaHostOs,
    NvidiaPackages,
    SecureBoot,
    SecureBootState,
    SystemdBooted,
)
from rigkit.hostdata.nvidia import Nvidia

logger = logging.getLogger("pyinfra")

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
REPO_DISTROS = {("ubuntu", "22.04"): "ubuntu2204", ("ubuntu", "24.04"): "ubuntu2404", ("debian", "12"): "debian12"}
REPO_ARCHES = {"x86_64": "x86_64", "aarch64": "sbsa"}
KEYRING_DEB = "cuda-keyring_1.1-1_all.deb"
KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
CONTAINER_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
CONTAINER_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
FIRST_PINNING_BRANCH = 590
POWER_UNIT = "rigkit-nvidia-power.service"
PERSISTENCED_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system")
NOUVEAU_CONF = "/etc/modprobe.d/rigkit-blacklist-nouveau.conf"
# Packages of the driver itself (held together); the toolkit and container packages are not.
DRIVER_PREFIXES = ("nvidia-", "libnvidia-", "cuda-drivers", "libcuda", "libxnvctrl", "xserver-xorg-video-nvidia")
NOT_DRIVER_PREFIXES = ("nvidia-container", "libnvidia-container", "nvidia-cuda-", "nvidia-fabricmanager")


# --- what the repository looks like ---------------------------------------------------------


def repo_dir(os: HostOs) -> str:
    """``ubuntu2404/x86_64``, ``debian12/x86_64``, ``ubuntu2404/sbsa`` (arm64 servers)."""
    distro = REPO_DISTROS.get((os.distro, os.release))
    arch = REPO_ARCHES.get(os.arch)
    if distro is None or arch is None:
        raise ValueError(
            f"NVIDIA's network repository has no {os.distro} {os.release} {os.arch} "
            f"(rigkit knows {', '.join(sorted(set(REPO_DISTROS.values())))} on "
            f"{', '.join(REPO_ARCHES)})"
        )
    return f"{distro}/{arch}"


def repo_line(repo_url: str, os: HostOs) -> str:
    """The source line ``cuda-keyring`` installs."""
    return f"deb [signed-by={KEYRING}] {repo_url.rstrip('/')}/{repo_dir(os)}/ /"


def repo_list(os: HostOs) -> str:
    """Where ``cuda-keyring`` puts that line: ``cuda-ubuntu2404-x86_64.list``."""
    return f"/etc/apt/sources.list.d/cuda-{repo_dir(os).replace('/', '-')}.list"


def driver_packages(distro: str, branch: int, open_modules: bool) -> tuple[str | None, str]:
    """(pinning package or None, driver meta-package) for a branch, the repository's way."""
    if distro == "ubuntu" and branch < FIRST_PINNING_BRANCH:
        return None, f"nvidia-open-{branch}" if open_modules else f"cuda-drivers-{branch}"
    return f"nvidia-driver-pinning-{branch}", "nvidia-open" if open_modules else "cuda-drivers"


def toolkit_package(release: str) -> str:
    """``13.0`` -> ``cuda-toolkit-13-0``."""
    return "cuda-toolkit-" + release.replace(".", "-")


def is_driver_package(name: str) -> bool:
    return name.startswith(DRIVER_PREFIXES) and not name.startswith(NOT_DRIVER_PREFIXES)


def driver_installed(pkgs: dict[str, DebPackage], distro: str, branch: int, open_modules: bool) -> bool:
    pin, meta = driver_packages(distro, branch, open_modules)
    current = pkgs.get(meta)
    return bool(current and current.version.startswith(f"{branch}.") and (pin is None or pin in pkgs))


# --- checks before any change ---------------------------------------------------------------


def problems(
    nv: Nvidia,
    os: HostOs,
    gpus: list[Gpu] | None,
    secure: SecureBootState,
    dgx: dict[str, str] | None,
    driver_changes: bool,
    docker: bool,
) -> list[str]:
    """What stops this deploy on this host, found from facts alone; empty: go ahead."""
    found = []
    if not dgx:
        try:
            repo_dir(os)
        except ValueError as exc:
            found.append(f"nvidia: {exc}")
        if driver_changes and secure.enabled and not secure.signing_key:
            found.append(
                "nvidia: Secure Boot is on and there is no module signing key "
                f"({' or '.join(('/var/lib/dkms/mok.pub', '/var/lib/shim-signed/mok/MOK.der'))}): "
                "the NVIDIA modules would not load. Create and enroll a key (dkms generate_mok; "
                "mokutil --import /var/lib/dkms/mok.pub; reboot to enroll), or turn Secure Boot off"
            )
    for gpu in gpus or ():
        cap = float(gpu.compute_cap) if gpu.compute_cap else None
        if cap is None or dgx or nv.driver_branch is None:
            continue
        if nv.open_modules and cap < 7.5:
            found.append(
                f"nvidia.open_modules: GPU {gpu.index} ({gpu.name}, compute {gpu.compute_cap}) needs "
                "the proprietary modules (open_modules: false): the open ones need Turing or newer"
            )
        if not nv.open_modules and cap >= 10.0:
            found.append(
                f"nvidia.open_modules: GPU {gpu.index} ({gpu.name}, compute {gpu.compute_cap}) runs "
                "only with the open kernel modules (open_modules: true)"
            )
    if nv.cuda_toolkit and nv.cuda_toolkit.startswith("13.") and gpus:
        old = [g for g in gpus if g.compute_cap and float(g.compute_cap) < 7.5]
        if old:
            found.append(
                f"nvidia.cuda_toolkit: CUDA 13 builds for compute 7.5 and newer; GPU {old[0].index} "
                f"({old[0].name}) is {old[0].compute_cap}"
            )
    if nv.power_limit_w is not None and gpus is not None:
        limits = nv.power_limits(len(gpus))
        if len(limits) != len(gpus):
            found.append(
                f"nvidia.power_limit_w: expected {len(gpus)} values, one per GPU nvidia-smi reports, got {list(limits)}"
            )
        for gpu, watts in zip(gpus, limits):
            if not gpu.power_settable:
                found.append(
                    f"nvidia.power_limit_w: GPU {gpu.index} ({gpu.name}) reports no settable power "
                    "limit ([N/A]); leave power_limit_w out for this host"
                )
            elif not gpu.power_min_w <= watts <= gpu.power_max_w:  # type: ignore[operator]
                found.append(
                    f"nvidia.power_limit_w: {watts} W is outside GPU {gpu.index}'s range "
                    f"({gpu.name}: {gpu.power_min_w:g}-{gpu.power_max_w:g} W)"
                )
    if nv.container_toolkit and not docker:
        found.append(
            "nvidia.container_toolkit: Docker is not installed on the host (no `docker` command); "
            "install Docker first, then the container toolkit configures its runtime"
        )
    return found


# --- operations -----------------------------------------------------------------------------


def curl_protocols(url: str) -> tuple[str, ...]:
    """curl's options that keep it on the URL's scheme: an https URL is never redirected to
    plain http (host data's http opt-in allows http, and then the download is pinned)."""
    allowed = "=https" if url.lower().startswith("https://") else "=http,https"
    return ("--proto", allowed, "--proto-redir", allowed)


def sha256_check_command(path: str, sha256: str, what: str) -> str:
    """Fails, removing ``path``, unless the file's sha256 is the one host data pins."""
    return (
        f"echo {shlex.quote(f'{sha256}  {path}')} | sha256sum -c --status - "
        f"|| {{ rm -f {shlex.quote(path)}; echo {shlex.quote(f'{what}: sha256 is not {sha256} (host data pins it); not installed')} >&2; exit 1; }}"
    )


@operation()
def cuda_repository(repo_url: str, os: HostOs, sha256: str | None = None):
    """
    NVIDIA's network repository through its ``cuda-keyring`` package (the signing key and the
    source line for this distribution and architecture).

    + sha256: the package's sha256, checked before ``dpkg -i`` (host data ``keyring_sha256``;
      required for a plain-http mirror)

    .. code:: python

        nvidia.cuda_repository(repo_url=NVIDIA_REPO, os=host.get_fact(NvidiaHostOs))
    """
    url = f"{repo_url.rstrip('/')}/{repo_dir(os)}/"
    listed = host.get_fact(FindInFile, path=repo_list(os), pattern=url, interpolate_variables=False)
    if listed and "cuda-keyring" in host.get_fact(NvidiaPackages):
        host.noop(f"cuda-keyring installed, {repo_list(os)} names {url}")
        return
    tmp = f"/tmp/rigkit-{KEYRING_DEB}"
    yield StringCommand(
        "curl", "-fsSL", *curl_protocols(url), "--retry", "3", "-o", QuoteString(tmp), QuoteString(url + KEYRING_DEB)
    )
    if sha256 is not None:
        yield sha256_check_command(tmp, sha256, url + KEYRING_DEB)
    yield StringCommand("dpkg", "-i", QuoteString(tmp))
    yield StringCommand("rm", "-f", QuoteString(tmp))


@operation()
def debian_contrib():
    """
    ``contrib`` enabled beside ``main`` in Debian's sources (NVIDIA's Debian packages need it).

    .. code:: python

        nvidia.debian_contrib()
    """
    missing = host.get_fact(DebianSourcesWithoutContrib)
    if not missing:
        host.noop("contrib is enabled in Debian's sources")
        return
    for kind, path in missing:
        if kind == "list":
            script = r"/^deb(-src)? [^#]*debian/{/ contrib( |$)/!s/ main( |$)/ main contrib\1/}"
        else:
            script = r"/^Components:/{/ contrib( |$)/!s/ main( |$)/ main contrib\1/}"
        yield StringCommand("sed", "-i", "-E", QuoteString(script), QuoteString(path))


@operation()
def driver(branch: str, open_modules: bool, distro: str):
    """
    The driver branch, pinned the repository's way (see the module), its packages held.
    A branch change unholds, installs the new branch (up or down) and holds again.

    .. code:: python

        nvidia.driver(branch="580", open_modules=True, distro="ubuntu")
    """
    number = int(branch)
    pin, meta = driver_packages(distro, number, open_modules)
    pkgs = host.get_fact(NvidiaPackages)
    if driver_installed(pkgs, distro, number, open_modules):
        unheld = sorted(
            n for n, p in pkgs.items() if is_driver_package(n) and p.version.startswith(f"{branch}.") and not p.held
        )
        if unheld:
            yield StringCommand("apt-mark", "hold", *(QuoteString(n) for n in unheld))
        else:
            host.noop(f"driver branch {branch} installed ({meta} {pkgs[meta].version}), packages held")
        return
    held = sorted(n for n, p in pkgs.items() if p.held and is_driver_package(n))
    if held:
        yield StringCommand("apt-mark", "unhold", *(QuoteString(n) for n in held))
    # A pinning package replaces another branch's (they conflict), so this also switches.
    for package in ([pin] if pin else []) + [meta]:
        yield noninteractive_apt(f"install --allow-downgrades --no-install-recommends {shlex.quote(package)}")
    yield hold_driver_command(branch)


def hold_driver_command(branch: str) -> str:
    """Hold every installed driver package of ``branch`` (read when it runs, after the install)."""
    prefixes = "|".join(p.replace("-", "\\-") for p in DRIVER_PREFIXES)
    excluded = "|".join(p.replace("-", "\\-") for p in NOT_DRIVER_PREFIXES)
    return (
        f"dpkg-query -W -f='${{Package}} ${{Version}}\\n' | awk '$2 ~ /^{branch}\\./ {{print $1}}' "
        f"| grep -E '^({prefixes})' | grep -vE '^({excluded})' | xargs -r apt-mark hold"
    )


# --- the deploy -----------------------------------------------------------------------------


def power_unit(gpus: list[Gpu], limits: tuple[int, ...]) -> str:
    """The oneshot unit that sets each GPU's limit by UUID at every boot."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("nvidia-power-limit.service.j2").render(
        unit=POWER_UNIT, gpus=list(zip(gpus, limits)), device_count=len(gpus)
    )


def power_check_command(gpus: list[Gpu], limits: tuple[int, ...]) -> str:
    """Fails unless nvidia-smi reports each GPU at its limit (a unit that did nothing is an error)."""
    checks = []
    for gpu, watts in zip(gpus, limits):
        uuid = shlex.quote(gpu.uuid)
        checks.append(
            f"nvidia-smi -i {uuid} --query-gpu=power.limit --format=csv,noheader,nounits "
            f"| awk -v w={watts} '{{ if ($1 + 0 != w) exit 1 }}' "
            f"|| {{ echo 'GPU {gpu.index} ({gpu.uuid}): power limit is not {watts} W after {POWER_UNIT}' >&2; exit 1; }}"
        )
    return "; ".join(checks)


def _report(message: str) -> None:
    logger.warning(message)


@deploy("NVIDIA driver, CUDA toolkit, container toolkit")
def setup(nv: Nvidia, gpu_count: int = 0):
    """Everything ``nvidia`` host data asks for, checked against the host's facts first.
    ``gpu_count``: how many GPUs nvidia-smi must see after a reboot (host data ``gpus.count``;
    default: as many as it sees now)."""
    os = host.get_fact(NvidiaHostOs)
    dgx = host.get_fact(DgxOs)
    gpus = host.get_fact(NvidiaGpus)
    state: DriverState = host.get_fact(NvidiaDriver)
    pkgs = host.get_fact(NvidiaPackages)
    docker = host.get_fact(DockerInstalled)
    managed = nv.driver_branch is not None and not dgx
    changes = managed and not driver_installed(pkgs, os.distro, nv.branch or 0, nv.open_modules)
    found = problems(nv, os, gpus, host.get_fact(SecureBoot), dgx, changes, docker)
    if found:
        raise PyinfraError(f"host {host.name}: " + "\n  ".join(found) + "\n(nothing was changed)")

    pending = state.reboot_pending
    if state.reboot_pending:
        _report(
            f"host {host.name}: NVIDIA reboot pending: the loaded kernel module is "
            f"{state.kernel or 'not loaded'}, the installed userspace {state.userspace}"
            + (f" ({state.nvml_error})" if state.nvml_error else "")
        )

    driver_op = None
    if dgx:
        _report(
            f"host {host.name}: DGX OS ({dgx.get('DGX_PRETTY_NAME') or dgx.get('DGX_NAME', 'dgx-release')}"
            f" {dgx.get('DGX_SWBUILD_VERSION', '')}): its driver and CUDA toolkit are DGX OS's; "
            "rigkit leaves them alone (power limits and container toolkit still applied)"
        )
    else:
        apt.packages(
            name="Install curl, gnupg, ca-certificates",
            packages=["curl", "gnupg", "ca-certificates"],
            update=True,
            cache_time=86400,
            no_recommends=True,
        )
        contrib = debian_contrib(name="Enable contrib in Debian's sources") if os.distro == "debian" else None
        repo = cuda_repository(
            name=f"NVIDIA CUDA repository ({repo_dir(os)})", repo_url=nv.repo_url, os=os, sha256=nv.keyring_sha256
        )
        apt.update(name="Update apt after repository changes", _if=any_changed(repo, *([contrib] if contrib else [])))
        apt.packages(
            name=f"Kernel headers for {os.kernel}", packages=[f"linux-headers-{os.kernel}"], no_recommends=True
        )
        blacklist = files.put(
            name="Blacklist nouveau",
            src=str(TEMPLATES / "nvidia-blacklist-nouveau.conf"),
            dest=NOUVEAU_CONF,
            mode="644",
        )
        server.shell(
            name="Rebuild the initramfs without nouveau",
            commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"],
            _if=blacklist.did_change,
        )
        if nv.driver_branch is not None:
            pin, meta = driver_packages(os.distro, nv.branch or 0, nv.open_modules)
            driver_op = driver(
                name=f"NVIDIA driver branch {nv.driver_branch} ({pin + ' + ' if pin else ''}{meta}, held)",
                branch=nv.driver_branch,
                open_modules=nv.open_modules,
                distro=os.distro,
            )
            pending = pending or driver_op.will_change
        if nv.cuda_toolkit:
            apt.packages(
                name=f"CUDA toolkit {nv.cuda_toolkit}", packages=[toolkit_package(nv.cuda_toolkit)], no_recommends=True
            )

    if not host.get_fact(SystemdBooted):
        _report(
            f"host {host.name}: systemd is not running the host (a container?): nvidia-persistenced "
            "and the power limit unit are not managed here"
        )
    else:
        if driver_op is not None or any(
            host.get_fact(File, path=f"{d}/nvidia-persistenced.service") for d in PERSISTENCED_DIRS
        ):
            # Enabled now; started only on the driver that is loaded (after a pending reboot, it
            # starts at boot).
            systemd.service(
                name="Enable nvidia-persistenced",
                service="nvidia-persistenced.service",
                enabled=True,
                running=None if pending else True,
            )

        if nv.power_limit_w is not None:
            if not gpus or pending:
                _report(
                    f"host {host.name}: NVIDIA power limits not applied yet: "
                    + ("a reboot is pending" if pending else "nvidia-smi does not answer")
                    + "; run this deploy again once the driver is loaded"
                )
            else:
                limits = nv.power_limits(len(gpus))
                unit = files.put(
                    name=f"Power limit unit ({', '.join(f'{w} W' for w in limits)} by GPU UUID)",
                    src=_text(power_unit(gpus, limits)),
                    dest=f"/etc/systemd/system/{POWER_UNIT}",
                    mode="644",
                )
                systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
                start = systemd.service(
                    name=f"Enable and start {POWER_UNIT}", service=POWER_UNIT, enabled=True, running=True
                )
                restart = systemd.service(
                    name=f"Re-apply power limits ({POWER_UNIT})",
                    service=POWER_UNIT,
                    restarted=True,
                    _if=[unit.did_change, lambda: not start.did_change()],
                )
                server.shell(
                    name="Check the power limits took",
                    commands=[power_check_command(gpus, limits)],
                    _if=any_changed(start, restart),
                )

    if nv.container_toolkit:
        container_toolkit(nv, installed=bool(dgx) and "nvidia-container-toolkit" in pkgs)

    if driver_op is not None and driver_op.will_change:
        if nv.reboot:
            server.reboot(name="Reboot onto the new NVIDIA driver", reboot_timeout=900, _if=driver_op.did_change)
            expected = len(gpus) if gpus else (gpu_count or None)
            check = "nvidia-smi -L"
            if expected:
                check += (
                    f" | grep -c '^GPU ' | grep -qx {expected} || {{ echo 'expected {expected} GPUs' >&2; exit 1; }}"
                )
            server.shell(name="nvidia-smi sees the GPUs after the reboot", commands=[check], _if=driver_op.did_change)
        else:
            python.call(
                name="Report: reboot pending",
                function=_report,
                message=f"host {host.name}: NVIDIA driver changed: REBOOT PENDING (reboot: false); "
                "nvidia-smi may fail with 'Driver/library version mismatch' until then",
                _if=driver_op.did_change,
            )


def _text(content: str):
    from io import StringIO

    return StringIO(content)


def container_toolkit(nv: Nvidia, installed: bool = False) -> None:
    """NVIDIA's container toolkit from its repository, Docker's ``nvidia`` runtime, checked.
    ``installed``: the toolkit is there already (DGX OS ships it with its own source line,
    which a second one for the same repository would conflict with): only Docker is configured."""
    if installed:
        docker_runtime(name="Docker's nvidia runtime")
        return
    key = container_key(
        name="NVIDIA container toolkit signing key", url=nv.container_key_url, sha256=nv.container_key_sha256
    )
    source = files.put(
        name="NVIDIA container toolkit repository",
        src=_text(f"deb [signed-by={CONTAINER_KEYRING}] {nv.container_repo_url.rstrip('/')}/$(ARCH) /\n"),
        dest=CONTAINER_LIST,
        mode="644",
    )
    apt.update(name="Update apt after the container repository", _if=any_changed(key, source))
    apt.packages(name="NVIDIA container toolkit", packages=["nvidia-container-toolkit"], no_recommends=True)
    docker_runtime(name="Docker's nvidia runtime")


@operation()
def container_key(url: str, sha256: str | None = None):
    """
    The container toolkit repository's signing key, dearmored into its keyring (once).

    + sha256: the key's sha256 as served, checked before it is installed (host data
      ``container_key_sha256``; required for a plain-http mirror)

    .. code:: python

        nvidia.container_key(url="https://nvidia.github.io/libnvidia-container/gpgkey")
    """
    if host.get_fact(File, path=CONTAINER_KEYRING):
        host.noop(f"{CONTAINER_KEYRING} is there")
        return
    tmp = "/tmp/rigkit-nvidia-container-gpgkey"
    yield StringCommand("curl", "-fsSL", *curl_protocols(url), "--retry", "3", "-o", QuoteString(tmp), QuoteString(url))
    if sha256 is not None:
        yield sha256_check_command(tmp, sha256, url)
    yield (
        f"gpg --batch --yes --dearmor -o {CONTAINER_KEYRING}.new {tmp} "
        f"&& mv {CONTAINER_KEYRING}.new {CONTAINER_KEYRING} && rm -f {tmp}"
    )


@operation()
def docker_runtime():
    """
    Docker configured for the NVIDIA runtime (``nvidia-ctk runtime configure --runtime=docker``),
    restarted, and ``docker info`` listing ``nvidia`` among its runtimes.

    .. code:: python

        nvidia.docker_runtime()
    """
    runtimes = host.get_fact(DockerRuntimes)
    if runtimes is not None and "nvidia" in runtimes:
        host.noop("docker info lists the nvidia runtime")
        return
    yield "nvidia-ctk runtime configure --runtime=docker"
    yield "systemctl restart docker"
    yield (
        "docker info --format '{{json .Runtimes}}' | grep -q '\"nvidia\"' "
        "|| { echo 'docker info does not list the nvidia runtime' >&2; exit 1; }"
    )
