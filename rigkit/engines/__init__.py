"""
The engines a host can serve, on the deploy side: one module each (``llama_cpp``, ``vllm``,
``sglang``) with an :class:`~rigkit.engines.base.Engine` that the one serve step
(:mod:`rigkit.serve`) calls; container engines share :mod:`rigkit.engines.containers`. Host
data's side of each (its options and checks) is :mod:`rigkit.hostdata.engines`.

Adding an engine: its options and checks in ``rigkit/hostdata/<engine>.py`` and a line in
``rigkit.hostdata.engines.SPECS``; its renderer in ``rigkit/render/<engine>.py`` (a container
engine renders through ``rigkit.render.containers``); its Engine here and a line in
:data:`ENGINES`.
"""

from __future__ import annotations

from rigkit.engines import llama_cpp, sglang, vllm
from rigkit.engines.base import Engine

#: In the order a deploy serves them.
ENGINES: dict[str, Engine] = {e.name: e for e in (llama_cpp.ENGINE, vllm.ENGINE, sglang.ENGINE)}
