"""
What rigkit renders for a service's watchdog, whatever its engine: a oneshot unit that runs
one round of ``check_service.py --watchdog`` against the engine's manifest, and the timer
that starts it every ``watchdog_interval`` seconds. The host script reads the engine from the
manifest entry, so nothing here depends on it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from rigkit.host_paths import CHECK_TOOL
from rigkit.hostdata import Service
from rigkit.render.systemd import exec_line, templates


def render_watchdog(service: Service, manifest: str) -> tuple[str, str]:
    """The watchdog's oneshot unit and its timer for ``service``, whose entry is in the
    services manifest at ``manifest`` (llama.cpp's or vLLM's) on the host."""

    argv = [
        "/usr/bin/python3",
        CHECK_TOOL,
        manifest,
        "--watchdog",
        service.name,
        "--failures",
        str(service.watchdog_failures),
        "--timeout",
        str(service.watchdog_interval),
    ]
    model_dir = str(PurePosixPath(service.model).parent)
    unit = templates.get_template("rigkit-watchdog.service.j2").render(
        service=service,
        exec_start=exec_line(argv),
        # The load grace of a service without ready_timeout grows with its model's size: the
        # round must see the model's files to size it.
        model_under_home=model_dir.startswith(("/home/", "/root")),
    )
    timer = templates.get_template("rigkit-watchdog.timer.j2").render(service=service)
    return unit, timer
