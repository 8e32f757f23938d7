"""
Only llama.cpp and its services: rebuild at the pinned ref, switch, restart, verify (and
roll back by itself when verification fails). Models must already be in place
(deploys/rig.py places them).

    pyinfra inventories/rig.py deploys/llama_cpp.py
"""

from pyinfra import host

from rigkit.engines import ENGINES
from rigkit.hostdata import rig_for
from rigkit.serve import serve

config = rig_for(host)  # every component validated before any host changes
serve(config, ENGINES["llama.cpp"], address=host.data.get("ssh_hostname") or host.name)
