"""Watch a server's /health while something happens to it, and measure its outages."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request


class HealthPoller(threading.Thread):
    """Polls ``url`` every ``interval`` seconds (bounded by ``limit``) until stopped.

    .. code:: python

        with HealthPoller("http://rig:8000/health") as poller:
            upgrade()
        print(poller.longest_outage())
    """

    def __init__(self, url: str, interval: float = 0.1, limit: float = 3600):
        super().__init__(daemon=True)
        self.url, self.interval, self.limit = url, interval, limit
        self.samples: list[tuple[float, bool]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as resp:
                    ok = resp.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            self.samples.append((time.monotonic(), ok))
            self._stop_event.wait(self.interval)

    def __enter__(self) -> HealthPoller:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join()

    @property
    def healthy_fraction(self) -> float:
        return sum(ok for _, ok in self.samples) / max(len(self.samples), 1)

    def longest_outage(self) -> float:
        """Seconds of the longest run of failed polls (up to the next good one or the end)."""
        longest, down_since = 0.0, None
        for at, ok in self.samples:
            if not ok and down_since is None:
                down_since = at
            elif ok and down_since is not None:
                longest, down_since = max(longest, at - down_since), None
        if down_since is not None:
            longest = max(longest, self.samples[-1][0] - down_since)
        return longest
