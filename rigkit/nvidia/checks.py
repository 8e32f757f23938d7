"""
The host's NVIDIA facts against its ``nvidia`` host data, before anything changes: the
distribution has a repository, Secure Boot has a key to sign the modules with, each power
limit lies inside its GPU's range, the GPUs suit the kernel module flavour and the toolkit,
and whether the pinned driver branch is installed already. Pure functions of facts and
host data (:mod:`rigkit.facts.nvidia`, :mod:`rigkit.hostdata.nvidia`).
"""

from __future__ import annotations

from rigkit.facts.nvidia import DebPackage, Gpu, HostOs, SecureBootState
from rigkit.hostdata.nvidia import Nvidia
from rigkit.nvidia.repository import driver_packages, repo_dir


def driver_installed(pkgs: dict[str, DebPackage], distro: str, branch: int, open_modules: bool) -> bool:
    pin, meta = driver_packages(distro, branch, open_modules)
    current = pkgs.get(meta)
    return bool(current and current.version.startswith(f"{branch}.") and (pin is None or pin in pkgs))


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
