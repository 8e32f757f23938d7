"""Host data ``models``: files uploaded from the deploying machine, or named Hub references
pinned by the model lock (``rigkit lock INVENTORY``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rigkit.hostdata.schema import (
    MODEL_ROOTS,
    HostDataError,
    build,
    check_path,
    check_pattern,
    check_under_roots,
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


Model = UploadModel | HubModel


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
    return tuple(out)
