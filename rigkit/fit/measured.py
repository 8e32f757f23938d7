"""
After the load: the plan against what the GPUs hold, in the host's state.

Once an engine's services are verified (after a (re)start), the serve step writes the
engine's plan (:data:`rigkit.host_paths.MEMORY_DIR` ``/<engine>.plan.json``: per service and
GPU the bytes it should hold) and reads each GPU's used memory from nvidia-smi into
``<engine>.measured.csv``. ``rigkit status`` reads both (:class:`MemoryRecord`, a fact) and
shows per GPU planned against measured, with a warning where they differ by more than
:data:`rigkit.fit.plan.TOLERANCE`. What a GPU is planned to hold is a llama.cpp service's
need and a vLLM service's budget (vLLM takes all of ``gpu_memory_utilization`` x total).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pyinfra.api import FactBase, QuoteString, StringCommand, operation

from rigkit.fit.plan import TOLERANCE, Plan
from rigkit.host_paths import MEMORY_DIR

USED_QUERY = ("nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits")
MIB = 1 << 20


def plan_path(engine: str) -> str:
    return f"{MEMORY_DIR}/{engine}.plan.json"


def measured_path(engine: str) -> str:
    return f"{MEMORY_DIR}/{engine}.measured.csv"


def expected(plans: Sequence[Plan]) -> dict:
    """What the plan file holds: per service, per GPU index, the bytes it should hold."""
    return {
        "services": {
            p.service: {
                str(n.gpu.index): (n.budget if p.engine == "vllm" and n.budget is not None else n.need) for n in p.needs
            }
            for p in plans
            if p.planned
        }
    }


def plan_content(plans: Sequence[Plan]) -> str:
    return json.dumps(expected(plans), indent=2, sort_keys=True) + "\n"


@operation(is_idempotent=False)
def measure(engine: str):
    """
    Read each GPU's used memory (nvidia-smi) into the engine's measured file, beside its
    plan; nothing where the host has no nvidia-smi.

    + engine: the engine whose services were just verified

    .. code:: python

        measured.measure(engine="llama.cpp", _if=verified)
    """
    path = measured_path(engine)
    yield StringCommand(
        "!",
        "command -v nvidia-smi >/dev/null",
        "||",
        "{",
        *USED_QUERY,
        ">",
        QuoteString(path + ".tmp"),
        "&&",
        "mv",
        QuoteString(path + ".tmp"),
        QuoteString(path),
        ";",
        "}",
    )


class MemoryRecord(FactBase[dict]):
    """
    The engines' plans and measurements in the host's state, as written after verification.

    .. code:: python

        {"llama.cpp": {"plan": {"services": {"qwen": {"0": 17800000000}}}, "measured": {"0": 17520}}}
    """

    def command(self) -> StringCommand:
        # MEMORY_DIR is rigkit's own constant path (no shell syntax): the globs stay unquoted.
        # A file may lack its last newline: each marker starts a line of its own.
        return StringCommand(
            f"for f in {MEMORY_DIR}/*.plan.json {MEMORY_DIR}/*.measured.csv; do "
            '[ -f "$f" ] && echo && echo "== $f" && cat "$f"; done; true'
        )

    def process(self, output: list[str]) -> dict:
        return parse_record(output)


def parse_record(output: list[str]) -> dict:
    """The fact's output read whole; what does not parse is left out (a state file written
    by hand is not a reason for status to fail)."""
    out: dict = {}
    current: tuple[str, str] | None = None
    chunks: dict[tuple[str, str], list[str]] = {}
    for line in output:
        if line.startswith("== "):
            name = line[3:].rsplit("/", 1)[-1]
            for suffix, kind in ((".plan.json", "plan"), (".measured.csv", "measured")):
                if name.endswith(suffix):
                    current = (name[: -len(suffix)], kind)
                    chunks[current] = []
            continue
        if current is not None:
            chunks[current].append(line)
    for (engine, kind), lines in chunks.items():
        try:
            if kind == "plan":
                value: object = json.loads("\n".join(lines))
            else:
                value = {str(int(i)): int(float(m)) for i, m in (line.split(",") for line in lines if line.strip())}
        except ValueError:
            continue
        out.setdefault(engine, {})[kind] = value
    return out


def compare(record: dict) -> tuple[list[str], list[str]]:
    """(lines per GPU: planned, measured; warnings where they differ by more than
    :data:`TOLERANCE`)."""
    planned: dict[str, int] = {}
    measured: dict[str, int] = {}
    for entry in record.values():
        for per_gpu in (entry.get("plan") or {}).get("services", {}).values():
            for gpu, n in per_gpu.items():
                planned[gpu] = planned.get(gpu, 0) + int(n)
        for gpu, mib in (entry.get("measured") or {}).items():
            measured[gpu] = max(measured.get(gpu, 0), mib * MIB)
    lines, warnings = [], []
    for gpu in sorted(planned, key=int):
        plan = planned[gpu]
        if gpu not in measured:
            lines.append(f"  memory GPU {gpu}: planned {plan / 2**30:.2f} GiB, not measured")
            continue
        got = measured[gpu]
        diff = (got - plan) / plan if plan else 0.0
        lines.append(
            f"  memory GPU {gpu}: planned {plan / 2**30:.2f} GiB, measured {got / 2**30:.2f} GiB ({diff:+.0%})"
        )
        if abs(diff) > TOLERANCE:
            warnings.append(
                f"GPU {gpu}: measured {got / 2**30:.2f} GiB after the load, planned {plan / 2**30:.2f} GiB "
                f"({diff:+.0%}, more than {TOLERANCE:.0%})"
            )
    return lines, warnings
