"""
The NVIDIA stack of a host from its ``nvidia`` host data, checked against the host's facts
(:func:`rigkit.nvidia.checks.problems`) before anything changes. DGX OS manages its own
driver and toolkit: rigkit leaves them alone and says so.

    from rigkit.nvidia import deploy as nvidia
    nvidia.setup(rig.nvidia)       # deploys/nvidia.py, and deploys/rig.py when a host declares it
"""

from __future__ import annotations

import logging
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, python, server, systemd
from pyinfra.operations.util import any_changed

from rigkit.facts.nvidia import (
    DgxOs,
    DockerInstalled,
    DriverState,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaHostOs,
    NvidiaPackages,
    SecureBoot,
    SystemdBooted,
)
from rigkit.host_paths import unit_path
from rigkit.hostdata.nvidia import Nvidia
from rigkit.nvidia.checks import driver_installed, driver_outside_packages, problems
from rigkit.nvidia.repository import CONTAINER_KEYRING, CONTAINER_LIST, driver_packages, repo_dir
from rigkit.operations.nvidia import (
    container_key,
    cuda_repository,
    cuda_toolkit,
    debian_contrib,
    docker_runtime,
    driver,
)
from rigkit.render.nvidia import POWER_UNIT, nouveau_blacklist, power_check_command, power_unit

logger = logging.getLogger("pyinfra")

PERSISTENCED_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system")
NOUVEAU_CONF = "/etc/modprobe.d/rigkit-blacklist-nouveau.conf"


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
    # A driver that no Debian package installed, loaded and answering: kept when it is of the
    # pinned branch (no second driver, no kernel headers), else refused in problems().
    outside = driver_outside_packages(state, gpus, pkgs) if managed else None
    changes = managed and outside is None and not driver_installed(pkgs, os.distro, nv.branch or 0, nv.open_modules)
    found = problems(nv, os, gpus, host.get_fact(SecureBoot), dgx, changes, docker, outside=outside)
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
        if outside is None:  # DKMS builds the packages' modules against them
            apt.packages(
                name=f"Kernel headers for {os.kernel}", packages=[f"linux-headers-{os.kernel}"], no_recommends=True
            )
        blacklist = files.put(
            name="Blacklist nouveau",
            src=_text(nouveau_blacklist()),
            dest=NOUVEAU_CONF,
            mode="644",
        )
        server.shell(
            name="Rebuild the initramfs without nouveau",
            commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"],
            _if=blacklist.did_change,
        )
        if nv.driver_branch is not None and outside is not None:
            driver(
                name=f"NVIDIA driver branch {nv.driver_branch} ({outside}, installed outside Debian packages: kept)",
                branch=nv.driver_branch,
                open_modules=nv.open_modules,
                distro=os.distro,
            )
        elif nv.driver_branch is not None:
            pin, meta = driver_packages(os.distro, nv.branch or 0, nv.open_modules)
            driver_op = driver(
                name=f"NVIDIA driver branch {nv.driver_branch} ({pin + ' + ' if pin else ''}{meta}, held)",
                branch=nv.driver_branch,
                open_modules=nv.open_modules,
                distro=os.distro,
            )
            pending = pending or driver_op.will_change
        if nv.cuda_toolkit:
            cuda_toolkit(name=f"CUDA toolkit {nv.cuda_toolkit}", release=nv.cuda_toolkit)

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
                    dest=unit_path(POWER_UNIT),
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


def _text(content: str) -> StringIO:
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
