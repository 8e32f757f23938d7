"""
A llama.cpp inference host from its inventory: models in place, llama.cpp built at the
pinned ref for the host's GPUs, one systemd unit per service, verified.

    pyinfra inventories/rig.py deploys/rig.py
"""

from pyinfra import host

from rigkit import rig
from rigkit.hostdata import rig_for

config = rig_for(host)  # validated before any host changes

models = rig.models(config)
build, archs = rig.llama_cpp_build(config)
rig.llama_services(config, archs, address=host.data.get("ssh_hostname") or host.name, models=models)
