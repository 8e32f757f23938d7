"""
Only llama.cpp and its services: rebuild at the pinned ref, switch, restart, verify (and
roll back by itself when verification fails).

    pyinfra inventories/rig.py deploys/llama_cpp.py
"""

from pyinfra import host

from rigkit import rig
from rigkit.hostdata import rig_for

config = rig_for(host)

build, identity = rig.llama_cpp_build(config)
rig.llama_services(config, identity, address=host.data.get("ssh_hostname") or host.name)
