"""Host data ``models``: files uploaded from the deploying machine, named Hub references
pinned by the model lock (``rigkit lock INVENTORY``), or derived checkpoints built on the host
from other models of the host by named, versioned recipes (:mod:`rigkit.checkpoints`)::

    {"name": "qwen122b-hybrid",
     "derive": {"recipes": ["hybrid-fp8-shared-experts", "mtp-index"],
                "inputs": {"base": "qwen122b-int4", "fp8": "qwen122b-fp8", "mtp": "qwen122b-int4"}},
     "dest": "/srv/models/qwen122b-hybrid"}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rigkit.checkpoints.recipes import RECIPES, Recipe
from rigkit.hostdata.schema import (
    MODEL_ROOTS,
    HostDataError,
    build,
    check_path,
    check_pattern,
    check_under_roots,
    is_within,
)
from rigkit.models.hub import ModelRef

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MODEL_REF_PREFIX = "ref:"
#: Host data that lets this host's Hub endpoints be plain http (a LAN mirror; never a token).
INSECURE_HTTP = "hf_insecure_http"
# A model directory: portable file-name characters between slashes (what a unit, a mount and a
# shell line take as they are; ASCII only, so no look-alike of a root passes for it).
DEST = re.compile(r"(?:/[A-Za-z0-9._+@=-]+)+", re.ASCII)  # services[].model: "ref:<models[].name>"


@dataclass(frozen=True)
class UploadModel:
    """Files of a directory on the deploying machine, copied into ``dest`` on the host."""

    upload: str
    dest: str


@dataclass(frozen=True)
class HubModel:
    """A Hub repository's files (``include`` patterns) at ``revision``, placed under ``dest``
    keeping their repository paths; pinned by the model lock."""

    repo: str
    dest: str
    name: str | None = None  # what services call it: "model": "ref:<name>"
    revision: str = "main"
    include: tuple[str, ...] = ("*",)
    endpoint: str | None = None

    @cached_property
    def ref(self) -> ModelRef:
        return ModelRef(
            repo=self.repo, revision=self.revision, include=self.include, dest=self.dest, endpoint=self.endpoint
        )


#: The input every derived model has: the checkpoint whose layout the recipes start from.
BASE_ROLE = "base"
# A recipe in host data: its name, optionally pinned to a version ("mtp-index@1").
RECIPE_SPEC = re.compile(r"([a-z0-9][a-z0-9-]{0,63})(?:@([1-9][0-9]{0,5}))?", re.ASCII)


@dataclass(frozen=True)
class Derivation:
    """How a derived model is made: ``recipes`` applied in order to the ``base`` input, each
    taking the other inputs it names by role; ``inputs``: role -> a model of this host."""

    recipes: tuple[str, ...]
    inputs: dict[str, str]

    @property
    def recipe_objects(self) -> tuple[Recipe, ...]:
        return tuple(RECIPES[r.split("@")[0]] for r in self.recipes)

    @property
    def ranged_roles(self) -> frozenset[str]:
        """Roles read by HTTP range (only the tensors taken): never placed on the host."""
        return frozenset(role for r in self.recipe_objects for role in r.ranged)


@dataclass(frozen=True)
class DerivedModel:
    """A checkpoint built on the host from other models of it (:mod:`rigkit.checkpoints`);
    ``dest`` a symlink to the complete output, switched only when a new one is built."""

    name: str
    derive: Derivation
    dest: str


Model = UploadModel | HubModel | DerivedModel


def parse_models(
    host: str, raw: Any, roots: tuple[str, ...] = MODEL_ROOTS, insecure_http: bool = False
) -> tuple[Model, ...]:
    """Validate host data ``models``: upload entries and named Hub references. Each ``dest``
    lies under one of ``roots`` (host data ``model_roots``, checked by
    :func:`~rigkit.hostdata.schema.check_model_roots`): the fetcher writes there as root. An
    ``endpoint`` is https, or plain http with ``insecure_http`` (host data
    ``hf_insecure_http: true``), and then no token is sent to it."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise HostDataError(host, "models", "a list of model mappings", raw)
    out: list[Model] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        key = f"models[{i}]"
        model: Model
        if isinstance(entry, dict) and "upload" in entry:
            model = build(UploadModel, entry, host, key)
        elif isinstance(entry, dict) and "derive" in entry:
            model = build(
                DerivedModel, {**entry, "derive": build(Derivation, entry["derive"], host, f"{key}.derive")}, host, key
            )
            _check_derivation(host, key, model)
            if model.name in names:
                raise HostDataError(host, f"{key}.name", "a name no other model on this host uses", model.name)
            names.add(model.name)
        elif isinstance(entry, (dict, HubModel, ModelRef)):
            if isinstance(entry, ModelRef):  # an inventory may name a Hub model by its ModelRef
                entry = {
                    "repo": entry.repo,
                    "revision": entry.revision,
                    "include": list(entry.include),
                    "dest": entry.dest,
                    **({"endpoint": entry.endpoint} if entry.endpoint else {}),
                }
            model = build(HubModel, entry, host, key)
            if model.name is not None:
                check_pattern(
                    model.name,
                    MODEL_NAME,
                    host,
                    f"{key}.name",
                    f"letters, digits, '.', '_' and '-' (what services name with {MODEL_REF_PREFIX}<name>)",
                )
                if model.name in names:
                    raise HostDataError(host, f"{key}.name", "a name no other model on this host uses", model.name)
                names.add(model.name)
            try:
                model.ref  # noqa: B018 - ModelRef holds the Hub checks (repo, revision, include, endpoint)
            except ValueError as exc:
                field = str(exc).split("'")[1] if "'" in str(exc) else "repo"
                raise HostDataError(host, f"{key}.{field}", str(exc).split("expected ", 1)[-1]) from None
            if model.endpoint is not None and not insecure_http and not model.endpoint.lower().startswith("https://"):
                raise HostDataError(
                    host,
                    f"{key}.endpoint",
                    f"an https URL (plain http only with {INSECURE_HTTP}: true)",
                    model.endpoint,
                )
        else:
            raise HostDataError(
                host, key, "a mapping with upload and dest, or name, repo and dest (a Hub reference)", entry
            )
        check_path(model.dest, host, f"{key}.dest", "an absolute directory path on the host")
        check_pattern(
            model.dest, DEST, host, f"{key}.dest", "a directory of letters, digits and . _ + @ = - between '/'"
        )
        check_under_roots(model.dest, roots, host, f"{key}.dest", "a directory")
        out.append(model)
    _check_derived_inputs(host, tuple(out), roots)
    return tuple(out)


def _check_derivation(host: str, key: str, model: DerivedModel) -> None:
    """One derived model's own fields: its name, known recipes (a pinned version this
    rigkit's), and exactly the input roles they read."""
    check_pattern(
        model.name,
        MODEL_NAME,
        host,
        f"{key}.name",
        f"letters, digits, '.', '_' and '-' (what services name with {MODEL_REF_PREFIX}<name>)",
    )
    derive = model.derive
    if not derive.recipes:
        raise HostDataError(host, f"{key}.derive.recipes", f"a non-empty list of recipes ({', '.join(RECIPES)})")
    seen = set()
    for i, spec in enumerate(derive.recipes):
        m = RECIPE_SPEC.fullmatch(spec)
        recipe = RECIPES.get(m[1]) if m else None
        at = f"{key}.derive.recipes[{i}]"
        if m is None or recipe is None:
            raise HostDataError(host, at, f"one of the recipes {', '.join(RECIPES)} (optionally '@<version>')", spec)
        if m[2] is not None and int(m[2]) != recipe.version:
            raise HostDataError(host, at, f"{recipe.name}@{recipe.version} (the version this rigkit builds)", spec)
        if recipe.name in seen:
            raise HostDataError(host, at, "each recipe once", spec)
        seen.add(recipe.name)
    roles = {BASE_ROLE} | {role for r in derive.recipe_objects for role in r.roles}
    for role, name in derive.inputs.items():
        if role not in roles:
            raise HostDataError(
                host,
                f"{key}.derive.inputs.{role}",
                f"one of the roles its recipes read ({', '.join(sorted(roles))})",
                role,
            )
        if name == model.name:
            raise HostDataError(host, f"{key}.derive.inputs.{role}", "another model than this one", name)
    missing = sorted(roles - set(derive.inputs))
    if missing:
        raise HostDataError(
            host, f"{key}.derive.inputs.{missing[0]}", "the name of a model of this host (its recipes read it)"
        )


def _check_derived_inputs(host: str, models: tuple[Model, ...], roots: tuple[str, ...]) -> None:
    """Across the host's models: each input of a derived model a named model of this host
    (a Hub model where it is read by range), no cycle, and each derived ``dest`` apart from
    every other model's directory, below a root (its outputs lie beside it, in its parent)."""
    by_name: dict[str, Model] = {m.name: m for m in models if isinstance(m, (HubModel, DerivedModel)) and m.name}
    for i, m in enumerate(models):
        if not isinstance(m, DerivedModel):
            continue
        key = f"models[{i}]"
        for role, name in sorted(m.derive.inputs.items()):
            at = f"{key}.derive.inputs.{role}"
            target = by_name.get(name)
            if target is None:
                raise HostDataError(
                    host,
                    at,
                    f"the name of a Hub or derived model of this host ({', '.join(sorted(by_name)) or 'none'})",
                    name,
                )
            if role in m.derive.ranged_roles and not isinstance(target, HubModel):
                raise HostDataError(host, at, "a Hub model (this input is read by HTTP range from the Hub)", name)
        if any(m.dest == r for r in roots):
            raise HostDataError(host, f"{key}.dest", "a directory below a model root, not the root itself", m.dest)
        for j, other in enumerate(models):
            if j != i and (is_within(m.dest, other.dest) or is_within(other.dest, m.dest)):
                raise HostDataError(
                    host,
                    f"{key}.dest",
                    f"a directory apart from models[{j}]'s ({other.dest}): it becomes a symlink",
                    m.dest,
                )
    for m in models:
        if isinstance(m, DerivedModel):
            derivation_order(host, m, by_name)


def derivation_order(host: str, model: DerivedModel, by_name: dict[str, Model]) -> list[DerivedModel]:
    """The derived models ``model`` needs, itself last, each after its inputs; a cycle is a
    :class:`HostDataError`."""
    order: list[DerivedModel] = []
    visiting: list[str] = []

    def visit(m: DerivedModel) -> None:
        if m.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(m.name) :], m.name])
            raise HostDataError(host, "models", f"derived models without a cycle among their inputs ({cycle})")
        if m in order:
            return
        visiting.append(m.name)
        for name in sorted(m.derive.inputs.values()):
            dep = by_name.get(name)
            if isinstance(dep, DerivedModel):
                visit(dep)
        visiting.pop()
        order.append(m)

    visit(model)
    return order
