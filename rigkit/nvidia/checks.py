"""
The host's NVIDIA facts against its ``nvidia`` host data, before anything changes: the
distribution has a repository, Secure Boot has a key to sign the modules with, each power
limit lies inside its GPU's range, the GPUs suit the kernel module flavour and the toolkit,
and whether the pinned driver branch and toolkit are there already. Pure functions of facts
and host data (:mod:`rigkit.facts.nvidia`, :mod:`rigkit.hostdata.nvidia`).

A driver and a toolkit count whatever installed them (NVIDIA's ``.run`` installer, a cloud or
container image, Debian packages): a driver of the pinned branch that is loaded and answering
(:func:`driver_outside_packages`) and a toolkit of the pinned release on disk
(:func:`toolkit_outside_packages`) are kept, never installed a second time beside themselves;
a loaded driver of another branch installed that way stops the deploy (:func:`problems`).
"""

from __future__ import annotations

from rigkit.facts.nvidia import CudaToolkits, DebPackage, DriverState, Gpu, HostOs, SecureBootState
from rigkit.hostdata.nvidia import Nvidia
from rigkit.nvidia.repository import driver_packages, is_driver_package, repo_dir, toolkit_package


def driver_installed(pkgs: dict[str, DebPackage], distro: str, branch: int, open_modules: bool) -> bool:
    pin, meta = driver_packages(distro, branch, open_modules)
    current = pkgs.get(meta)
    return bool(current and current.version.startswith(f"{branch}.") and (pin is None or pin in pkgs))


def branch_of(version: str) -> str:
    """``580.159.04`` -> ``580``."""
    return version.split(".", 1)[0]


def driver_outside_packages(state: DriverState, gpus: list[Gpu] | None, pkgs: dict[str, DebPackage]) -> str | None:
    """The version of the driver that is loaded and answering when no Debian driver package
    of its branch is installed (the ``.run`` installer, a cloud or container image); ``None``
    otherwise. Loaded: the kernel module reports its version (``/sys/module/nvidia/version``,
    else ``/proc/driver/nvidia/version``). Answering: ``nvidia-smi`` lists at least one GPU,
    and every GPU reports that same driver version."""
    version = state.kernel
    if version is None or not gpus or any(gpu.driver_version != version for gpu in gpus):
        return None
    branch = branch_of(version)
    if any(is_driver_package(n) and p.version.startswith(f"{branch}.") for n, p in pkgs.items()):
        return None  # the packages' driver: installed, held and switched the repository's way
    return version


def outside_message(version: str) -> str:
    return f"driver {version} (branch {branch_of(version)}) is loaded and answering, installed outside Debian packages"


def other_branch(nv: Nvidia, outside: str | None) -> str | None:
    """Why a driver found outside Debian packages stops the deploy: its branch is not the
    pinned one (rigkit installs no second driver beside it); ``None``: it does not."""
    if outside is None or nv.driver_branch is None or branch_of(outside) == nv.driver_branch:
        return None
    return (
        f"nvidia.driver_branch: {outside_message(outside)} (the .run installer, or the machine's image), "
        f"and the host data pins branch {nv.driver_branch}: rigkit installs no second driver beside it. "
        f'Pin its branch (driver_branch: "{branch_of(outside)}"), or remove that driver first'
    )


def toolkit_outside_packages(release: str, toolkits: CudaToolkits, pkgs: dict[str, DebPackage]) -> tuple[str, ...]:
    """Where toolkit ``release`` is on disk (``/usr/local/cuda*``: its ``version.json``, else
    its ``nvcc --version``) while its ``cuda-toolkit-X-Y`` package is not installed; empty
    when it is not on disk, or the package is installed (then apt keeps it)."""
    if toolkit_package(release) in pkgs or release not in toolkits.installed:
        return ()
    return toolkits.found_at(release) or ("/usr/local/cuda*",)


def problems(
    nv: Nvidia,
    os: HostOs,
    gpus: list[Gpu] | None,
    secure: SecureBootState,
    dgx: dict[str, str] | None,
    driver_changes: bool,
    docker: bool,
    outside: str | None = None,
) -> list[str]:
    """What stops this deploy on this host, found from facts alone; empty: go ahead.
    ``outside``: the version of a driver loaded and answering that no Debian package
    installed (:func:`driver_outside_packages`)."""
    found = []
    if not dgx:
        mismatch = other_branch(nv, outside)
        if mismatch:
            found.append(mismatch)
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
            elif gpu.power_min_w is None or gpu.power_max_w is None or not gpu.power_min_w <= watts <= gpu.power_max_w:
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
