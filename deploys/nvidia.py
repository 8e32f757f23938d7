"""
The NVIDIA driver (pinned branch, held), CUDA toolkit, container toolkit and power limits of
each host that declares ``nvidia`` host data; DGX OS keeps its own driver.

    pyinfra inventories/rig.py deploys/nvidia.py --dry    # the plan, nothing changed
    pyinfra inventories/rig.py deploys/nvidia.py
"""

from pyinfra import host

from rigkit.hostdata.nvidia import gpu_count, nvidia_for
from rigkit.operations import nvidia

nvidia.setup(
    nvidia_for(host), gpu_count=gpu_count(host)
)  # validated, then checked against the host's facts, before any change
