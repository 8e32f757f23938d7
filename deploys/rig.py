"""
An inference host from its inventory, component by component, each only where the host
declares it: models in place, llama.cpp built at the pinned ref for the host's GPUs, one
systemd unit per service, verified.

    pyinfra inventories/rig.py deploys/rig.py
"""

from pyinfra import host

from rigkit import rig
from rigkit.hostdata import rig_for
from rigkit.nvidia import deploy as nvidia
from rigkit.vllm import vllm_services

config = rig_for(host)  # every component validated before any host changes
address = host.data.get("ssh_hostname") or host.name

if config.nvidia:  # the driver, CUDA toolkit, container toolkit, power limits
    nvidia.setup(config.nvidia, gpu_count=config.gpus.count)
models = rig.models(config)
if config.llama_cpp:
    build, identity = rig.llama_cpp_build(config)
    rig.llama_services(config, identity, address=address, models=models)
if config.engine_services("vllm"):
    vllm_services(config, models=models)
