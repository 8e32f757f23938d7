"""
The models step of a deploy: every model of the host in place before any service (re)starts,
uploaded from the deploying machine or fetched on the host as the model lock pins them.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from rigkit.hostdata import Rig, UploadModel
from rigkit.models.hub import resolve_endpoint
from rigkit.operations import models as model_ops
from rigkit.transport import may_carry_token


@deploy("Models")
def models(rig: Rig):
    """Model files: uploaded from this machine (``upload``) for small or air-gapped models,
    or fetched on the host from the Hub (or ``hf_endpoint``, a mirror) as the lock pins them.
    Returns the operations, so services restart when their model changed."""
    placed = []
    if rig.models:
        model_ops.fetcher(
            name="Install rigkit's model fetcher",
            token_file=host.data.get("hf_token_file"),
            # The token goes to the host only when a Hub model's endpoint may carry it (https).
            use_token=any(
                may_carry_token(resolve_endpoint(m.endpoint or host.data.get("hf_endpoint"))) for m in rig.hub_models
            ),
        )
    for entry in rig.models:
        if isinstance(entry, UploadModel):
            src = Path(entry.upload).expanduser()
            if not src.is_dir():
                raise PyinfraError(
                    f"host {rig.host}: models[].upload: expected a directory on this machine, {src} is not one"
                )
            placed.append(
                model_ops.uploaded(name=f"Model files of {src.name} in {entry.dest}", src=str(src), dest=entry.dest)
            )
        else:
            locked = rig.lock_for(entry)
            placed.append(
                model_ops.shards(
                    name=f"Model {entry.name or entry.repo} ({entry.repo}@{locked.sha[:12]}, "
                    f"{len(locked.files)} file(s)) in {entry.dest}",
                    ref=entry.ref,
                    lock_entry=locked,
                    token_file=host.data.get("hf_token_file"),
                )
            )
    return placed
