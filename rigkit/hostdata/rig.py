"""
A host's components together: :class:`Rig`, validated whole by :func:`parse_rig` before any
host changes, and :func:`rig_for`, which also resolves ``ref:`` models through the model lock.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from rigkit.facts import per_run
from rigkit.hostdata.cluster import Cluster, ClusterMembers, members, parse_cluster, validate_cluster
from rigkit.hostdata.gpus import Gpus, parse_gpus
from rigkit.hostdata.interconnect import Interconnect, check_with_cluster, parse_interconnect
from rigkit.hostdata.llama_cpp import LlamaCpp, parse_llama_cpp
from rigkit.hostdata.models import (
    INSECURE_HTTP,
    MODEL_REF_PREFIX,
    DerivedModel,
    HubModel,
    Model,
    derivation_order,
    parse_models,
)
from rigkit.hostdata.nvidia import Nvidia, parse_nvidia
from rigkit.hostdata.schema import MODEL_ROOTS, HostDataError, check_model_roots, check_text, check_under_roots
from rigkit.hostdata.services import Service, parse_services
from rigkit.hostdata.vllm import VllmOptions
from rigkit.models import lockfile
from rigkit.models.lockfile import LockEntry, LockError
from rigkit.transport import UrlError, check_url, may_carry_token

LOCK_ENV = "RIGKIT_MODEL_LOCK"
# The host-data keys rigkit reads; the rest (ssh_*, sandbox_*, ...) belongs to pyinfra or tools.
#: Set by rigkit in a cluster's containers (rigkit.render.ray); not a service's to override.
CLUSTER_ENV = frozenset(
    {"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP", "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED"}
)
COMPONENTS = ("gpus", "nvidia", "llama_cpp", "services", "models", "cluster", "interconnect")
#: Host-level keys parse_rig reads beside the components.
HOST_KEYS = ("model_roots", INSECURE_HTTP)


def spans_cluster(svc: Service) -> str | None:
    """The name of the cluster a service spans (a vLLM service's ``cluster``), or None."""
    return svc.options.cluster if isinstance(svc.options, VllmOptions) else None


class ModelLockError(PyinfraError, LockError):
    """The model lock is missing or does not match a host's Hub models; names ``rigkit lock``."""


@dataclass(frozen=True)
class Rig:
    """One host's validated components; a component the host does not declare is ``None``
    (or empty)."""

    host: str
    gpus: Gpus = field(default_factory=Gpus)
    nvidia: Nvidia | None = None
    llama_cpp: LlamaCpp | None = None
    services: tuple[Service, ...] = ()
    models: tuple[Model, ...] = ()
    cluster: Cluster | None = None
    interconnect: Interconnect | None = None
    # Where model files and directories may be on this host (host data model_roots).
    model_roots: tuple[str, ...] = MODEL_ROOTS
    # ModelRef.key -> the lock entry, filled by resolve_model_refs()
    locks: Mapping[str, LockEntry] = field(default_factory=dict, compare=False)
    # The cluster's nodes, head, addresses and GPUs, resolved once per run by rig_for()
    members: ClusterMembers | None = field(default=None, compare=False)

    @property
    def enabled_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.enabled)

    def engine_services(self, engine: str) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.engine == engine)

    def serves(self, svc: Service) -> bool:
        """Whether the service's unit runs here: everywhere but on a cluster's other nodes
        (which run Ray workers in its image)."""
        return self.cluster is None or spans_cluster(svc) is None or self.is_head

    @property
    def is_head(self) -> bool:
        return self.cluster is not None and self.cluster.head == self.host

    def clustered(self) -> Service | None:
        """The vLLM service that spans this host's cluster."""
        return next((s for s in self.services if spans_cluster(s) is not None), None)

    @property
    def hub_models(self) -> tuple[HubModel, ...]:
        return tuple(m for m in self.models if isinstance(m, HubModel))

    @property
    def derived_models(self) -> tuple[DerivedModel, ...]:
        """The derived models, each after the derived models it is made from."""
        by_name: dict[str, Model] = {
            m.name: m for m in self.models if isinstance(m, (HubModel, DerivedModel)) and m.name
        }
        order: list[DerivedModel] = []
        for m in self.models:
            if isinstance(m, DerivedModel):
                order.extend(d for d in derivation_order(self.host, m, by_name) if d not in order)
        return tuple(order)

    @property
    def ranged_only(self) -> frozenset[str]:
        """Hub models only read by range for derived models: their files are never placed
        whole on the host (an FP8 checkpoint of 100+ GB for a few hundred MB of tensors)."""
        ranged: set[str] = set()
        whole = {model[len(MODEL_REF_PREFIX) :] for _, model in served_models(self.services)}
        for d in self.derived_models:
            for role, name in d.derive.inputs.items():
                (ranged if role in d.derive.ranged_roles else whole).add(name)
        return frozenset(ranged - whole)

    @property
    def placed_models(self) -> tuple[Model, ...]:
        """Uploads and Hub models placed whole on the host (not the ranged-only ones)."""
        return tuple(
            m
            for m in self.models
            if not isinstance(m, DerivedModel) and not (isinstance(m, HubModel) and m.name in self.ranged_only)
        )

    def derived_identity(self, model: DerivedModel) -> str:
        """What a derived model's output is made of: each input's lock entry (a derived
        input: its identity), by role, and each recipe's name and version, in order."""
        from rigkit.checkpoints.build import identity_of

        inputs: dict[str, Any] = {}
        for role, name in sorted(model.derive.inputs.items()):
            m = self.model_named(name)
            inputs[role] = (
                {"hub": self.lock_for(m).to_data()}
                if isinstance(m, HubModel)
                else {"derived": self.derived_identity(m)}
            )
        recipes = [[r.name, r.version] for r in model.derive.recipe_objects]
        return identity_of({"recipes": recipes, "inputs": inputs})

    def derived_output(self, model: DerivedModel) -> str:
        """The directory a derived model's current inputs build (beside its ``dest``): what its
        services load, so a rollback's unit names the previous output, which stays."""
        from rigkit.scripts.build_checkpoint import output_dir

        return output_dir(model.dest, self.derived_identity(model))

    def model_named(self, name: str) -> HubModel | DerivedModel:
        return next(m for m in self.models if isinstance(m, (HubModel, DerivedModel)) and m.name == name)

    @property
    def unresolved(self) -> tuple[Service, ...]:
        """Services whose model is still a ``ref:`` (no lock applied yet)."""
        return tuple(s for s in self.services if any(m.model.startswith(MODEL_REF_PREFIX) for m in s.served))

    def lock_for(self, model: HubModel) -> LockEntry:
        """The lock entry (commit sha, files with sha256) of a Hub model of this rig."""
        try:
            return self.locks[model.ref.key]
        except KeyError:
            raise HostDataError(
                self.host,
                "models",
                f"{model.repo} resolved through the model lock (rig_for() does that; parse_rig() alone does not)",
            ) from None


def parse_rig(host: str, data: Mapping[str, Any]) -> Rig:
    """Validate one host's components; raises HostDataError on the first problem."""
    roots = check_model_roots(data.get("model_roots"), host)
    gpus = parse_gpus(host, data.get("gpus"))
    nvidia = parse_nvidia(host, data.get("nvidia"), gpu_count=gpus.count)
    llama = parse_llama_cpp(host, data["llama_cpp"], gpus) if data.get("llama_cpp") is not None else None
    services = parse_services(host, data.get("services"), gpus, llama.ref if llama else None)
    for i, svc in enumerate(services):
        if svc.engine == "llama.cpp" and llama is None:
            raise HostDataError(
                host,
                "llama_cpp",
                f"a mapping with at least ref (a build tag such as b8137): "
                f"services[{i}] ({svc.name}) has engine llama.cpp",
            )
    models = parse_models(host, data.get("models"), roots, insecure_http=insecure_http(host, data))
    hub_names = [m.name for m in models if isinstance(m, (HubModel, DerivedModel)) and m.name]
    derived_names = {m.name for m in models if isinstance(m, DerivedModel)}
    for key, model in served_models(services):
        if model.startswith(MODEL_REF_PREFIX) and model[len(MODEL_REF_PREFIX) :] not in hub_names:
            raise HostDataError(
                host,
                key,
                f"{MODEL_REF_PREFIX}<name> naming a Hub or derived model of this host's models "
                f"({', '.join(hub_names) or 'none declared'})",
                model,
            )
    for key, model in served_models(services):
        engine = services[int(key[len("services[") : key.index("]")])].engine
        if (
            engine == "llama.cpp"
            and model.startswith(MODEL_REF_PREFIX)
            and model[len(MODEL_REF_PREFIX) :] in derived_names
        ):
            raise HostDataError(
                host,
                key,
                "a GGUF model for llama.cpp (a derived model is a safetensors checkpoint: vLLM or SGLang serve it)",
                model,
            )
    cluster = parse_cluster(host, data["cluster"]) if data.get("cluster") is not None else None
    _check_clustered_services(host, services, cluster)
    _check_model_paths(host, services, roots)
    link = parse_interconnect(host, data["interconnect"]) if data.get("interconnect") is not None else None
    return Rig(
        host=host,
        gpus=gpus,
        nvidia=nvidia,
        llama_cpp=llama,
        services=services,
        models=models,
        cluster=cluster,
        interconnect=link,
        model_roots=roots,
    )


def served_models(services: tuple[Service, ...]) -> list[tuple[str, str]]:
    """(host data key, model) of every model the services serve: each service's own and a
    router's models."""
    return [
        (f"services[{i}]" + (f".router_models[{j - 1}]" if j else "") + ".model", model.model)
        for i, svc in enumerate(services)
        for j, model in enumerate(svc.served)
    ]


def _check_model_paths(host: str, services: tuple[Service, ...], roots: tuple[str, ...]) -> None:
    """A service's model given as a path lies under the model roots (``ref:`` models have their
    ``dest`` checked alike): llama-server reads it, vLLM's root container mounts it."""
    for i, svc in enumerate(services):
        if isinstance(svc.options, VllmOptions):
            for k, v in (svc.options.speculative or {}).items():
                if v in svc.options.draft_paths:
                    check_under_roots(str(v), roots, host, f"services[{i}].speculative.{k}", "a draft model")
    for key, model in served_models(services):
        if not model.startswith(MODEL_REF_PREFIX):
            check_under_roots(model, roots, host, key, "a model")


def _check_clustered_services(host: str, services: tuple[Service, ...], cluster: Cluster | None) -> None:
    """A service that names a cluster names this host's; a cluster has exactly one service."""
    spanning = []
    for i, svc in enumerate(services):
        if not isinstance(svc.options, VllmOptions) or svc.options.cluster is None:
            continue
        opts, name = svc.options, svc.options.cluster
        if cluster is None or cluster.name != name:
            raise HostDataError(
                host,
                f"services[{i}].cluster",
                f"the name of this host's cluster ({cluster.name if cluster else 'none declared'})",
                name,
            )
        if svc.gpus:
            raise HostDataError(
                host, f"services[{i}].gpus", "no GPU subset: a service across a cluster uses every GPU of its nodes"
            )
        for var in opts.env:
            if var in CLUSTER_ENV:
                raise HostDataError(
                    host,
                    f"services[{i}].env.{var}",
                    f"none of {', '.join(sorted(CLUSTER_ENV))} (rigkit sets them for the cluster's interconnect)",
                    var,
                )
        if cluster.parallel and (opts.tensor_parallel, opts.pipeline_parallel) != cluster.parallel:
            raise HostDataError(
                host,
                f"services[{i}].tensor_parallel",
                f"the cluster's tensor_parallel and pipeline_parallel ({cluster.tensor_parallel}, "
                f"{cluster.pipeline_parallel})",
                [opts.tensor_parallel, opts.pipeline_parallel],
            )
        spanning.append(svc.name)
    if cluster is not None and len(spanning) != 1:
        raise HostDataError(
            host,
            "cluster",
            f"one vLLM service that spans it (options cluster: {cluster.name!r}; Ray runs in its image)",
            spanning,
        )


def check_clusters(hosts_data: Mapping[str, Mapping[str, Any]]) -> None:
    """The inventory's clusters across hosts (:func:`validate_cluster`), and the service that
    spans each declared alike on every node (same image, model and flags everywhere)."""
    validate_cluster(hosts_data)
    rigs: dict[str, Rig] = {}
    for name, data in hosts_data.items():
        if data.get("cluster") is not None:
            rigs[name] = parse_rig(name, {k: data[k] for k in COMPONENTS + HOST_KEYS if data.get(k) is not None})
    for name, rig in rigs.items():
        assert rig.cluster is not None
        if rig.interconnect is not None:
            # validate_cluster: every node declares the cluster.
            others = {n: c.address for n in rig.cluster.nodes if n != name and (c := rigs[n].cluster) is not None}
            check_with_cluster(name, rig.interconnect, rig.cluster.interconnect, rig.cluster.address, others)
    for name, rig in rigs.items():
        assert rig.cluster is not None
        head = rigs[rig.cluster.head]
        mine, theirs = rig.clustered(), head.clustered()
        if mine != theirs:
            raise HostDataError(
                name,
                "services",
                f"the service that spans cluster {rig.cluster.name} declared as on its head {head.host} "
                f"({theirs.name if theirs else None}: same model, image and flags)",
                mine.name if mine else None,
            )


def resolve_cluster(host: Any, cluster: Cluster) -> ClusterMembers:
    """The inventory's clusters checked (:func:`check_clusters`) and each resolved, once per
    run (``host.state``) for all its hosts; a problem is raised again for every host."""
    run = per_run.for_run(host.state) if getattr(host, "state", None) is not None else {}
    if "clusters" not in run:
        hosts_data = {h.name: h.data.dict() for h in host.inventory}
        try:
            check_clusters(hosts_data)
        except HostDataError as exc:
            run["clusters"] = exc
        else:
            run["clusters"] = {
                name: members(hosts_data, parse_cluster(name, data["cluster"]))
                for name, data in hosts_data.items()
                if data.get("cluster") is not None
            }
    resolved = run["clusters"]
    if isinstance(resolved, HostDataError):
        raise resolved
    return resolved[host.name]


def resolve_model_refs(rig: Rig, lock: Mapping[str, LockEntry], inventory: str = "INVENTORY") -> Rig:
    """The rig with its Hub models' lock entries and each ``ref:`` service model replaced by
    ``<dest>/<first shard>``; raises LockError naming ``rigkit lock`` when an entry is missing
    or stale."""
    hub = rig.hub_models
    if not hub:
        return rig
    labels = {}
    for i, m in enumerate(rig.models):
        if isinstance(m, HubModel):
            users = [key for key, model in served_models(rig.services) if model == MODEL_REF_PREFIX + str(m.name)]
            labels[m.ref.key] = ", ".join([f"models[{i}]" + (f" {m.name}" if m.name else ""), *users])
    entries = lockfile.check([m.ref for m in hub], lock, inventory=inventory, labels=labels)
    locks = {m.ref.key: entries[m.ref.key] for m in hub}
    for d in rig.derived_models:
        for role in sorted(d.derive.ranged_roles):
            ranged = rig.model_named(d.derive.inputs[role])
            if isinstance(ranged, HubModel) and not locks[ranged.ref.key].ranges:
                raise LockError(
                    f"{ranged.ref.key}: the lock entry has no tensor ranges, which derived model {d.name} reads "
                    f"({role}) by range\nrun: rigkit lock {inventory}"
                )

    locked = dataclasses.replace(rig, locks=locks)

    def resolved(model: str, engine: str, key: str) -> str:
        if not model.startswith(MODEL_REF_PREFIX):
            return model
        m = rig.model_named(model[len(MODEL_REF_PREFIX) :])
        if isinstance(m, DerivedModel):  # vLLM and SGLang load the output directory itself
            return locked.derived_output(m)
        try:
            # vLLM loads the model's directory; llama-server its first shard.
            return m.dest if engine == "vllm" else locks[m.ref.key].model_path(m.dest)
        except ValueError as exc:
            raise HostDataError(rig.host, key, f"a Hub model with one first shard ({exc})") from None

    services = []
    for i, svc in enumerate(rig.services):
        svc = dataclasses.replace(svc, model=resolved(svc.model, svc.engine, f"services[{i}].model"))
        if svc.router_models:
            svc = svc.with_router_models(
                dataclasses.replace(m, model=resolved(m.model, svc.engine, f"services[{i}].router_models[{j}].model"))
                for j, m in enumerate(svc.router_models)
            )
        services.append(svc)
    return dataclasses.replace(rig, services=tuple(services), locks=locks)


def find_model_lock(data: Mapping[str, Any]) -> tuple[Path | None, str]:
    """Where the model lock is, and the inventory to name in ``rigkit lock ...`` hints: host
    data ``model_lock`` (an inventory names its own: ``lockfile.lock_path_for(__file__)``),
    else ``$RIGKIT_MODEL_LOCK``."""
    explicit = data.get("model_lock") or os.environ.get(LOCK_ENV)
    if not explicit:
        return None, "INVENTORY"
    path = Path(str(explicit)).expanduser()
    return path, str(path.with_name(path.name.removesuffix(".lock.yaml") + ".py"))


def insecure_http(host: str, data: Any) -> bool:
    """Host data ``hf_insecure_http``: this host's Hub endpoints may be plain http (a LAN
    mirror), knowingly; then no token is sent to them."""
    value = data.get(INSECURE_HTTP, False)
    if not isinstance(value, bool):
        raise HostDataError(host, INSECURE_HTTP, "true or false", value)
    return value


def check_model_supply(host: str, data: Any) -> None:
    """Host-level keys the model step reads: ``hf_endpoint`` (https, or plain http with
    ``hf_insecure_http: true``; never with userinfo) and ``hf_token_file`` (a file on the
    deploying machine; never for a plain-http endpoint, which would carry it in the clear)."""
    allow_http = insecure_http(host, data)
    endpoint = data.get("hf_endpoint")
    if endpoint is not None:
        try:
            check_url(endpoint, allow_http=allow_http, opt_in=f"{INSECURE_HTTP}: true")
        except UrlError as exc:
            raise HostDataError(host, "hf_endpoint", str(exc), endpoint) from None
    token_file = data.get("hf_token_file")
    if token_file is not None:
        if not isinstance(token_file, str) or not token_file:
            raise HostDataError(host, "hf_token_file", "a file on this machine", token_file)
        check_text(token_file, host, "hf_token_file")
        if endpoint is not None and not may_carry_token(endpoint):
            raise HostDataError(
                host,
                "hf_token_file",
                f"no token file for a plain-http hf_endpoint ({endpoint}): the token would cross the network "
                "in the clear (an http mirror serves without one)",
                token_file,
            )


def rig_for(host: Any) -> Rig:
    """The validated rig data of a pyinfra host (``from pyinfra import host``), Hub model
    references resolved through the model lock; raises before any host changes when the
    data is bad or the lock is missing or stale."""
    data = {k: host.data.get(k) for k in COMPONENTS + HOST_KEYS if host.data.get(k) is not None}
    rig = parse_rig(host.name, data)
    check_model_supply(host.name, host.data)
    if rig.cluster is not None:
        rig = dataclasses.replace(rig, members=resolve_cluster(host, rig.cluster))
    if not rig.hub_models:
        return rig
    model_lock = host.data.get("model_lock")
    if model_lock is not None:
        if not isinstance(model_lock, (str, os.PathLike)) or not os.fspath(model_lock):
            raise HostDataError(host.name, "model_lock", "the model lock's path", model_lock)
        check_text(os.fspath(model_lock), host.name, "model_lock")
    path, inventory = find_model_lock({"model_lock": model_lock})
    if path is None:
        raise ModelLockError(
            f"host {host.name}: models: Hub models need the model lock: name it in the inventory's host "
            f'data ("model_lock": lockfile.lock_path_for(__file__), rigkit.models.lockfile) or set '
            f"${LOCK_ENV}; write it with: rigkit lock INVENTORY"
        )
    try:
        return resolve_model_refs(rig, lockfile.load(path, inventory=inventory), inventory)
    except LockError as exc:
        raise ModelLockError(f"host {host.name}: {exc}") from None
