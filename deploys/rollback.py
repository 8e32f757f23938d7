"""
Explicit rollback, for every engine the host serves: llama.cpp back to the previous build,
its services restarted and verified; vLLM back to its last verified units and keys (so their
images), restarted only where they differ, and verified. The next deploys/rig.py run moves
forward to the pinned ref and images again, so pin the old ones in the inventory to stay there.

    pyinfra inventories/rig.py deploys/rollback.py
"""

from pyinfra import host
from pyinfra.operations import systemd

from rigkit import rig
from rigkit.hostdata import rig_for
from rigkit.operations import llama_cpp, services
from rigkit.operations import vllm as vllm_ops

config = rig_for(host)

llama = [svc for svc in config.enabled_services if svc.engine == "llama.cpp"]
if config.llama_cpp and llama:
    llama_cpp.rollback(name="Switch llama.cpp back to the previous build", pin=rig.llama_pin(config))
    for svc in llama:
        systemd.service(name=f"Restart {svc.unit}", service=svc.unit, restarted=True)
    services.verify(name="Verify llama.cpp services", rollback=False)
if any(svc.engine == "vllm" and config.serves(svc) for svc in config.enabled_services):
    vllm_ops.tool(name="Install rigkit's vLLM host tool")
    vllm_ops.restore(name="Put back the last verified vLLM services")
    vllm_ops.verify(name="Verify vLLM services", rollback=False)
