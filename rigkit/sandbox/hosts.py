"""One sandbox host's life: its disk (an overlay on the shared base, kept across reboots),
its identity and access, its network namespace, and its boot with ``systemd-nspawn -b`` from
a cgroup of its own; a clean stop, a boot again on the same disk, and the removal of all of it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

from rigkit.sandbox.cgroups import cgroup_dirs, remove_cgroup_tree
from rigkit.sandbox.network import netns_list, ssh_ready
from rigkit.sandbox.processes import alive, mounted, stop_pid
from rigkit.sandbox.state import Sandbox, SandboxError, SandboxHost, cache_dir, run

# The ccache directory rig deploys use on a host; the sandbox keeps it on the build
# machine so a rebuilt host does not compile llama.cpp cold again.
from rigkit.scripts.llama_host import CCACHE_DIR as HOST_CCACHE_DIR

NSPAWN = "systemd-nspawn"


def ensure_key(state: Path) -> Path:
    key = state / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rigkit-sandbox", "-f", str(key)])
    key.chmod(0o600)
    return key


def host_dir(state: Path, name: str) -> Path:
    return state / "hosts" / name


def has_disk(state: Path, name: str) -> bool:
    """Whether a host left its disk (overlay upper dir) behind: it boots again on it."""
    return (host_dir(state, name) / "upper").is_dir()


def new_host(sb: Sandbox, index: int) -> SandboxHost:
    subnet = ipaddress.ip_network(sb.subnet)
    return SandboxHost(
        name=f"sandbox-{index}",
        index=index,
        address=str(subnet.network_address + 10 + index),
        netns=f"rk-{sb.tag}-{index}",
        veth=f"rk{sb.tag}h{index}",
    )


def create_host(sb: Sandbox, state: Path, base: Path, index: int, key: Path, boot_timeout: float) -> SandboxHost:
    """Mount the host's disk (a new overlay, or the one it left behind), set up its network
    and boot it."""
    host = new_host(sb, index)
    mount_root(sb, state, base, host, key)
    add_network(sb, host)
    sb.hosts.append(host)
    boot(sb, state, host, boot_timeout)
    return host


def mount_root(sb: Sandbox, state: Path, base: Path, host: SandboxHost, key: Path) -> None:
    """The overlay on the base, and what this sandbox decides in it (name, keys, proxy): all
    idempotent, so a disk left by an earlier boot keeps its host keys and everything else."""
    hdir = host_dir(state, host.name)
    for sub in ("upper", "work", "root"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    root = hdir / "root"
    if not mounted(root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                str(root),
            ]
        )

    # Identity and access.
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n")
    # The base has no host keys (and an empty machine-id); -A makes only the missing ones.
    run(["chroot", str(root), "ssh-keygen", "-A"])
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    # apt goes through the proxy on the gateway; nothing else is proxied (pitfall 3).
    (root / "etc/apt/apt.conf.d/01rigkit-proxy").write_text(f'Acquire::http::Proxy "{sb.apt_proxy}";\n')
    # HTTPS from here is intercepted by a local CA (pitfall 4).
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        shutil.copy(ca, root / "etc/ssl/certs/ca-certificates.crt")


def add_network(sb: Sandbox, host: SandboxHost) -> None:
    """A namespace, a veth whose outer end sits on the bridge."""
    subnet = ipaddress.ip_network(sb.subnet)
    run(["ip", "netns", "add", host.netns])
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "host0", "netns", host.netns])
    run(["ip", "link", "set", host.veth, "master", sb.bridge, "up"])
    ns = ["ip", "-n", host.netns]
    run(ns + ["link", "set", "lo", "up"])
    run(ns + ["addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", "host0"])
    run(ns + ["link", "set", "host0", "up"])
    run(ns + ["route", "add", "default", "via", sb.gateway])


def boot(sb: Sandbox, state: Path, host: SandboxHost, boot_timeout: float) -> None:
    """Boot the mounted root with systemd from a cgroup of its own; wait for SSH."""
    hdir = host_dir(state, host.name)
    ccache = cache_dir() / "sandbox-ccache"
    ccache.mkdir(parents=True, exist_ok=True)
    cgroups = cgroup_dirs(sb.tag, host.name)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)

    def enter_cgroup() -> None:
        os.setsid()
        for cg in cgroups:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    with open(hdir / "nspawn.log", "a") as logf:
        proc = subprocess.Popen(
            [
                NSPAWN,
                "-q",
                "-D",
                str(hdir / "root"),
                "-M",
                host.name,
                "--register=no",
                "--keep-unit",
                f"--network-namespace-path=/run/netns/{host.netns}",
                # Its own namespace's links are the host's to configure (rigkit's interconnect
                # does, as on a real host); nspawn grants CAP_NET_ADMIN only with a private
                # network of its own making, not with a namespace given by path.
                "--capability=CAP_NET_ADMIN",
                "--link-journal=no",
                f"--bind={ccache}:{HOST_CCACHE_DIR}",
                "-b",
            ],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=enter_cgroup,
        )
    host.pid = proc.pid
    if not ssh_ready(host.address, boot_timeout):
        tail = (hdir / "nspawn.log").read_text()[-2000:]
        raise SandboxError(
            f"{host.name} did not answer SSH on {host.address} within {boot_timeout:.0f}s "
            f"(raise --boot-timeout). nspawn log tail:\n{tail}"
        )


def shut_down(sb: Sandbox, host: SandboxHost, timeout: float = 60.0) -> None:
    """Power the host off and wait for it: SIGTERM makes nspawn send the host's systemd
    SIGRTMIN+3, an orderly shutdown (units stopped, file systems synced). Its disk, mount
    and network namespace stay; whatever the host left in its cgroups is removed."""
    stop_pid(host.pid, NSPAWN, timeout=timeout)
    host.pid = None
    for cg in cgroup_dirs(sb.tag, host.name):
        remove_cgroup_tree(cg)


def running(host: SandboxHost) -> bool:
    return alive(host.pid, NSPAWN)


def write_known_hosts(sb: Sandbox, state: Path) -> None:
    lines = []
    for host in sb.hosts:
        pub = (host_dir(state, host.name) / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text()
        kind, key = pub.split()[:2]
        lines.append(f"{host.address} {kind} {key}")
    Path(sb.known_hosts).write_text("\n".join(lines) + "\n")


def destroy_host(sb: Sandbox, state: Path, host: SandboxHost, keep_disk: bool = False) -> None:
    stop_pid(host.pid, NSPAWN)
    destroy_host_leftovers(state, sb.tag, host.name, host.netns, host.veth, keep_disk)


def destroy_host_leftovers(state: Path, tag: str, name: str, netns: str, veth: str, keep_disk: bool = False) -> None:
    """Cgroups, the overlay mount, the namespace and veth; and the disk unless ``keep_disk``."""
    hdir = host_dir(state, name)
    root = hdir / "root"
    for cg in cgroup_dirs(tag, name):
        remove_cgroup_tree(cg)
    if root.exists() and mounted(root) and run(["umount", str(root)], check=False).returncode != 0:
        run(["umount", "-l", str(root)], check=False)
    # Either may be gone already; a failed delete is fine.
    run(["ip", "netns", "delete", netns], check=False)
    run(["ip", "link", "delete", veth], check=False)
    if hdir.exists() and not keep_disk:
        shutil.rmtree(hdir, ignore_errors=True)


def clean_stale(state: Path, tag: str, keep: set[str], keep_disks: Collection[str] = ()) -> None:
    """Remove what an earlier run left behind that no live host owns (pitfall 10): namespaces,
    veths, mounts, cgroups, and the disks of hosts not named in ``keep_disks``."""
    for netns in netns_list():
        if netns.startswith(f"rk-{tag}-") and netns not in keep:
            index = netns.rsplit("-", 1)[1]
            name = f"sandbox-{index}"
            destroy_host_leftovers(state, tag, name, netns, f"rk{tag}h{index}", name in keep_disks)
    hosts_dir = state / "hosts"
    if hosts_dir.exists():
        for hdir in hosts_dir.iterdir():
            index = hdir.name.rsplit("-", 1)[-1]
            if f"rk-{tag}-{index}" not in keep:
                destroy_host_leftovers(
                    state, tag, hdir.name, f"rk-{tag}-{index}", f"rk{tag}h{index}", hdir.name in keep_disks
                )
