"""
A host's services planned on its GPUs before any host changes: for each service the GPUs it
gets (its ``gpus``, else all), the model's shape (the lock's, or read from an upload on this
machine), the engine's plan (:mod:`rigkit.fit.llama_cpp`, :mod:`rigkit.fit.vllm`) and the
comparison. :func:`check_rig` refuses a host where a service does not fit, with its per-GPU
table and, for a layer split, the tensor split that would fit.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pyinfra.api.exceptions import PyinfraError

from rigkit.fit import llama_cpp, vllm
from rigkit.fit.budget import UNIFIED_MEMORY, GpuMemory, GpuNeed, gib, table
from rigkit.fit.shape import ModelShape, ShapeError, from_checkpoint_dir, from_gguf_files
from rigkit.hostdata import HubModel, Rig, Service, UploadModel
from rigkit.hostdata.llama_server import SHARD
from rigkit.hostdata.llama_server import options_of as llama_options
from rigkit.hostdata.rig import spans_cluster
from rigkit.hostdata.vllm import options_of as vllm_options

#: A figure the lead measured on the lent H200 (8B model, Q8_0 weights, llama-bench decode):
#: f16 K/V decodes 1.09x (4K) to 1.65x (64K) as fast as q8_0 K/V.
F16_KV_DECODE = "llama-bench decode with f16 K/V was 1.09x (4K) to 1.65x (64K) that with q8_0 on an H200"
#: How far a measurement may differ from the plan before rigkit warns.
TOLERANCE = 0.10


class FitError(PyinfraError):
    """A service does not fit its GPUs (the message holds the per-GPU table)."""


@dataclass
class Plan:
    service: str
    engine: str
    needs: list[GpuNeed] = field(default_factory=list)
    cpu_bytes: int = 0
    split: tuple[int, ...] | None = None  # a tensor split that fits, when the declared one does not
    notes: list[str] = field(default_factory=list)  # what memory allows where the inventory leaves a choice

    @property
    def planned(self) -> bool:
        return bool(self.needs)

    @property
    def fits(self) -> bool:
        return all(n.fits for n in self.needs)

    def lines(self) -> list[str]:
        if not self.planned:
            return [f"{self.service} ({self.engine}): not planned: " + "; ".join(self.notes)]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        out = [f"{self.service} ({self.engine}): {verdict} (GiB)", *table(self.needs)]
        if self.cpu_bytes:
            out.append(f"  CPU: {gib(self.cpu_bytes)} GiB (input embeddings, layers not offloaded)")
        if self.split is not None:
            out.append(
                f"  a tensor split that fits: tensor_split: {list(self.split)} (-ts {','.join(map(str, self.split))})"
            )
        out += [f"  note: {n}" for n in (self.notes if self.planned else [])]
        return out

    def to_data(self) -> dict:
        return {
            "service": self.service,
            "engine": self.engine,
            "fits": self.fits,
            "gpus": [n.to_data() for n in self.needs],
            **({"split": list(self.split)} if self.split else {}),
        }


def gpus_of(rig: Rig, found: Sequence | None) -> list[GpuMemory]:
    """The host's GPUs and their memory: read from nvidia-smi (``NvidiaGpus``), else declared
    in host data (``gpus.count`` and ``gpus.memory_mib``). A GB10 reports no memory: its
    unified memory (:data:`rigkit.fit.budget.UNIFIED_MEMORY`)."""
    out = []
    for g in found or ():
        if g.memory_mib is not None:
            out.append(GpuMemory(g.index, g.name, g.memory_mib << 20))
        elif g.name in UNIFIED_MEMORY:
            out.append(GpuMemory(g.index, g.name, UNIFIED_MEMORY[g.name], unified=True))
    if out:
        return out
    mem = rig.gpus.memory_mib
    if rig.gpus.count and mem:
        sizes = mem if len(mem) == rig.gpus.count else (mem[0],) * rig.gpus.count
        return [GpuMemory(i, "declared", int(m) << 20) for i, m in enumerate(sizes)]
    return []


def shape_for(rig: Rig, svc: Service) -> ModelShape | str:
    """The shape of the model a service loads, or why there is none."""
    for m in rig.hub_models:
        entry = rig.locks.get(m.ref.key)
        if entry is None:
            continue
        path = m.dest if svc.engine != "llama.cpp" else None
        try:
            path = path or entry.model_path(m.dest)
        except ValueError:
            continue
        if path == svc.model:
            if entry.shape is None:
                return f"the lock records no shape of {m.repo} (run: rigkit lock INVENTORY)"
            return entry.shape
    for up in rig.models:
        if isinstance(up, UploadModel) and (svc.model == up.dest or svc.model.startswith(up.dest.rstrip("/") + "/")):
            local = os.path.join(up.upload, os.path.relpath(svc.model, up.dest))
            try:
                if svc.engine == "llama.cpp":
                    shard = SHARD.search(local)
                    files = glob.glob(glob.escape(local[: shard.start()]) + "-*-of-*.gguf") if shard else [local]
                    return from_gguf_files(files, local)
                return from_checkpoint_dir(local, local)
            except ShapeError as exc:
                return f"the upload's headers: {exc}"
    if any(isinstance(m, HubModel) for m in rig.models) and not rig.locks:
        return "the models are not resolved through the lock"
    return f"{svc.model} is neither a locked Hub model nor an upload of this inventory"


def service_gpus(svc: Service, gpus: list[GpuMemory]) -> list[GpuMemory]:
    if not svc.gpus:
        return gpus
    by_index = {g.index: g for g in gpus}
    return [by_index[i] for i in svc.gpus if i in by_index]


def plan_service(rig: Rig, svc: Service, gpus: list[GpuMemory], taken: dict[int, int] | None = None) -> Plan:
    """One service's plan; ``taken``: per GPU index, what the host's other services hold."""
    plan = Plan(svc.name, svc.engine)
    if spans_cluster(svc) is not None:
        plan.notes.append("the service spans a cluster (its GPUs are on several hosts): not planned here")
        return plan
    if svc.engine == "llama.cpp" and rig.llama_cpp is not None and not rig.llama_cpp.cuda:
        plan.notes.append("llama.cpp is built without CUDA here: the model is in host memory")
        return plan
    if svc.router_models:
        plan.notes.append("a router loads its models one by one (models_max): each is planned as its own service")
    shape = shape_for(rig, svc)
    mine = service_gpus(svc, gpus)
    if isinstance(shape, str):
        plan.notes.append(shape)
        return plan
    if not mine:
        plan.notes.append("no GPU memory known (no nvidia-smi; declare gpus.count and gpus.memory_mib)")
        return plan
    planner = PLANNERS.get(svc.engine)
    if planner is None:
        plan.notes.append(f"no memory plan for engine {svc.engine}")
        return plan
    return planner(plan, svc, shape, mine, taken or {})


def plan_llama_service(
    plan: Plan, svc: Service, shape: ModelShape, gpus: list[GpuMemory], taken: dict[int, int]
) -> Plan:
    """A llama.cpp service's plan."""
    # What the services before it hold is not there for it: its GPUs are that much smaller
    # (for the suggestions too).
    left = [dataclasses.replace(g, total_bytes=g.total_bytes - taken.get(g.index, 0)) for g in gpus]
    if left != gpus:
        plan.notes.append("have: what the host's services planned before this one leave")
    return _plan_llama(plan, svc, shape, left)


def plan_vllm_service(
    plan: Plan, svc: Service, shape: ModelShape, gpus: list[GpuMemory], taken: dict[int, int]
) -> Plan:
    """A vLLM service's plan."""
    opts = vllm_options(svc)
    plan.needs = vllm.plan(
        shape,
        gpus,
        max_model_len=svc.ctx,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        tensor_parallel=opts.tensor_parallel,
        pipeline_parallel=opts.pipeline_parallel,
        max_num_batched_tokens=opts.max_num_batched_tokens,
    )
    if any(n.gpu.unified for n in plan.needs):
        plan.notes.append(
            "unified memory: the OS and the page cache share it, so gpu_memory_utilization x total "
            "must be free when vLLM starts (drop_page_cache helps)"
        )
    return _with_taken(plan, taken)


#: Each engine's memory model, by the engine's name in host data (an engine missing here is
#: not planned, and says so). The engines' deploy side does not plan: this component does.
PLANNERS = {"llama.cpp": plan_llama_service, "vllm": plan_vllm_service}


def llama_flags(svc: Service) -> dict:
    opts = llama_options(svc)
    return {
        "ctx": svc.ctx,
        "parallel": opts.parallel,
        "cache_type_k": opts.cache_type_k,
        "cache_type_v": opts.cache_type_v,
        "n_gpu_layers": opts.n_gpu_layers,
        "split_mode": opts.split_mode,
        "tensor_split": opts.tensor_split,
        "flash_attn": opts.flash_attn != "off",  # llama-server's default is auto: on where supported
    }


def _with_taken(plan: Plan, taken: dict[int, int]) -> Plan:
    for n in plan.needs:
        n.taken = taken.get(n.gpu.index, 0)
    if any(n.taken for n in plan.needs):
        plan.notes.append("have: what the host's services planned before this one leave")
    return plan


def _plan_llama(plan: Plan, svc: Service, shape: ModelShape, gpus: list[GpuMemory]) -> Plan:
    flags = llama_flags(svc)
    if any(a in ("-ot", "--override-tensor", "--cpu-moe", "--n-cpu-moe", "-cmoe", "-ncmoe") for a in svc.extra_args):
        plan.notes.append("extra_args place tensors on the CPU (-ot/--cpu-moe): the plan counts them on the GPUs")
    if flags["split_mode"] == "row":
        plan.notes.append("split_mode row splits each matrix across the GPUs: planned as a layer split")
        flags["split_mode"] = "layer"
    plan.needs, plan.cpu_bytes = llama_cpp.plan(shape, gpus, **flags)
    if not plan.fits and flags["split_mode"] == "layer" and len(gpus) > 1:
        plan.split = llama_cpp.split_that_fits(shape, gpus, **{k: v for k, v in flags.items() if k != "tensor_split"})
    if not plan.fits and (flags["cache_type_k"], flags["cache_type_v"]) == ("f16", "f16"):
        q8 = {**flags, "cache_type_k": "q8_0", "cache_type_v": "q8_0"}
        if all(n.fits for n in llama_cpp.plan(shape, gpus, **q8)[0]):
            plan.notes.append("q8_0 K/V (cache_type_k/cache_type_v: q8_0) would fit at this context")
    if plan.fits and (flags["cache_type_k"], flags["cache_type_v"]) != ("f16", "f16"):
        f16 = {**flags, "cache_type_k": "f16", "cache_type_v": "f16"}
        if all(n.fits for n in llama_cpp.plan(shape, gpus, **f16)[0]):
            plan.notes.append(
                f"room for f16 K/V at ctx {svc.ctx} (cache_type_k/cache_type_v: f16; declared "
                f"{flags['cache_type_k']}/{flags['cache_type_v']} is kept): {F16_KV_DECODE}"
            )
    return plan


def plan_rig(rig: Rig, found: Sequence | None, only: str | None = None) -> list[Plan]:
    """A plan per enabled service this host serves (``only``: one of them); services that
    share a GPU each get what the ones before them leave."""
    gpus = gpus_of(rig, found)
    taken: dict[int, int] = {}
    plans = []
    for svc in rig.enabled_services:
        if not rig.serves(svc):
            continue
        plan = plan_service(rig, svc, gpus, taken)
        for n in plan.needs:
            taken[n.gpu.index] = taken.get(n.gpu.index, 0) + n.holds
        if only is None or svc.name == only:
            plans.append(plan)
    return plans


def on_gpus(rig: Rig) -> bool:
    """Whether any service of the host loads onto GPUs (a CUDA llama.cpp build, a container
    engine): only then are the GPUs read to plan against."""
    cuda = rig.llama_cpp is not None and rig.llama_cpp.cuda
    return any(rig.serves(s) and (s.engine != "llama.cpp" or cuda) for s in rig.enabled_services)


def check_rig(rig: Rig, found: Sequence | None) -> list[Plan]:
    """The host's plans; :class:`FitError` naming each service that does not fit, its table
    and the split that would."""
    plans = plan_rig(rig, found)
    bad = [p for p in plans if p.planned and not p.fits]
    if bad:
        lines = [f"host {rig.host}: services do not fit their GPUs' memory (rigkit plan INVENTORY shows it):"]
        for p in bad:
            short = ", ".join(f"GPU {n.gpu.index} short {gib(n.need - n.have)} GiB" for n in p.needs if not n.fits)
            lines += [f"{p.service}: {short}", *p.lines()]
        raise FitError("\n".join(lines))
    return plans


def model_label(svc: Service) -> str:
    return PurePosixPath(svc.model).name


def replace_split(svc: Service, split: Sequence[float]) -> Service:
    """The service with another tensor split (what a test of the suggestion plans)."""
    return dataclasses.replace(svc, options=dataclasses.replace(llama_options(svc), tensor_split=tuple(split)))
