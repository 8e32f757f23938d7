"""rigkit: GPU inference hosts (llama.cpp, vLLM, model shards) as pyinfra code."""

__version__ = "0.1.0"
