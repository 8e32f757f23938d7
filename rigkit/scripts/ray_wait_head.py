"""Wait until the Ray head answers on its port (a TCP connect), at most TIMEOUT seconds.

    ray_wait_head.py HOST PORT TIMEOUT

Runs on a worker node before ``ray start --address``: standard library only."""

from __future__ import annotations

import socket
import sys
import time


def main(argv: list[str]) -> int:
    host, port, timeout = argv[0], int(argv[1]), float(argv[2])
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                print(f"ray head {host}:{port} answers", flush=True)
                return 0
        except OSError as exc:
            if time.monotonic() >= deadline:
                print(f"ray head {host}:{port} did not answer within {timeout:g} s: {exc}", file=sys.stderr)
                return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
