"""
The NVIDIA driver, CUDA toolkit and container toolkit from NVIDIA's network repository,
pinned to a branch and held against unattended upgrades; GPU power limits at every boot.

    from rigkit.nvidia import deploy as nvidia
    nvidia.setup(rig.nvidia)       # deploys/nvidia.py, and deploys/rig.py when a host declares it

One job a module:

- :mod:`rigkit.nvidia.repository`: the repository's layout and package names (pure).
- :mod:`rigkit.nvidia.checks`: the host's facts against host data, before any change (pure).
- :mod:`rigkit.operations.nvidia`: the pyinfra operations.
- :mod:`rigkit.render.nvidia`: the power limit unit and its check (shared template environment).
- :mod:`rigkit.nvidia.deploy`: the ``@deploy`` that puts them together (:func:`~rigkit.nvidia.deploy.setup`).
"""
