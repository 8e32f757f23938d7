"""
GPU power and energy on the server's host, sampled while the sweep runs.

A sampler (``hostside.py sample``) runs on the host for the whole sweep: locally, or over
the SSH connection pyinfra opened to the host. Each line it prints is stamped with this
machine's clock when it arrives (a few ms after the host read it); a phase's energy is the
cumulative energy interpolated at the phase's start and end, so a phase gets joules and
mean watts however short it is (NVML's counter itself moves every 20-100 ms: phases
shorter than that are flagged ``coarse``). Without a GPU every figure is None ("n/a"),
never zero.
"""

from __future__ import annotations

import bisect
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HOSTSIDE = Path(__file__).with_name("hostside.py")


class Runner:
    """Runs hostside.py on the server's host."""

    where = "?"

    def run(self, args: list[str], timeout: float = 120) -> str:
        raise NotImplementedError

    def stream(self, args: list[str]) -> tuple[Any, Any]:
        """(an iterator of output lines, a stop() callable)"""
        raise NotImplementedError


class LocalRunner(Runner):
    where = "local"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def run(self, args: list[str], timeout: float = 120) -> str:
        res = subprocess.run([self.python, str(HOSTSIDE), *args], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"hostside {' '.join(args)} exited {res.returncode}: {res.stderr[-500:]}")
        return res.stdout

    def stream(self, args: list[str]):
        proc = subprocess.Popen([self.python, "-u", str(HOSTSIDE), *args], stdout=subprocess.PIPE, text=True)

        def stop():
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()

        assert proc.stdout is not None
        return iter(proc.stdout.readline, ""), stop


class SSHRunner(Runner):
    """Over the paramiko client of a connected pyinfra SSH host: ``python3 - ARGS`` with
    hostside.py on stdin."""

    def __init__(self, client, name: str = "ssh"):
        self.client = client
        self.where = name

    def _exec(self, args: list[str], timeout: float | None):
        cmd = "python3 -u - " + " ".join(shlex.quote(a) for a in args)
        stdin, stdout, stderr = self.client.exec_command(cmd, timeout=timeout)
        stdin.write(HOSTSIDE.read_text())
        stdin.channel.shutdown_write()
        return stdout, stderr

    def run(self, args: list[str], timeout: float = 120) -> str:
        stdout, stderr = self._exec(args, timeout)
        out = stdout.read().decode()
        if stdout.channel.recv_exit_status() != 0:
            raise RuntimeError(f"hostside {' '.join(args)} on {self.where}: {stderr.read().decode()[-500:]}")
        return out

    def stream(self, args: list[str]):
        stdout, _ = self._exec(args, None)

        def lines():
            yield from stdout

        return lines(), lambda: stdout.channel.close()


class PowerMonitor:
    """The power log of one sweep: start(), then joules/watts between two monotonic times."""

    def __init__(self, runner: Runner | None, interval: float = 0.05, gpus: list[int] | None = None):
        self.runner = runner
        self.interval = interval
        self.gpus = gpus
        self.source: str | None = None
        self.header: dict[str, Any] = {}
        self.t: list[float] = []  # monotonic arrival times
        self.joules: list[float] = []
        self.watts: list[float] = []
        self._stop = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, wait: float = 15.0) -> PowerMonitor:
        if self.runner is None:
            self.header = {"source": None, "why": "no host to sample (a bare --url)"}
            return self
        args = ["sample", str(self.interval)] + ([",".join(map(str, self.gpus))] if self.gpus else [])
        try:
            lines, self._stop = self.runner.stream(args)
        except Exception as exc:  # no python3 there, SSH refused: the sweep goes on without
            self.header = {"source": None, "why": f"sampler did not start: {exc}"}
            return self
        self._thread = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._thread.start()
        self._ready.wait(wait)
        if self.source and not self._has_samples(wait):
            self.header["why"] = "the sampler printed no samples"
        return self

    def _has_samples(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while len(self.t) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.t) >= 2

    def _read(self, lines) -> None:
        try:
            for line in lines:
                now = time.monotonic()
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    self.header = json.loads(line)
                    self.source = self.header.get("source")
                    self._ready.set()
                    continue
                try:
                    _, j, w = line.split()
                    self.t.append(now)
                    self.joules.append(float(j))
                    self.watts.append(float(w))
                except ValueError:
                    continue
        except Exception as exc:  # the connection went away
            self.header.setdefault("why", f"sampler stopped: {exc}")
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._stop:
            try:
                self._stop()
            except Exception:
                pass
            self._stop = None

    @property
    def available(self) -> bool:
        return bool(self.source) and len(self.t) >= 2

    def _energy_at(self, t: float) -> float | None:
        if not self.t or t < self.t[0] or t > self.t[-1]:
            return None
        i = bisect.bisect_left(self.t, t)
        if i == 0:
            return self.joules[0]
        t0, t1 = self.t[i - 1], self.t[i]
        j0, j1 = self.joules[i - 1], self.joules[i]
        return j0 + (j1 - j0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)

    def wait_past(self, t: float, timeout: float = 2.0) -> None:
        """Wait until a sample later than ``t`` has arrived (so t can be interpolated)."""
        deadline = time.monotonic() + timeout
        while self.available and self.t[-1] < t and time.monotonic() < deadline:
            time.sleep(0.01)

    def phase(self, t0: float, t1: float) -> dict[str, Any] | None:
        """Joules and mean watts between two monotonic times; None without a power source."""
        if not self.available or t1 <= t0:
            return None
        self.wait_past(t1)
        e0, e1 = self._energy_at(t0), self._energy_at(t1)
        if e0 is None or e1 is None:
            return None
        dt = t1 - t0
        inside = sum(1 for t in self.t if t0 <= t <= t1)
        return {"joules": e1 - e0, "watts": (e1 - e0) / dt, "seconds": dt, "samples": inside, "coarse": dt < 0.2}

    def log(self) -> dict[str, Any]:
        """Everything sampled, for the JSON (times relative to the first sample)."""
        t0 = self.t[0] if self.t else 0.0
        return {
            "header": self.header,
            "interval_s": self.interval,
            "t": [round(t - t0, 4) for t in self.t],
            "joules": self.joules,
            "watts": self.watts,
            "t0_monotonic": t0,
        }
