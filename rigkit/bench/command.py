"""
``rigkit bench``: the seeds' context sweep against an OpenAI-compatible server.

    rigkit bench --url http://HOST:PORT [--local] [options]     one server
    rigkit bench INVENTORY [--service NAME] [--limit HOST] ...  each enabled service of an
                                                                inventory, per host
    rigkit bench compare A.json B.json [--out DIR]              ratios per depth, one chart
    rigkit bench report A.json [--out DIR]                      tables and charts again

With an inventory, rigkit connects to each host the way pyinfra does and, over that
connection, samples GPU power during the sweep and reads what produced the figures (the
server's argv, its llama.cpp build, GPUs, driver, power limits, the model's tensor sizes
for the roofline). With ``--url`` alone only what the server says over HTTP is known and
power is "n/a"; ``--local`` says the server runs on this machine, so all of it is read here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from rigkit.bench import report
from rigkit.bench.client import Client, ServerError
from rigkit.bench.power import LocalRunner, PowerMonitor, Runner, SSHRunner
from rigkit.bench.provenance import collect
from rigkit.bench.roofline import roofline
from rigkit.bench.sweep import SEED_DEPTHS, BenchError, SweepConfig, run_sweep


def parse_depths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(k?)", part)
        if not m:
            raise argparse.ArgumentTypeError(f"not a depth: {part!r} (e.g. 512, 4k, 128K)")
        out.append(int(float(m.group(1)) * (1024 if m.group(2) else 1)))
    return out


def _argv_value(argv: list[str], *flags: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a in flags:
            return argv[i + 1]
    return None


def bench_one(
    client: Client,
    cfg: SweepConfig,
    out: Path,
    runner: Runner | None,
    gpus: list[int] | None,
    args: argparse.Namespace,
    rig=None,
    service=None,
    host: str | None = None,
) -> dict[str, Any]:
    """Probe, sample power, sweep, write everything under ``out``. Raises BenchError."""
    out.mkdir(parents=True, exist_ok=True)
    probe: dict[str, Any] = {}
    m = re.search(r":(\d+)", client.url.split("//", 1)[-1])
    port = service.port if service is not None else int(m.group(1)) if m else 80
    if runner is not None:
        try:
            probe = json.loads(
                runner.run(
                    [
                        "probe",
                        str(port),
                        service.unit if service else "",
                        service.model if service else (args.model_file or ""),
                    ],
                    timeout=300,
                )
            )
        except Exception as exc:
            probe = {"error": f"probe on {runner.where} failed: {exc}"}
            print(f"rigkit bench: {probe['error']}", file=sys.stderr)
    elif getattr(args, "model_file", None):
        from rigkit.bench.hostside import model_info

        probe = {"model": model_info(args.model_file)}
    client.engine()
    prov = collect(client, probe, rig=rig, service=service, host=host)
    argv = prov.get("argv") or []
    gpu_rows = prov["gpus"]
    if gpus:
        gpu_rows = [g for g in gpu_rows if str(g.get("index")) in {str(i) for i in gpus}]
    roof = roofline(
        probe.get("model"),
        [g.get("name", "") for g in gpu_rows],
        split_mode=(_opts(service).split_mode if service else _argv_value(argv, "--split-mode", "-sm")) or "layer",
        type_k=(_opts(service).cache_type_k if service else _argv_value(argv, "-ctk", "--cache-type-k")) or "f16",
        type_v=(_opts(service).cache_type_v if service else _argv_value(argv, "-ctv", "--cache-type-v")) or "f16",
        measured_bandwidth=args.bandwidth * 1e9 if args.bandwidth else None,
    )
    power = PowerMonitor(None if args.no_power else runner, interval=args.power_interval, gpus=gpus).start()
    src = power.header.get("source")
    print(
        f"rigkit bench: power: {src or 'n/a'}"
        + (f" ({power.header.get('why')})" if not src and power.header.get("why") else ""),
        file=sys.stderr,
        flush=True,
    )

    def save(result: dict[str, Any]) -> None:
        result["roofline"] = roof
        report.write_json(result, out / "bench.json")

    try:
        result = run_sweep(client, cfg, power=power, provenance=prov, save=save)
    except BenchError as exc:
        if exc.result is not None:
            exc.result["roofline"] = roof
            files = report.write_all(exc.result, out)
            exc.args = (f"{exc.args[0]}; partial results in {files['json']} and {files['md']}",)
        raise
    finally:
        power.stop()
    result["roofline"] = roof
    files = report.write_all(result, out)
    print(report.markdown(result))
    print("rigkit bench: wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    return result


def _config(args: argparse.Namespace) -> SweepConfig:
    return SweepConfig(
        depths=args.depths or list(SEED_DEPTHS),
        runs=args.runs,
        gen_tokens=args.gen,
        chat=args.chat,
        seed=args.seed,
        warmup=not args.no_warmup,
    )


def _read_key(path: str | None) -> str | None:
    if not path:
        return None
    return Path(path).expanduser().read_text().strip()


def run_url(args: argparse.Namespace) -> int:
    client = Client(args.url, api_key=_read_key(args.api_key_file), model=args.model)
    out = Path(args.out or f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    runner = LocalRunner() if args.local else None
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    try:
        bench_one(client, _config(args), out, runner, gpus, args)
    except (BenchError, ServerError) as exc:
        print(f"rigkit bench: {exc}", file=sys.stderr)
        return 1
    return 0


def _host_runner(host) -> Runner:
    client = getattr(host.connector, "client", None)
    if client is not None:
        return SSHRunner(client, host.name)
    return LocalRunner()


def _opts(service):
    """The engine's own options (host data ``services[].options``), or the service itself
    where they are flat."""
    return getattr(service, "options", service) if service is not None else None


def _endpoint(host, service) -> tuple[str, Any]:
    """(URL of the service as seen from here, a tunnel to close or None): a service that
    listens on the host's loopback is reached through an SSH port forward."""
    client = getattr(host.connector, "client", None)
    listen = service.host
    if client is None:  # @local
        return f"http://{'127.0.0.1' if listen in ('0.0.0.0', '::', '') else listen}:{service.port}", None
    if listen.startswith("127.") or listen in ("::1", "localhost"):
        from rigkit.bench.tunnel import SSHTunnel

        tunnel = SSHTunnel(client.get_transport(), listen, service.port)
        return tunnel.url, tunnel
    if listen in ("0.0.0.0", "::", ""):
        return f"http://{host.data.get('ssh_hostname') or host.name}:{service.port}", None
    return f"http://{listen}:{service.port}", None


def run_inventory(args: argparse.Namespace) -> int:
    import warnings

    # pyinfra's CLI package patches the standard library for gevent when imported; requests
    # came first, which gevent warns about. The bench's HTTP is plain and works either way.
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    from rigkit.hostdata import rig_for

    inv_path = Path(args.target)
    lock = inv_path.with_name(inv_path.stem + ".lock.yaml")
    if lock.exists():
        os.environ.setdefault("RIGKIT_MODEL_LOCK", str(lock))
    state = State()
    state.cwd = os.getcwd()
    ctx_state.set(state)
    inventory = make_inventory(str(inv_path), cwd=state.cwd)
    ctx_inventory.set(inventory)
    state.init(inventory, Config())
    connect_all(state)
    out_root = Path(args.out or f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    failures = 0
    ran = 0
    try:
        for host in inventory:
            if args.limit and host.name not in args.limit:
                continue
            if host not in state.activated_hosts:
                print(f"rigkit bench: {host.name}: not reachable", file=sys.stderr)
                failures += 1
                continue
            rig = rig_for(host)
            services = [s for s in rig.services if (s.name == args.service if args.service else s.enabled)]
            if args.service and not services:
                print(
                    f"rigkit bench: {host.name}: no service {args.service!r} "
                    f"(services: {', '.join(s.name for s in rig.services)})",
                    file=sys.stderr,
                )
                failures += 1
                continue
            for service in services:
                ran += 1
                tunnel = None
                try:
                    url, tunnel = _endpoint(host, service)
                    print(
                        f"rigkit bench: {host.name} / {service.name}: {url}"
                        + (f" (SSH forward to {service.host}:{service.port})" if tunnel else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    client = Client(url, api_key=_read_key(service.api_key_file), model=args.model)
                    bench_one(
                        client,
                        _config(args),
                        out_root / host.name / service.name,
                        _host_runner(host),
                        list(service.gpus) or None,
                        args,
                        rig=rig,
                        service=service,
                        host=host.name,
                    )
                except (BenchError, ServerError) as exc:
                    print(f"rigkit bench: {host.name} / {service.name}: {exc}", file=sys.stderr)
                    failures += 1
                finally:
                    if tunnel is not None:
                        tunnel.close()
    finally:
        disconnect_all(state)
    if not ran and not failures:
        print("rigkit bench: no enabled services in the inventory", file=sys.stderr)
        return 1
    return 1 if failures else 0


def run_compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rigkit bench compare",
        description="Per-depth ratios (B / A) of two bench.json files, and both on one set of charts.",
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--names", help="labels for A and B, comma-separated (default: the file names' folders)")
    p.add_argument("--out", default="bench-compare", help="folder for the charts and compare.md")
    args = p.parse_args(argv)
    results = []
    for path in (args.a, args.b):
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            print(f"rigkit bench compare: {path}: {exc}", file=sys.stderr)
            return 1
    given = args.names.split(",", 1) if args.names else [Path(x).resolve().parent.name or x for x in (args.a, args.b)]
    names = (given[0], given[-1]) if len(given) == 2 and given[0] != given[1] else ("A", "B")
    text = report.compare(results[0], results[1], names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    files = report.charts(list(zip(names, results)), out, prefix="compare-")
    print(text)
    print(
        "rigkit bench compare: wrote " + ", ".join(str(p) for p in [out / "compare.md", *files.values()]),
        file=sys.stderr,
    )
    return 0


def run_report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rigkit bench report",
        description="Tables and charts again from a bench.json (e.g. after a "
        "change to the charts, or of a partial result).",
    )
    p.add_argument("json")
    p.add_argument("--out", help="folder (default: the JSON's own folder)")
    args = p.parse_args(argv)
    try:
        result = json.loads(Path(args.json).read_text())
    except (OSError, ValueError) as exc:
        print(f"rigkit bench report: {args.json}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.json).parent
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "bench.csv", "md": out / "bench.md"}
    report.write_csv(result, files["csv"])
    files["md"].write_text(report.markdown(result))
    files.update(report.charts([("", result)], out))
    print(report.markdown(result))
    print("rigkit bench report: wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rigkit bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", nargs="?", help="an inventory file (or use --url)")
    p.add_argument("--url", help="base URL of an OpenAI-compatible server, e.g. http://rig.lan:8000")
    p.add_argument(
        "--local",
        action="store_true",
        help="with --url: the server runs on this machine (power, argv, build read here)",
    )
    p.add_argument("--service", help="with an inventory: only this service (default: every enabled one)")
    p.add_argument("--limit", action="append", help="with an inventory: only this host (repeatable)")
    p.add_argument(
        "--depths",
        type=parse_depths,
        help="prompt lengths in tokens, comma-separated, K = 1024 (default: the seeds' "
        "4K,8K,16K,32K,64K,128K,198K,256K, capped at the context per request)",
    )
    p.add_argument("--runs", type=int, default=3, help="requests per depth (default 3)")
    p.add_argument("--gen", type=int, default=128, help="tokens generated per request (default 128)")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default /v1/completions)")
    p.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--api-key-file", help="with --url: file holding the server's API key")
    p.add_argument("--gpus", help="with --url --local: GPU indexes the server uses (default all)")
    p.add_argument("--model-file", help="with --url: the GGUF (first shard) on this machine, for the roofline")
    p.add_argument(
        "--bandwidth", type=float, help="memory bandwidth in GB/s for the roofline (default: the GPU's nominal figure)"
    )
    p.add_argument("--power-interval", type=float, default=0.05, help="seconds between power samples")
    p.add_argument("--no-power", action="store_true", help="do not sample power")
    p.add_argument("--no-warmup", action="store_true", help="no unmeasured request before the sweep")
    p.add_argument("--seed", type=int, default=0, help="picks the stretches of text the prompts use")
    p.add_argument(
        "--out", help="output folder (default bench-<date>-<time>; per host and service below it with an inventory)"
    )
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return run_compare(argv[1:])
    if argv and argv[0] == "report":
        return run_report(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.url) == bool(args.target):
        parser.error("give either --url URL or an INVENTORY")
    if args.runs < 1 or args.gen < 2:
        parser.error("--runs must be at least 1 and --gen at least 2")
    return run_url(args) if args.url else run_inventory(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
