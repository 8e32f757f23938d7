"""
Host data for a rig, declared once, typed and validated before anything runs.

An inventory gives each host plain dicts per component, each optional: ``gpus``,
``llama_cpp``, ``models`` and ``services``; :func:`rig_for` turns them into the dataclasses of
this package (one module per component) or raises :class:`HostDataError` naming the host, the
key and what was expected::

    rig = [("rig", {
        "gpus": {"count": 6, "cuda_arch": ["86"]},
        "llama_cpp": {"ref": "b8137"},
        "services": [{"name": "qwen122b", "model": "/srv/models/...-00001-of-00004.gguf"}],
    })]

``models`` entries are uploads from the deploying machine, ``{"upload": LOCAL_DIR,
"dest": HOST_DIR}``, or Hub references with a name, ``{"name": "qwen122b-q6", "repo":
"unsloth/Qwen3.5-122B-A10B-GGUF", "revision": "main", "include": ["UD-Q6_K_XL/*.gguf"],
"dest": "/srv/models/qwen122b"}``, or derived checkpoints built on the host from those
(:mod:`rigkit.hostdata.models`, ``{"name": ..., "derive": {"recipes": [...], "inputs":
{"base": ..., ...}}, "dest": ...}``). A service names a Hub model with ``"model":
"ref:qwen122b-q6"``; :func:`rig_for` resolves it through the model lock (``rigkit lock
INVENTORY``), which the inventory names in host data ``model_lock``
(``lockfile.lock_path_for(__file__)``) or ``$RIGKIT_MODEL_LOCK`` names.
"""

from rigkit.hostdata.gpus import Gpus
from rigkit.hostdata.llama_cpp import UPSTREAM_LLAMA_CPP, LlamaCpp
from rigkit.hostdata.llama_server import SAMPLING_PRESETS, LlamaServerOptions
from rigkit.hostdata.models import MODEL_REF_PREFIX, DerivedModel, HubModel, UploadModel, parse_models
from rigkit.hostdata.rig import (
    LOCK_ENV,
    ModelLockError,
    Rig,
    find_model_lock,
    parse_rig,
    resolve_model_refs,
    rig_for,
)
from rigkit.hostdata.schema import HostDataError
from rigkit.hostdata.services import Service

__all__ = [
    "LOCK_ENV",
    "MODEL_REF_PREFIX",
    "SAMPLING_PRESETS",
    "UPSTREAM_LLAMA_CPP",
    "DerivedModel",
    "Gpus",
    "HostDataError",
    "HubModel",
    "LlamaCpp",
    "LlamaServerOptions",
    "ModelLockError",
    "Rig",
    "Service",
    "UploadModel",
    "find_model_lock",
    "parse_models",
    "parse_rig",
    "resolve_model_refs",
    "rig_for",
]
