"""
rigkit's llama.cpp build path on a GPU box without systemd or apt (the lent benchmark
machine): the host tool, the pinned build for the GPU's architecture, then the switch.

    pyinfra -y benchmarks/gpu/inventory.py benchmarks/gpu/deploy.py

The same operations ``rigkit.engines.llama_cpp.llama_cpp_build`` runs, less its apt step (cmake, git,
a C++ compiler and the CUDA toolkit must be there already).
"""

from pyinfra import host

from rigkit.engines.llama_cpp import cuda_arch
from rigkit.hostdata import rig_for
from rigkit.operations import llama_cpp
from rigkit.operations.llama_cpp import BuildIdentity

config = rig_for(host)
assert config.llama_cpp is not None, "benchmarks/gpu/inventory.py declares llama_cpp"
archs = cuda_arch(config)  # empty in the host data: read from nvidia-smi
identity = BuildIdentity.of(config.llama_cpp, archs)

llama_cpp.tool(name="Install rigkit's llama.cpp host tool")
llama_cpp.build(
    name=f"Build llama.cpp {config.llama_cpp.ref} for sm_{','.join(archs)} "
    f"(FA_ALL_QUANTS {'on' if config.llama_cpp.fa_all_quants else 'off'})",
    identity=identity,
)
if host.data.get("activate"):
    llama_cpp.activate(name=f"Switch llama.cpp to {config.llama_cpp.ref}", identity=identity)
