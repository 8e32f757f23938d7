"""
Local target hosts for rigkit: Debian bookworm root filesystems booted with systemd
under systemd-nspawn, each in its own network namespace, reached over SSH. Test tooling
for this machine only; nothing here runs against real hosts.

    sudo rigkit sandbox up --hosts 2
    pyinfra -y inventories/sandbox.py deploys/sample.py
    sudo rigkit sandbox reboot sandbox-1
    sudo rigkit sandbox down

Layout (``RIGKIT_SANDBOX_DIR``, default ``/var/lib/rigkit/sandbox``)::

    id_ed25519[.pub]   the key rigkit generated; root on every host accepts it
    known_hosts        exact host keys, so SSH checks them strictly
    inventory.json     what inventories/sandbox.py loads
    hosts/NAME/        overlay upper/work dirs (the host's disk), the merged root, nspawn.log
    build-cache.token  the publish token of the sandbox's build cache (a new one each `up`)

The debootstrapped base lives in ``RIGKIT_CACHE`` (default ``/var/cache/rigkit``) and
is reused by every host (read-only overlay lower dir) and every later ``up``; so are the
sandbox's build cache entries (``build-cache/<tag>/``, served at ``Sandbox.build_cache_url``).

The package, by concern: ``state`` (the instance and its inventory), ``prerequisites``,
``rootfs`` (the base), ``network``, ``cgroups``, ``processes``, ``hosts`` (one host's disk,
boot, shutdown, removal), ``services`` (apt-cacher-ng, git daemon, Hub mirror and build cache
on the build machine), ``offline`` (the stand-ins those serve: a llama.cpp git mirror from PyPI sdists, a
tiny model) and ``health`` (a /health poller for tests and benchmarks).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Collection
from pathlib import Path

from rigkit.sandbox.cgroups import cgroup_dirs, remove_cgroup_tree
from rigkit.sandbox.hosts import (
    boot,
    clean_stale,
    create_host,
    destroy_host,
    ensure_key,
    has_disk,
    mount_root,
    running,
    shut_down,
    write_known_hosts,
)
from rigkit.sandbox.network import allocate_subnet, link_exists, ssh_ready
from rigkit.sandbox.prerequisites import check_prerequisites
from rigkit.sandbox.processes import alive
from rigkit.sandbox.rootfs import ensure_base
from rigkit.sandbox.services import (
    SERVICE_COMM,
    ensure_sources,
    remove_build_cache_if_empty,
    start_services,
    stop_services,
)
from rigkit.sandbox.state import (
    BUILD_CACHE_TOKEN,
    Sandbox,
    SandboxError,
    SandboxHost,
    cache_dir,
    instance_tag,
    log,
    run,
    state_dir,
)

__all__ = [
    "Sandbox",
    "SandboxError",
    "SandboxHost",
    "cache_dir",
    "check_prerequisites",
    "down",
    "ensure_base",
    "instance_tag",
    "pyinfra_hosts",
    "reboot",
    "state_dir",
    "status",
    "up",
]


def up(hosts: int = 2, boot_timeout: float = 60.0, sources: bool = True) -> Sandbox:
    """Bring the sandbox to exactly ``hosts`` running hosts; idempotent. A host that died (or
    was stopped by a reboot of this machine) boots again on the disk it left behind."""
    if hosts < 1:
        raise SandboxError(f"--hosts must be at least 1, got {hosts}")
    if hosts > 200:
        raise SandboxError(f"--hosts {hosts}: a sandbox has room for at most 200 hosts")
    check_prerequisites()
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    inventory = state / "inventory.json"
    tag = instance_tag()
    sb = Sandbox.load(inventory)
    bridge_up = link_exists(f"rkbr-{tag}")
    if sb is not None:
        sb.hosts = [h for h in sb.hosts if bridge_up and running(h)]
    were_running = list(sb.hosts) if sb is not None else []
    keep_disks = {f"sandbox-{index}" for index in range(1, hosts + 1)}
    old_disks: set[str] = set()  # disks this run found and boots again: never removed on failure
    created_bridge = False
    try:
        key = ensure_key(state)
        if sb is None or not bridge_up:
            clean_stale(state, tag, keep=set(), keep_disks=keep_disks)
            if bridge_up:  # a bridge without an inventory: left by a killed run
                run(["ip", "link", "delete", f"rkbr-{tag}"])
            if sb is not None:
                stop_services(sb)
            subnet = allocate_subnet(tag)
            sb = Sandbox(
                tag=tag,
                subnet=str(subnet),
                gateway=str(subnet.network_address + 1),
                ssh_key=str(key),
                known_hosts=str(state / "known_hosts"),
            )
            run(["ip", "link", "add", sb.bridge, "type", "bridge"])
            created_bridge = True
            run(["ip", "addr", "add", f"{sb.gateway}/{subnet.prefixlen}", "dev", sb.bridge])
            run(["ip", "link", "set", sb.bridge, "up"])
        else:
            clean_stale(state, tag, keep={h.netns for h in sb.hosts}, keep_disks=keep_disks)
        base = ensure_base()
        if sources:
            ensure_sources()
        start_services(sb, state)
        sb.save(inventory)
        for extra in [h for h in sb.hosts if h.index > hosts]:
            log(f"stopping {extra.name}")
            destroy_host(sb, state, extra)
            sb.hosts.remove(extra)
        present = {h.index for h in sb.hosts}
        for index in range(1, hosts + 1):
            if index in present:
                continue
            started = time.monotonic()
            again = has_disk(state, f"sandbox-{index}")
            if again:
                old_disks.add(f"sandbox-{index}")
            host = create_host(sb, state, base, index, key, boot_timeout)
            sb.save(inventory)
            log(
                f"{host.name} up at {host.address} in {time.monotonic() - started:.1f}s"
                + (" (booted again on its disk)" if again else "")
            )
        sb.hosts.sort(key=lambda h: h.index)
        write_known_hosts(sb, state)
        sb.save(inventory)
        return sb
    except BaseException:
        log("up failed: removing what this run created (disks found from earlier runs stay)")
        if sb is not None:
            for host in [h for h in sb.hosts if h not in were_running]:
                destroy_host(sb, state, host, keep_disk=host.name in old_disks)
                sb.hosts.remove(host)
            if created_bridge:
                _down(keep_disks=old_disks)
            else:
                sb.save(inventory)
        raise


def reboot(name: str, boot_timeout: float = 60.0) -> SandboxHost:
    """Restart a host keeping its disk, as far as nspawn allows: an orderly shutdown of its
    systemd, then a boot on the same overlay, name, address and host keys. A host that died
    (or ran ``reboot`` itself, which ends nspawn) is booted again."""
    check_prerequisites()
    state = state_dir()
    inventory = state / "inventory.json"
    sb = Sandbox.load(inventory)
    if sb is None or not link_exists(sb.bridge):
        raise SandboxError("no sandbox is up: run `sudo rigkit sandbox up --hosts 2` first")
    host = sb.host(name)
    started = time.monotonic()
    shut_down(sb, host)
    sb.save(inventory)
    log(f"{name} stopped in {time.monotonic() - started:.1f}s")
    mount_root(sb, state, ensure_base(), host, ensure_key(state))
    boot(sb, state, host, boot_timeout)
    sb.save(inventory)
    log(f"{name} booted again at {host.address} in {time.monotonic() - started:.1f}s")
    return host


def down() -> list[str]:
    """Stop every host and service this sandbox started and remove what it created."""
    return _down()


def _down(keep_disks: Collection[str] = ()) -> list[str]:
    check_prerequisites()
    state = state_dir()
    inventory = state / "inventory.json"
    tag = instance_tag()
    sb = Sandbox.load(inventory)
    removed = []
    if sb is not None:
        for host in list(sb.hosts):
            destroy_host(sb, state, host, keep_disk=host.name in keep_disks)
            removed.append(host.name)
        stop_services(sb)
    clean_stale(state, tag, keep=set(), keep_disks=keep_disks)
    run(["ip", "link", "delete", f"rkbr-{tag}"], check=False)  # gone already, unless stale
    for cg in cgroup_dirs(tag):
        remove_cgroup_tree(cg)
    for leftover in ("inventory.json", "known_hosts", "git-daemon.pid", "hf-mirror.log", "build-cache.log"):
        (state / leftover).unlink(missing_ok=True)
    (state / BUILD_CACHE_TOKEN).unlink(missing_ok=True)  # the next `up` makes a new one
    shutil.rmtree(state / "apt-cacher-ng", ignore_errors=True)
    remove_build_cache_if_empty(tag)
    return removed


def status() -> dict:
    """What is running, read only: hosts, their addresses, whether SSH answers."""
    sb = Sandbox.load(state_dir() / "inventory.json")
    if sb is None:
        return {"state": str(state_dir()), "hosts": [], "services": {}}
    return {
        "state": str(state_dir()),
        "subnet": sb.subnet,
        "gateway": sb.gateway,
        "build_cache": sb.build_cache_url,
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "pid": h.pid,
                "running": is_running,
                "ssh": is_running and ssh_ready(h.address, 2),
            }
            for h, is_running in ((h, running(h)) for h in sb.hosts)
        ],
        "services": {
            name: {"pid": pid, "running": alive(pid, SERVICE_COMM.get(name))} for name, pid in sb.services.items()
        },
    }


def pyinfra_hosts(state: Path | None = None) -> list[tuple[str, dict]]:
    """Inventory entries for pyinfra: ``(name, data)`` per running sandbox host."""
    sb = Sandbox.load((state or state_dir()) / "inventory.json")
    if sb is None or not sb.hosts:
        raise SandboxError("no sandbox is up: run `sudo rigkit sandbox up --hosts 2` first")
    return [
        (
            h.name,
            {
                "ssh_hostname": h.address,
                "ssh_user": "root",
                "ssh_key": sb.ssh_key,
                "ssh_known_hosts_file": sb.known_hosts,
                "ssh_strict_host_key_checking": "yes",
                "sandbox_gateway": sb.gateway,
                "sandbox_git_url": sb.git_url,
                "sandbox_hf_endpoint": sb.hf_endpoint,
                "sandbox_build_cache": sb.build_cache_url,
                "sandbox_build_cache_token_file": str((state or state_dir()) / BUILD_CACHE_TOKEN),
                "sandbox_models": str(cache_dir() / "models"),
            },
        )
        for h in sb.hosts
    ]
