#!/usr/bin/env python3
"""
What ``rigkit bench`` runs on the server's host (standard library only; sent over the SSH
connection pyinfra uses as ``python3 - MODE ...`` with this file on stdin, or run locally).

    sample [INTERVAL_S] [GPU_INDEXES]   power log until killed: one JSON header line
                                        ({"source": "nvml-energy" | "nvidia-smi" | null, ...}),
                                        then "<unix time> <joules since start> <watts>" lines
    probe PORT [UNIT] [MODEL]           JSON: GPUs, driver, power limits, the argv of the
                                        process serving PORT, its llama.cpp build.json and
                                        --version, the model's files and GGUF tensor sizes

Energy comes from NVML's counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver
loaded; Volta and newer), summed over the GPUs, or where that is missing, from integrating
``nvidia-smi`` power draw. Nothing here changes a GPU setting: NVML is opened to read only.
Without a GPU the header says source null and no lines follow.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time

# --- power ---------------------------------------------------------------------------------


class Nvml:
    """NVML through ctypes: energy counter and power usage, read only."""

    def __init__(self, indexes: list[int] | None):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise OSError("nvmlInit failed")
        count = ctypes.c_uint()
        self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
        self.indexes = [i for i in range(count.value) if not indexes or i in indexes]
        self.handles = []
        for i in self.indexes:
            h = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)) != 0:
                raise OSError(f"no NVML handle for GPU {i}")
            self.handles.append(h)
        if not self.handles:
            raise OSError("no GPUs")
        self.energy()  # raises where the counter is not supported

    def energy(self) -> float:
        total = 0
        for h in self.handles:
            mj = ctypes.c_ulonglong()
            rc = self.lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(mj))
            if rc != 0:
                raise OSError(f"nvmlDeviceGetTotalEnergyConsumption returned {rc}")
            total += mj.value
        return total / 1000.0

    def power(self) -> float | None:
        total = 0
        for h in self.handles:
            mw = ctypes.c_uint()
            if self.lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(mw)) != 0:
                return None
            total += mw.value
        return total / 1000.0


def sample(interval: float, indexes: list[int] | None) -> None:
    out = sys.stdout
    try:
        nvml = Nvml(indexes)
    except (OSError, AttributeError) as exc:
        nvml = None
        why = str(exc)
    if nvml:
        out.write(json.dumps({"source": "nvml-energy", "gpus": nvml.indexes}) + "\n")
        out.flush()
        start = nvml.energy()
        while True:
            watts = nvml.power()
            out.write(f"{time.time():.4f} {nvml.energy() - start:.3f} {'nan' if watts is None else f'{watts:.2f}'}\n")
            out.flush()
            time.sleep(interval)
    query = ["nvidia-smi", "--query-gpu=index,power.draw", "--format=csv,noheader,nounits"]
    try:
        subprocess.run(query, capture_output=True, check=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        out.write(json.dumps({"source": None, "why": f"no NVML energy counter ({why}) and no nvidia-smi"}) + "\n")
        out.flush()
        return
    proc = subprocess.Popen(query + [f"-lms={max(20, int(interval * 1000))}"], stdout=subprocess.PIPE, text=True)
    out.write(json.dumps({"source": "nvidia-smi", "why": why, "gpus": indexes}) + "\n")
    out.flush()
    joules, last_t, last_idx = 0.0, None, None
    batch: dict[int, float] = {}
    for line in proc.stdout or ():
        try:
            first, second = (s.strip() for s in line.split(","))
            idx, watts = int(first), float(second)
        except ValueError:
            continue
        if indexes and idx not in indexes:
            continue
        if idx in batch or (last_idx is not None and idx < last_idx):  # a new round of GPUs
            now, total = time.time(), sum(batch.values())
            if last_t is not None:
                joules += total * (now - last_t)
            last_t = now
            out.write(f"{now:.4f} {joules:.3f} {total:.2f}\n")
            out.flush()
            batch = {}
        batch[idx] = watts
        last_idx = idx


# --- probe ---------------------------------------------------------------------------------


def sh(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def gpus() -> list[dict]:
    fields = [
        "index",
        "name",
        "uuid",
        "driver_version",
        "memory.total",
        "power.limit",
        "power.default_limit",
        "power.max_limit",
        "clocks.max.sm",
        "clocks.max.mem",
        "persistence_mode",
        "compute_cap",
    ]
    out = sh(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if out is None:  # an older nvidia-smi that lacks a field: the ones every version has
        fields = ["index", "name", "driver_version", "memory.total", "power.limit"]
        out = sh(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    rows = []
    for line in (out or "").splitlines():
        rows.append(dict(zip(fields, (v.strip() for v in line.split(",")))))
    return rows


def listening_pid(port: int) -> int | None:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return int(fd.split("/")[2])
    return None


def process(pid: int, run_version: bool = True) -> dict:
    """What ``pid`` runs: argv, binary, the llama.cpp build.json beside it, and with
    ``run_version`` its ``--version`` (only for the process systemd started for the unit:
    whatever else listens on a port may be any local user's program)."""
    info: dict = {"pid": pid}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            info["argv"] = f.read().decode().split("\0")[:-1]
        info["exe"] = os.readlink(f"/proc/{pid}/exe")
    except OSError as exc:
        info["error"] = str(exc)
    exe = info.get("exe") or (info.get("argv") or [""])[0]
    if exe:
        build_json = os.path.join(os.path.dirname(os.path.dirname(exe)), "build.json")
        try:
            with open(build_json) as f:
                info["build"] = json.load(f)
        except (OSError, ValueError):
            pass
        version = (
            subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
            if run_version and os.path.exists(exe)
            else None
        )
        if version is not None:
            info["version"] = (version.stdout + version.stderr).strip()[-2000:]
    return info


GGML_TYPES = {  # type id: (block size in elements, bytes per block)
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
}


def gguf_read(path: str) -> dict:
    """Metadata (scalars and short arrays) and tensor sizes of one GGUF file."""
    with open(path, "rb") as f:

        def rd(fmt):
            size = struct.calcsize(fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")

        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def value(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("I"), rd("Q")
                if et in scalar and n > 64:  # skip big arrays (vocabularies)
                    f.seek(struct.calcsize(scalar[et]) * n, 1)
                    return None
                items = [value(et) for _ in range(n)]
                return items if n <= 64 else None
            raise ValueError(f"GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version, n_tensors, n_kv = rd("I"), rd("Q"), rd("Q")
        meta = {}
        for _ in range(n_kv):
            key = rstr()
            v = value(rd("I"))
            if v is not None:
                meta[key] = v
        tensors = []
        for _ in range(n_tensors):
            name = rstr()
            dims = [rd("Q") for _ in range(rd("I"))]
            ttype = rd("I")
            rd("Q")  # offset
            n = 1
            for d in dims:
                n *= d
            block, nbytes = GGML_TYPES.get(ttype, (1, 0))
            tensors.append(
                {"name": name, "dims": dims, "type": ttype, "bytes": n // block * nbytes if nbytes else None}
            )
    return {"version": version, "meta": meta, "tensors": tensors}


def model_files(model: str) -> list[str]:
    """The model file and, for a split GGUF (-00001-of-0000N), all its shards."""
    import re

    m = re.search(r"-(\d{5})-of-(\d{5})\.gguf$", model)
    if not m:
        return [model]
    total = int(m.group(2))
    return [model[: m.start()] + f"-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def model_info(model: str) -> dict:
    files: list[dict] = []
    meta: dict = {}
    tensors: list[dict] = []
    for path in model_files(model):
        try:
            files.append({"path": path, "bytes": os.path.getsize(path)})
            info = gguf_read(path)
        except (OSError, ValueError, struct.error) as exc:
            files.append({"path": path, "error": str(exc)})
            continue
        meta = meta or info["meta"]
        tensors += info["tensors"]
    return {"files": files, "meta": meta, "tensors": tensors}


def probe(port: int, unit: str | None, model: str | None) -> dict:
    out: dict = {
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "gpus": gpus(),
        "cpu_count": os.cpu_count(),
    }
    if unit:
        # The unit's main process as systemd knows it, never a port's listener: a local user
        # who binds the port first would otherwise get a binary of theirs run by us.
        main = sh(["systemctl", "show", "-p", "MainPID", "--value", unit])
        pid = int(main) if main and main.isdigit() and int(main) > 0 else None
        out["unit"] = unit
        trusted = True
    else:
        pid, trusted = listening_pid(port), False
    if pid:
        out["server"] = process(pid, run_version=trusted)
        argv = out["server"].get("argv") or []
        if not model and "-m" in argv:
            model = argv[argv.index("-m") + 1]
    if model:
        out["model"] = model_info(model)
    return out


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if mode == "sample":
        interval = float(argv[1]) if len(argv) > 1 else 0.05
        indexes = [int(i) for i in argv[2].split(",") if i] if len(argv) > 2 else None
        try:
            sample(interval, indexes)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        return 0
    if mode == "probe":
        print(
            json.dumps(
                probe(
                    int(argv[1]),
                    argv[2] if len(argv) > 2 and argv[2] else None,
                    argv[3] if len(argv) > 3 and argv[3] else None,
                )
            )
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
