"""
The models step of a deploy: every model of the host in place before any service (re)starts,
uploaded from the deploying machine or fetched on the host as the model lock pins them, then
each derived model built on the host from them (an input read only by range is not placed).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from rigkit import cluster_share
from rigkit.hostdata import HubModel, Rig, UploadModel
from rigkit.models import derived
from rigkit.models.hub import read_token, resolve_endpoint
from rigkit.operations import checkpoints as checkpoint_ops
from rigkit.operations import models as model_ops
from rigkit.transport import may_carry_token


@deploy("Models")
def models(rig: Rig):
    """Model files: uploaded from this machine (``upload``) for small or air-gapped models,
    or fetched on the host from the Hub (or ``hf_endpoint``, a mirror) as the lock pins them;
    a cluster's other nodes fetch the head's from the head (rigkit.cluster_share).
    Derived models are built after the models they are made from (``derive``).
    Returns the operations, so services restart when their model changed."""
    placed = []
    # The token goes to the host only when a Hub model's endpoint may carry it (https).
    use_token = any(
        may_carry_token(resolve_endpoint(m.endpoint or host.data.get("hf_endpoint")))
        for m in rig.hub_models
        if not cluster_share.from_head(rig, m)
    )
    if rig.models:
        model_ops.fetcher(
            name="Install rigkit's model fetcher", token_file=host.data.get("hf_token_file"), use_token=use_token
        )
    for entry in rig.placed_models:
        if isinstance(entry, UploadModel):
            src = Path(entry.upload).expanduser()
            if not src.is_dir():
                raise PyinfraError(
                    f"host {rig.host}: models[].upload: expected a directory on this machine, {src} is not one"
                )
            placed.append(
                model_ops.uploaded(name=f"Model files of {src.name} in {entry.dest}", src=str(src), dest=entry.dest)
            )
        elif isinstance(entry, HubModel) and not cluster_share.from_head(rig, entry):
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
    placed.extend(cluster_share.models_from_head(rig))
    placed.extend(derived_models(rig, use_token))
    return placed


def derived_models(rig: Rig, use_token: bool) -> list:
    """Each derived model built (or found built) from its inputs, in order."""
    if not rig.derived_models:
        return []
    checkpoint_ops.builder(name="Install rigkit's checkpoint builder")
    has_token = use_token and read_token(host.data.get("hf_token_file")) is not None
    remote_token = f"{model_ops.REMOTE_DIR}/hf-token" if has_token else None
    built = []
    for model in rig.derived_models:
        spec = derived.spec_for(rig, model, endpoint=host.data.get("hf_endpoint"), remote_token=remote_token)
        built.append(
            checkpoint_ops.derived(
                name=f"Derived model {model.name} ({' + '.join(spec['recipes'])}, {spec['identity'][:12]}) "
                f"in {model.dest}",
                spec=spec,
            )
        )
    return built
