"""
Derived checkpoints: safetensors checkpoints made from others by named, versioned recipes
(seed 003's hybrid INT4+FP8 shared experts, its MTP weights put back into the index).

STDLIB ONLY, and only relative imports inside the package: the same modules run on the
deploying machine (``rigkit checkpoint``, ``rigkit lock``) and on a host, where
``rigkit/scripts/build_checkpoint.py`` imports them from the directory the pyinfra operation
uploaded them to (:mod:`rigkit.operations.checkpoints`).

* :mod:`.safetensors`: strict header parsing (what the safetensors library itself accepts,
  nothing more) and streaming shard writing;
* :mod:`.sources`: tensors of a local directory, or of a Hub repository by HTTP range;
* :mod:`.recipes`: the recipes, each a plan of tensors replaced, skipped and added;
* :mod:`.build`: a plan written into a new directory beside the old output, swapped in whole;
* :mod:`.synthetic`: tiny checkpoints with Qwen3.5-122B-A10B's real tensor names (tests, and
  random-weight models for GPU runs).
"""
