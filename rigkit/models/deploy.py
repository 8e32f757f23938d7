"""
The models step of a deploy: every model of the host in place before any service (re)starts,
uploaded from the deploying machine or fetched on the host as the model lock pins them, then
each derived model built on the host from them (an input read only by range is not placed).

A Hub model's download runs in the background on the host while the deploy goes on (a bare
box's other long wait is the llama.cpp compile): the serve step waits for it
(:meth:`PlacedModels.wait`) after the engines' builds and before any service changes, so a
failed download stops the host's deploy with nothing switched. Where the models step itself
reads the files (a cluster's head shares them, a derived model is built from them), it waits
right there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from rigkit import cluster_share
from rigkit.hostdata import HubModel, Rig, UploadModel
from rigkit.models import derived
from rigkit.models.hub import ModelRef, read_token, resolve_endpoint
from rigkit.operations import checkpoints as checkpoint_ops
from rigkit.operations import models as model_ops
from rigkit.transport import may_carry_token


@dataclass
class PlacedModels:
    """What the models step did: its ``operations`` (a changed one restarts the services, as
    any of their inputs), and the ``downloads`` it left running in the background (per model,
    its title, ref and the operation that started it), which :meth:`wait` waits for."""

    operations: list = field(default_factory=list)
    downloads: list[tuple[str, ModelRef, Any]] = field(default_factory=list)

    def wait(self) -> None:
        """Each background download waited for, in order (they all ran meanwhile): the host's
        deploy stops at the first that failed."""
        for title, ref, started in self.downloads:
            model_ops.downloaded(name=f"Wait for model {title}", ref=ref, _if=started.did_change)
        self.downloads = []


@deploy("Models")
def models(rig: Rig) -> PlacedModels:
    """Model files: uploaded from this machine (``upload``) for small or air-gapped models,
    or fetched on the host from the Hub (or ``hf_endpoint``, a mirror) as the lock pins them,
    in the background (:class:`PlacedModels`); a cluster's other nodes fetch the head's from
    the head (rigkit.cluster_share). Derived models are built after the models they are made
    from (``derive``). Returns what it placed, so services restart when their model changed."""
    placed = PlacedModels()
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
            placed.operations.append(
                model_ops.uploaded(name=f"Model files of {src.name} in {entry.dest}", src=str(src), dest=entry.dest)
            )
        elif isinstance(entry, HubModel) and not cluster_share.from_head(rig, entry):
            locked = rig.lock_for(entry)
            title = entry.name or entry.repo
            started = model_ops.shards(
                name=f"Model {title} ({entry.repo}@{locked.sha[:12]}, {len(locked.files)} file(s)) in {entry.dest}",
                ref=entry.ref,
                lock_entry=locked,
                token_file=host.data.get("hf_token_file"),
                background=True,
            )
            placed.operations.append(started)
            placed.downloads.append((title, entry.ref, started))
    if rig.cluster is not None or rig.derived_models:  # what comes next here reads the files
        placed.wait()
    placed.operations.extend(cluster_share.models_from_head(rig))
    placed.operations.extend(derived_models(rig, use_token))
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
