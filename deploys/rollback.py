"""
Explicit rollback: switch llama.cpp back to the previous build, restart the services,
verify them. The next deploys/rig.py run moves forward to the pinned ref again, so pin the
old ref in the inventory to stay there.

    pyinfra inventories/rig.py deploys/rollback.py
"""

from pyinfra import host
from pyinfra.operations import systemd

from rigkit import rig
from rigkit.hostdata import rig_for
from rigkit.operations import llama_cpp, services

config = rig_for(host)

llama_cpp.rollback(name="Switch llama.cpp back to the previous build", pin=rig.llama_pin(config))
for svc in config.enabled_services:
    systemd.service(name=f"Restart {svc.unit}", service=svc.unit, restarted=True)
services.verify(name="Verify services", rollback=False)
