"""
The NVIDIA driver (pinned branch, held), CUDA toolkit, container toolkit and power limits of
each host that declares ``nvidia`` host data; DGX OS keeps its own driver.

    pyinfra inventories/rig.py deploys/nvidia.py --dry    # the plan, nothing changed
    pyinfra inventories/rig.py deploys/nvidia.py
"""

from pyinfra import host

from rigkit.hostdata import HostDataError, rig_for
from rigkit.nvidia import deploy as nvidia

config = rig_for(host)  # validated, then checked against the host's facts, before any change
if config.nvidia is None:
    raise HostDataError(
        host.name, "nvidia", 'a mapping such as {"driver_branch": "580"} (this deploy installs the NVIDIA driver)'
    )
nvidia.setup(config.nvidia, gpu_count=config.gpus.count)
