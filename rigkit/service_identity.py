"""
What every engine's service needs before its unit: its own system user, and its API key
placed as a secret file (or removed when the inventory no longer declares one).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files

from rigkit.facts.secrets import VERSION_SUFFIX
from rigkit.hostdata import Rig, Service
from rigkit.operations import secrets as secret_ops
from rigkit.operations import users


def user_and_key(rig: Rig, svc: Service, key_path: str, key_on_host: bool = True) -> list:
    """The service's user and key; returns the key operations (a changed or removed key
    restarts the service). ``key_on_host``: whether a key may be there to remove."""
    users.system_user(name=f"System user {svc.user}", user=svc.user, home=svc.names.home)
    if not svc.api_key_file:
        if not key_on_host:
            return []
        removed = files.file(name=f"No API key for {svc.name}", path=key_path, present=False)
        files.file(name=f"No API key version for {svc.name}", path=key_path + VERSION_SUFFIX, present=False)
        return [removed]
    local = Path(svc.api_key_file).expanduser()
    if not local.is_file():
        raise PyinfraError(
            f"host {rig.host}: services[{rig.services.index(svc)}].api_key_file ({svc.name}): expected a readable "
            "file on this machine, "
            f"{local} is not one"
        )
    return [
        secret_ops.secret_file(
            name=f"API key of {svc.name} (0400, {svc.user} only)",
            src=str(local),
            dest=key_path,
            user=svc.user,
            group=svc.user,
            mode="400",
        )
    ]
