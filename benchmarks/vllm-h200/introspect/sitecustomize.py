"""
rigkit's dispatch introspection for the H200 runs (benchmarks/vllm-h200): on PYTHONPATH of
the vLLM server (API process and engine core alike), it wraps ``get_quant_method`` of vLLM's
INC and FP8 quantization configs when vLLM imports them and prints, for every layer asked
about, which linear or MoE method vLLM chose:

    [rigkit-introspect] INCConfig: language_model.model.layers.0.mlp.shared_expert.gate_up_proj
        (MergedColumnParallelLinear) -> Fp8LinearMethod

It edits no vLLM file: the unpatched run stays unpatched, the patched one is patched only by
rigkit's apply.py.
"""

import importlib.abc
import importlib.machinery
import sys

TARGETS = {
    "vllm.model_executor.layers.quantization.inc": "INCConfig",
    "vllm.model_executor.layers.quantization.fp8": "Fp8Config",
}


def _wrap(module, name):
    cls = getattr(module, name, None)
    if cls is None or getattr(cls.get_quant_method, "_rigkit", False):
        return
    orig = cls.get_quant_method

    def get_quant_method(self, layer, prefix):
        method = orig(self, layer, prefix)
        print(
            f"[rigkit-introspect] {name}: {prefix} ({type(layer).__name__}) -> "
            f"{type(method).__name__ if method is not None else None}",
            file=sys.stderr,
            flush=True,
        )
        return method

    get_quant_method._rigkit = True
    cls.get_quant_method = get_quant_method


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            _wrap(module, TARGETS[fullname])

        spec.loader.exec_module = run
        return spec


sys.meta_path.insert(0, _Finder())
