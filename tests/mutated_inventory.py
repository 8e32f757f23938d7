"""The sandbox inventory with one change to sandbox-1's service (or llama_cpp), written to a
temporary directory: how e2e tests deploy a variant of the suite's host data."""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra_run import REPO

INVENTORY = """
import json
from inventories_sandbox import rig_data, pyinfra_hosts

MUTATION = json.loads({mutation!r})

def mutated(data):
    data = rig_data(data)
    for key, value in MUTATION.items():
        if key == "@hosts":
            continue
        if key == "@data":
            data.update(value)
            continue
        if key == "@services":
            data["services"] = data["services"] + value
            continue
        if key == "@models":
            data["models"] = data["models"] + value
            continue
        if key == "@llama_cpp":
            data["llama_cpp"].update(value)
        elif value is None:
            data["services"][0].pop(key, None)
        else:
            data["services"][0][key] = value
    return data

sandbox = [(name, {{**data, **mutated(data)}}) for name, data in pyinfra_hosts()
           if name in MUTATION.get("@hosts", [name])]
"""


def write_inventory(tmp_path: Path, mutation: dict, name: str = "mutated") -> Path:
    """An inventory file (``"@hosts": [...]`` in ``mutation`` keeps only those hosts, ``"@llama_cpp"``
    updates llama_cpp, ``"@models"`` adds models, ``"@data"`` sets host-level keys, ``"@services"`` adds services, a ``None``
    value drops a service key); run pyinfra with ``PYTHONPATH=tmp_path`` so it finds the copy of
    inventories/sandbox.py it imports."""
    (tmp_path / "inventories_sandbox.py").write_text((REPO / "inventories/sandbox.py").read_text())
    inv = tmp_path / f"{name}.py"
    inv.write_text(INVENTORY.format(mutation=json.dumps(mutation)))
    return inv
