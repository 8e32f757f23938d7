"""
What rigkit writes for the NVIDIA stack, through the shared template environment
(:data:`rigkit.render.systemd.templates`, templates in ``rigkit/templates/``): the oneshot
unit that sets each GPU's power limit by UUID at every boot, the check that the limits took,
and the modprobe file that keeps nouveau off the GPUs. Pure functions of facts and host data.
"""

from __future__ import annotations

import shlex

from rigkit.facts.nvidia import Gpu
from rigkit.render.systemd import templates

POWER_UNIT = "rigkit-nvidia-power.service"


def power_unit(gpus: list[Gpu], limits: tuple[int, ...]) -> str:
    """The oneshot unit that sets each GPU's limit by UUID at every boot."""
    return templates.get_template("nvidia-power-limit.service.j2").render(
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


def nouveau_blacklist() -> str:
    """``/etc/modprobe.d/rigkit-blacklist-nouveau.conf``: the NVIDIA driver owns the GPUs."""
    return templates.get_template("nvidia-blacklist-nouveau.conf").render()
