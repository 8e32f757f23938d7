"""
Explicit rollback, for every engine the host serves: llama.cpp back to the previous build,
its services restarted and verified; a container engine (vLLM, SGLang) back to its last
verified units and keys (so their images), restarted only where they differ, and verified.
The next deploys/rig.py run moves forward to the pinned ref and images again, so pin the old
ones in the inventory to stay there.

    pyinfra inventories/rig.py deploys/rollback.py
"""

from pyinfra import host

from rigkit.hostdata import rig_for
from rigkit.serve import engines_for

config = rig_for(host)

for engine in engines_for(config):
    engine.roll_back(config)
