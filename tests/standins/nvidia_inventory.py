"""
The sandbox hosts with ``nvidia`` host data for tests against the STAND-IN NVIDIA repository
(tests/standins/nvidia_repo.py): ``$RIGKIT_TEST_NVIDIA`` is a JSON object, host name ->
``nvidia`` mapping (hosts it does not name get none).
"""

import json
import os

from rigkit.sandbox import pyinfra_hosts

NVIDIA = json.loads(os.environ.get("RIGKIT_TEST_NVIDIA", "{}"))

sandbox = [
    (name, {**data, "gpus": {"count": 6}, **({"nvidia": NVIDIA[name]} if name in NVIDIA else {})})
    for name, data in pyinfra_hosts()
]
