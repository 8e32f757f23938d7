#!/usr/bin/env python3
"""
The image's entrypoint: ``vllm serve`` with the service's arguments. The API key comes from a
file mounted read-only (``RIGKIT_API_KEY_FILE``) into ``VLLM_API_KEY`` of this process only,
so it appears on no command line, in no unit and in no ``docker inspect``.
"""

import os
import sys

key_file = os.environ.pop("RIGKIT_API_KEY_FILE", None)
if key_file:
    with open(key_file) as f:
        os.environ["VLLM_API_KEY"] = f.read().strip()
os.execvp("vllm", ["vllm", "serve", *sys.argv[1:]])
