"""The ``rigkit`` command: sandbox hosts, model locks, the model mirror, host status."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _sandbox(args: argparse.Namespace) -> int:
    from rigkit import sandbox

    try:
        if args.action == "up":
            started = time.monotonic()
            sb = sandbox.up(hosts=args.hosts, boot_timeout=args.boot_timeout, sources=args.sources)
            for host in sb.hosts:
                print(f"{host.name}\t{host.address}")
            print(
                f"sandbox up: {len(sb.hosts)} host(s) in {time.monotonic() - started:.1f}s; "
                f"run: pyinfra -y inventories/sandbox.py deploys/sample.py",
                file=sys.stderr,
            )
        elif args.action == "reboot":
            host = sandbox.reboot(args.host, boot_timeout=args.boot_timeout)
            print(f"{host.name}\t{host.address}")
        elif args.action == "down":
            removed = sandbox.down()
            print(f"sandbox down: removed {len(removed)} host(s)", file=sys.stderr)
        else:
            info = sandbox.status()
            if args.json:
                print(json.dumps(info, indent=2))
            elif not info["hosts"]:
                print("no sandbox hosts (start them with: sudo rigkit sandbox up --hosts 2)")
            else:
                for h in info["hosts"]:
                    state = "up" if h["ssh"] else ("booting" if h["running"] else "stopped")
                    print(f"{h['name']}\t{h['address']}\t{state}")
                for name, svc in info["services"].items():
                    print(f"{name}\tpid {svc['pid']}\t{'running' if svc['running'] else 'stopped'}")
    except sandbox.SandboxError as exc:
        print(f"rigkit sandbox {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _lock(argv: list[str]) -> int:
    from rigkit.models import lock_command

    return lock_command.lock_main(argv)


def _mirror(argv: list[str]) -> int:
    from rigkit.models import mirror

    return mirror.mirror_main(argv)


def _checkpoint(argv: list[str]) -> int:
    from rigkit.checkpoints import command

    return command.main(argv)


def _cache(argv: list[str]) -> int:
    from rigkit import build_cache

    return build_cache.main(argv)


def _status(argv: list[str]) -> int:
    from rigkit import status

    return status.main(argv)


def _plan(argv: list[str]) -> int:
    from rigkit.fit import command

    return command.main(argv)


def _bench(argv: list[str]) -> int:
    from rigkit.bench import command

    return command.main(argv)


# Commands with their own argument parsers: everything after the command name goes to them.
PASS_THROUGH = {
    "lock": _lock,
    "mirror": _mirror,
    "cache": _cache,
    "status": _status,
    "bench": _bench,
    "checkpoint": _checkpoint,
    "plan": _plan,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rigkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sb = sub.add_parser("sandbox", help="local target hosts (systemd-nspawn, one netns each)")
    sb_sub = sb.add_subparsers(dest="action", required=True)
    sb_up = sb_sub.add_parser("up", help="start N hosts (idempotent)")
    sb_up.add_argument("--hosts", type=int, default=2)
    sb_up.add_argument("--boot-timeout", type=float, default=60.0, help="seconds a host may take to answer SSH")
    sb_up.add_argument(
        "--no-sources",
        dest="sources",
        action="store_false",
        help="skip the local llama.cpp mirror and tiny model (sample deploy only)",
    )
    sb_st = sb_sub.add_parser("status", help="list hosts and services")
    sb_st.add_argument("--json", action="store_true")
    sb_rb = sb_sub.add_parser("reboot", help="restart a host keeping its disk (orderly shutdown, boot again)")
    sb_rb.add_argument("host", help="e.g. sandbox-1")
    sb_rb.add_argument("--boot-timeout", type=float, default=60.0, help="seconds the host may take to answer SSH again")
    sb_sub.add_parser("down", help="stop and remove everything the sandbox created")
    sb.set_defaults(func=_sandbox)

    for name, help_text in (
        ("lock", "pin an inventory's Hub models to commits and sha256s (rigkit lock INVENTORY [-h])"),
        ("mirror", "serve downloaded models over the Hub's download API (rigkit mirror serve DIR [-h])"),
        (
            "cache",
            "serve the fleet's llama.cpp build cache: one compile per build identity (rigkit cache serve DIR [-h])",
        ),
        (
            "checkpoint",
            "derived checkpoints from local directories (rigkit checkpoint hybrid-fp8 --base DIR --fp8 DIR "
            "--out DIR | mtp-index --source DIR --target DIR [-h])",
        ),
        (
            "plan",
            "per host and service: each GPU's memory planned from the model's headers, "
            "without deploying (rigkit plan INVENTORY [--service NAME] [-h])",
        ),
        ("status", "per host: llama.cpp build, services active/healthy, models (rigkit status INVENTORY)"),
        (
            "bench",
            "context sweep: prefill, decode, TTFT, power, tokens/kWh (rigkit bench --url URL | "
            "INVENTORY | compare A.json B.json [-h])",
        ),
    ):
        sub.add_parser(name, help=help_text, add_help=False)  # listed in --help; main() runs them
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASS_THROUGH:  # options too (argparse would claim --help, --check)
            return PASS_THROUGH[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`rigkit status --json | head`): stop quietly, as cat does. Point
        # stdout at /dev/null so the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe


if __name__ == "__main__":
    sys.exit(main())
