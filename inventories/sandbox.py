"""
The local sandbox hosts that `sudo rigkit sandbox up` started (see README), as CPU rigs:
llama.cpp from the local git mirror (a stand-in for GitHub), a tiny generated model.

    pyinfra inventories/sandbox.py deploys/rig.py

To use upstream llama.cpp and a real small model instead, set RIGKIT_LLAMA_URL (e.g.
https://github.com/ggml-org/llama.cpp) and RIGKIT_LLAMA_REF, and put a GGUF under
RIGKIT_SANDBOX_MODEL_DIR with its file name in RIGKIT_SANDBOX_MODEL. RIGKIT_SANDBOX_BUILD_CACHE
names a build cache (`rigkit cache serve`) the hosts share, or is `sandbox` for the sandbox's
own (on its gateway, kept across `sandbox down`; `make demo` uses it); RIGKIT_SANDBOX_CMAKE_FLAGS adds
cmake flags (space-separated) to the pin; RIGKIT_SANDBOX_LLAMA_ROOT moves llama.cpp's directory.
"""

import os

from rigkit.sandbox import pyinfra_hosts

LLAMA_REF = os.environ.get("RIGKIT_LLAMA_REF", "b11312")
MODEL_DIR = "/srv/models/tiny-qwen"


def build_cache(data: dict) -> dict:
    """``llama_cpp``'s build cache keys from RIGKIT_SANDBOX_BUILD_CACHE: none, the sandbox's
    own (with its publish token, which only root on this machine reads), or a URL."""
    url = os.environ.get("RIGKIT_SANDBOX_BUILD_CACHE")
    if not url:
        return {}
    if url == "sandbox":
        return {
            "build_cache": data["sandbox_build_cache"],
            "build_cache_token_file": data["sandbox_build_cache_token_file"],
        }
    return {"build_cache": url}


def rig_data(data: dict) -> dict:
    model_src = os.environ.get("RIGKIT_SANDBOX_MODEL_DIR", f"{data['sandbox_models']}/tiny-qwen")
    model = os.environ.get("RIGKIT_SANDBOX_MODEL", "tiny-qwen-00001-of-00002.gguf")
    return {
        "gpus": {"count": 0},
        "llama_cpp": {
            "ref": LLAMA_REF,
            "git_url": os.environ.get("RIGKIT_LLAMA_URL", f"{data['sandbox_git_url']}/llama.cpp.git"),
            "cuda": False,
            **build_cache(data),
            **(
                {"cmake_flags": os.environ["RIGKIT_SANDBOX_CMAKE_FLAGS"].split()}
                if os.environ.get("RIGKIT_SANDBOX_CMAKE_FLAGS")
                else {}
            ),
            **(
                {"root": os.environ["RIGKIT_SANDBOX_LLAMA_ROOT"]} if os.environ.get("RIGKIT_SANDBOX_LLAMA_ROOT") else {}
            ),
        },
        "models": [{"upload": model_src, "dest": MODEL_DIR}],
        "services": [
            {
                "name": "tiny",
                "model": f"{MODEL_DIR}/{model}",
                # Tests and people reach it from the build machine, across the sandbox bridge.
                "host": "0.0.0.0",
                "allow_unauthenticated": not os.environ.get("RIGKIT_SANDBOX_API_KEY_FILE"),
                "port": 8000,
                "ctx": 2048,
                "parallel": 2,
                "cache_type_k": "q8_0",
                "cache_type_v": "q8_0",
                "n_gpu_layers": 0,
                "sampling": "qwen3.5-thinking",
                "extra_args": ["--no-warmup"],
                **(
                    {"api_key_file": os.environ["RIGKIT_SANDBOX_API_KEY_FILE"]}
                    if os.environ.get("RIGKIT_SANDBOX_API_KEY_FILE")
                    else {}
                ),
            }
        ],
    }


sandbox = [(name, {**data, **rig_data(data)}) for name, data in pyinfra_hosts()]
