"""
A derived model's build spec, made on the deploying machine from validated host data and the
model lock: its identity (a hash of its inputs' lock entries and its recipes' versions), the
output directory that identity names, and where each input is read from on the host (a
placed directory, or the Hub by range with the lock's ranges). ``rigkit/scripts/
build_checkpoint.py`` builds from it.
"""

from __future__ import annotations

from typing import Any

from rigkit.hostdata.models import DerivedModel, HubModel
from rigkit.hostdata.rig import Rig
from rigkit.models.hub import resolve_endpoint
from rigkit.scripts.build_checkpoint import SPEC_VERSION
from rigkit.transport import may_carry_token


def spec_for(
    rig: Rig,
    model: DerivedModel,
    *,
    endpoint: str | None = None,
    remote_token: str | None = None,
) -> dict[str, Any]:
    """The JSON spec build_checkpoint.py reads. ``remote_token``: the token file on the host,
    named only for an input whose endpoint may carry it (https)."""
    ident = rig.derived_identity(model)
    inputs: dict[str, Any] = {}
    for role, name in sorted(model.derive.inputs.items()):
        m = rig.model_named(name)
        if role not in model.derive.ranged_roles:
            inputs[role] = {"dir": m.dest}  # placed whole (or built) before this one
            continue
        assert isinstance(m, HubModel)  # parse_models: a ranged input is a Hub model
        locked = rig.lock_for(m)
        ep = resolve_endpoint(m.endpoint or endpoint)
        raw: dict[str, Any] = {
            "url": f"{ep}/{m.repo}/resolve/{locked.sha}/",
            "label": f"{m.repo}@{locked.sha[:12]}",
            "files": {f.path: f.size for f in locked.files if f.path.endswith(".safetensors")},
            "ranges": [r.to_data() for r in locked.ranges],
        }
        if remote_token and may_carry_token(ep):
            raw["token_file"] = remote_token
        inputs[role] = raw
    base = rig.model_named(model.derive.inputs["base"])
    return {
        "version": SPEC_VERSION,
        "name": model.name,
        "dest": model.dest,
        "output": rig.derived_output(model),
        "identity": ident,
        "recipes": [r.name for r in model.derive.recipe_objects],
        # A known base (its Hub repository) has its recipes' counts checked before the switch.
        "model": base.repo if isinstance(base, HubModel) else None,
        "inputs": inputs,
    }
