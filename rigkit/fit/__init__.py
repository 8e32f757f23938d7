"""
Will it fit: each GPU's memory planned from the model's own headers before anything starts,
and checked against what the GPUs hold after the load.

- :mod:`rigkit.fit.gguf`: a GGUF header read strictly and bounded (metadata, tensor infos).
- :mod:`rigkit.fit.shape`: what a plan needs of a model (:class:`~rigkit.fit.shape.ModelShape`:
  per-layer bytes, attention and recurrent layers, head sizes), from GGUF or safetensors
  headers and config.json; recorded in the model lock by ``rigkit lock``.
- :mod:`rigkit.fit.llama_cpp` and :mod:`rigkit.fit.vllm`: one engine's plan per GPU.
- :mod:`rigkit.fit.plan`: the GPUs a service gets, the comparison, the refusal's table and
  the split that would fit; :func:`~rigkit.fit.plan.check_rig` is what a deploy calls.
- :mod:`rigkit.fit.command`: ``rigkit plan INVENTORY [--service NAME]``.
- :mod:`rigkit.fit.measured`: after the load, plan against measured in the host's state.
"""
