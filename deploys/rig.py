"""
An inference host from its inventory, component by component, each only where the host
declares it: the NVIDIA driver and toolkits, models in place, then every engine it serves
(llama.cpp built at the pinned ref for the host's GPUs, vLLM and SGLang images), one hardened
systemd unit per service, verified.

    pyinfra inventories/rig.py deploys/rig.py
"""

from pyinfra import host

from rigkit.hostdata import rig_for
from rigkit.interconnect import bring_up
from rigkit.models.deploy import models
from rigkit.nvidia.deploy import setup as nvidia_setup
from rigkit.serve import serve_all

config = rig_for(host)  # every component validated before any host changes
bring_up(config)  # configured, measured on every node, trusted: before anything else changes

if config.nvidia:  # the driver, CUDA toolkit, container toolkit, power limits
    nvidia_setup(config.nvidia, gpu_count=config.gpus.count)
placed = models(config)  # a Hub model's download runs on in the background from here
# What the engines build (llama.cpp's compile, an image) meanwhile; the downloads waited for;
# then the services, each verified.
serve_all(config, models=placed, address=host.data.get("ssh_hostname") or host.name)
