"""
Local target hosts for rigkit: Debian bookworm root filesystems booted with systemd
under systemd-nspawn, each in its own network namespace, reached over SSH.

    sudo rigkit sandbox up --hosts 2
    pyinfra -y inventories/sandbox.py deploys/sample.py
    sudo rigkit sandbox down

Layout (``RIGKIT_SANDBOX_DIR``, default ``/var/lib/rigkit/sandbox``)::

    id_ed25519[.pub]   the key rigkit generated; root on every host accepts it
    known_hosts        exact host keys, so SSH checks them strictly
    inventory.json     what inventories/sandbox.py loads
    hosts/NAME/        overlay upper/work dirs, the merged root, nspawn.log

The debootstrapped base lives in ``RIGKIT_CACHE`` (default ``/var/cache/rigkit``) and
is reused by every host (read-only overlay lower dir) and every later ``up``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from rigkit.offline import default_cache_dir
# The ccache directory rig deploys use on a host; the sandbox keeps it on the build
# machine so a rebuilt host does not compile llama.cpp cold again.
from rigkit.scripts.llama_host import CCACHE_DIR as HOST_CCACHE_DIR

DEFAULT_STATE = Path("/var/lib/rigkit/sandbox")
# Benchmarking range (RFC 2544): never a real network, never a private range.
ADDRESS_POOL = ipaddress.ip_network("198.18.0.0/15")
SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2",
    "ca-certificates", "python3", "procps",
)
APT_PROXY_PORT = 3142
GIT_PORT = 9418
HF_MIRROR_PORT = 8090  # `rigkit mirror serve <cache>/hub`: the sandbox's stand-in for the Hub
# The process name (comm) of each service, checked before it is signalled or reported.
SERVICE_COMM = {"apt-cacher-ng": "apt-cacher-ng", "git-daemon": "git", "hf-mirror": "python"}


class SandboxError(RuntimeError):
    """A sandbox step failed; the message says what and how to fix it."""


def log(message: str) -> None:
    print(f"[sandbox] {message}", file=sys.stderr, flush=True)


def state_dir() -> Path:
    return Path(os.environ.get("RIGKIT_SANDBOX_DIR", DEFAULT_STATE))


def cache_dir() -> Path:
    return default_cache_dir()


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(cmd, **kwargs)
    if check and result.returncode != 0:
        err = (result.stderr or result.stdout or "").strip()
        raise SandboxError(f"`{' '.join(cmd)}` failed ({result.returncode}): {err[-2000:]}")
    return result


@dataclass
class SandboxHost:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    pid: int | None = None


@dataclass
class Sandbox:
    """Everything one sandbox instance owns, written to ``inventory.json``."""

    tag: str
    subnet: str
    gateway: str
    ssh_key: str
    known_hosts: str
    hosts: list[SandboxHost] = field(default_factory=list)
    services: dict[str, int] = field(default_factory=dict)  # name -> pid

    @property
    def bridge(self) -> str:
        return f"rkbr-{self.tag}"

    @property
    def apt_proxy(self) -> str:
        return f"http://{self.gateway}:{APT_PROXY_PORT}"

    @property
    def git_url(self) -> str:
        return f"git://{self.gateway}:{GIT_PORT}"

    @property
    def hf_endpoint(self) -> str:
        return f"http://{self.gateway}:{HF_MIRROR_PORT}"

    def ssh(self, host: "SandboxHost", command: str, check: bool = True, timeout: float | None = 120) -> str:
        """Run a command on a host over SSH (strict host key checking); its stdout, stripped.
        ``timeout=None`` for long work such as a build."""
        return subprocess.run(
            ["ssh", "-i", self.ssh_key, "-o", f"UserKnownHostsFile={self.known_hosts}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{host.address}", command],
            capture_output=True, text=True, check=check, timeout=timeout,
        ).stdout.strip()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> "Sandbox | None":
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["hosts"] = [SandboxHost(**h) for h in raw.get("hosts", [])]
        return cls(**raw)


# --- prerequisites -------------------------------------------------------------------

PREREQUISITES = {
    # command -> Debian package that provides it
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "apt-cacher-ng": "apt-cacher-ng",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "nsenter": "util-linux",
}


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "rigkit sandbox needs root (it creates network namespaces, mounts and "
            "containers): run it as `sudo rigkit sandbox ...`"
        )
    missing = sorted({pkg for cmd, pkg in PREREQUISITES.items() if not _which(cmd)})
    if missing:
        raise SandboxError(
            f"missing prerequisites: {', '.join(missing)}. Install them with: "
            f"apt-get install -y {' '.join(missing)}"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise SandboxError("the kernel has no overlay filesystem: `modprobe overlay`")


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


# --- the base root filesystem --------------------------------------------------------


def _apt_mirror() -> str:
    """The Debian mirror this machine's own apt uses (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(p for p in line.split()[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def base_dir() -> Path:
    key = hashlib.sha256(" ".join((SUITE,) + BASE_PACKAGES).encode()).hexdigest()[:8]
    return cache_dir() / f"base-{SUITE}-{key}"


def ensure_base(progress: Callable[[str], None] = log) -> Path:
    """Debootstrap the base once; later calls reuse it."""
    base = base_dir()
    if (base / ".rigkit-complete").exists():
        return base
    partial = base.with_name(base.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    mirror = _apt_mirror()
    progress(f"building the {SUITE} base root filesystem in {base} from {mirror} (once)")
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           SUITE, str(partial), mirror]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    phase, count = "", 0
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        words = line.split()
        # debootstrap prints a line per package: show phases and a count, not 600 lines.
        if line.startswith("I: ") and len(words) > 1:
            if words[1] != phase:
                phase, count = words[1], 0
                progress(f"  {time.monotonic() - started:5.0f}s {line[3:]}")
            count += 1
            if count % 50 == 0:
                progress(f"  {time.monotonic() - started:5.0f}s {phase} ... {count} done")
        elif line.startswith(("E:", "W:")):
            progress(f"  {time.monotonic() - started:5.0f}s {line}")
    if proc.wait() != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SandboxError("debootstrap failed:\n" + "\n".join(tail))
    # Each host gets its own identity; none may come from the shared base.
    for key_file in (partial / "etc/ssh").glob("ssh_host_*"):
        key_file.unlink()
    (partial / "etc/machine-id").write_text("")
    run(["chroot", str(partial), "apt-get", "clean"])
    (partial / ".rigkit-complete").write_text(f"{time.time()}\n")
    partial.rename(base)
    progress(f"base ready in {time.monotonic() - started:.0f}s")
    return base


# --- networking ------------------------------------------------------------------------


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = run(["ip", "-4", "-o", "addr", "show"]).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def allocate_subnet(tag: str) -> ipaddress.IPv4Network:
    """The first /24 of the pool that no interface on this machine uses."""
    used = _used_networks()
    # Start from a slot derived from the tag so two instances rarely probe the same /24.
    subnets = list(ADDRESS_POOL.subnets(new_prefix=24))
    start = int(tag, 16) % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(n) for n in used):
            return subnet
    raise SandboxError(f"no free /24 left in {ADDRESS_POOL} for the sandbox bridge")


def _link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def _netns_list() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line]


# --- cgroups (pitfall: hosts sharing a cgroup kill each other's units) ------------------


def _cgroup_roots() -> list[Path]:
    roots = []
    for hierarchy in ("systemd", "unified"):
        root = Path("/sys/fs/cgroup") / hierarchy
        if (root / "cgroup.procs").exists():
            roots.append(root)
    if not roots and (Path("/sys/fs/cgroup") / "cgroup.procs").exists():
        roots.append(Path("/sys/fs/cgroup"))  # pure cgroup v2
    return roots


def _cgroup_dirs(tag: str, host: str | None = None) -> list[Path]:
    rel = f"rigkit-{tag}" + (f"/{host}" if host else "")
    return [root / rel for root in _cgroup_roots()]


def _remove_cgroup_tree(path: Path) -> None:
    """Kill what still runs in a host's cgroups (an orphaned container init), then rmdir."""
    if not path.is_dir():
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(pid) for procs in path.rglob("cgroup.procs")
                for pid in procs.read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


# --- process helpers -------------------------------------------------------------------


def _alive(pid: int | None, comm: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.split()[2] == "Z":
        return False
    if comm is not None:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm[:15])
    return True


def _stop_pid(pid: int | None, comm: str, timeout: float = 20.0) -> None:
    if not _alive(pid, comm):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, comm):
            _reap(pid)
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    while _alive(pid, comm) and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    return any(line.split()[1] == target for line in Path("/proc/mounts").read_text().splitlines())


# --- the sandbox -------------------------------------------------------------------------


def instance_tag() -> str:
    return hashlib.sha256(str(state_dir().resolve()).encode()).hexdigest()[:4]


def _ensure_key(state: Path) -> Path:
    key = state / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rigkit-sandbox", "-f", str(key)])
    key.chmod(0o600)
    return key


def _start_services(sb: Sandbox, state: Path) -> None:
    """apt-cacher-ng (packages), git daemon (source mirrors) and a Hub mirror (models,
    ``<cache>/hub/<org>/<name>/...``) on the gateway only."""
    if not _alive(sb.services.get("apt-cacher-ng"), SERVICE_COMM["apt-cacher-ng"]):
        acng_dir = state / "apt-cacher-ng"
        (acng_dir / "log").mkdir(parents=True, exist_ok=True)
        shared_cache = cache_dir() / "apt-cacher-ng"
        shared_cache.mkdir(parents=True, exist_ok=True)
        pidfile = acng_dir / "pid"
        pidfile.unlink(missing_ok=True)
        # Our own config, not /etc/apt-cacher-ng: Debian's remaps send deb.debian.org requests to
        # the backends list (ftp.debian.org by default), a host a closed network may not resolve.
        # Without remaps apt-cacher-ng fetches from the very mirror the hosts ask for, which is
        # the one this machine's own apt uses (the base is debootstrapped from it).
        conf_dir = acng_dir / "conf"
        conf_dir.mkdir(exist_ok=True)
        (conf_dir / "acng.conf").write_text(
            "SupportDir: /usr/lib/apt-cacher-ng\nReportPage: acng-report.html\nExThreshold: 4\n")
        run(["apt-cacher-ng", "-c", str(conf_dir),
             f"CacheDir={shared_cache}", f"LogDir={acng_dir / 'log'}",
             f"PidFile={pidfile}", f"SocketPath={acng_dir / 'socket'}",
             f"BindAddress={sb.gateway}", f"Port={APT_PROXY_PORT}", "ForeGround=0"])
        sb.services["apt-cacher-ng"] = _wait_pidfile(pidfile, SERVICE_COMM["apt-cacher-ng"])
    if not _alive(sb.services.get("git-daemon"), SERVICE_COMM["git-daemon"]):
        git_root = cache_dir() / "mirrors"
        git_root.mkdir(parents=True, exist_ok=True)
        pidfile = state / "git-daemon.pid"
        pidfile.unlink(missing_ok=True)
        run(["git", "daemon", "--detach", "--reuseaddr", "--export-all",
             f"--base-path={git_root}", f"--listen={sb.gateway}", f"--port={GIT_PORT}",
             f"--pid-file={pidfile}", str(git_root)])
        sb.services["git-daemon"] = _wait_pidfile(pidfile, SERVICE_COMM["git-daemon"])
    if not _alive(sb.services.get("hf-mirror"), SERVICE_COMM["hf-mirror"]):
        hub_root = cache_dir() / "hub"
        hub_root.mkdir(parents=True, exist_ok=True)
        with open(state / "hf-mirror.log", "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rigkit.cli", "mirror", "serve", str(hub_root),
                 "--host", sb.gateway, "--port", str(HF_MIRROR_PORT)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        sb.services["hf-mirror"] = proc.pid
    for name, port, wait in (("apt-cacher-ng", APT_PROXY_PORT, 10), ("git-daemon", GIT_PORT, 10),
                             ("hf-mirror", HF_MIRROR_PORT, 120)):  # the mirror hashes new files first
        if not _wait_port(sb.gateway, port, wait):
            raise SandboxError(f"{name} did not listen on {sb.gateway}:{port}"
                               + (f" (log: {state / 'hf-mirror.log'})" if name == "hf-mirror" else ""))
    _check_apt_proxy(sb)


def _check_apt_proxy(sb: Sandbox) -> None:
    """Fail `up` here, clearly, if the proxy cannot reach the Debian mirror (rather than in
    every deploy's apt-get later)."""
    import requests

    url = f"{_apt_mirror().rstrip('/')}/dists/{SUITE}/InRelease"
    try:
        status = requests.head(url, proxies={"http": sb.apt_proxy}, timeout=30).status_code
    except requests.RequestException as exc:
        raise SandboxError(f"apt-cacher-ng at {sb.apt_proxy} did not answer for {url}: {exc}") from exc
    if status != 200:
        raise SandboxError(f"apt-cacher-ng at {sb.apt_proxy} cannot fetch {url} (HTTP {status}); "
                           f"check that this machine reaches the mirror: curl -I {url}")


def _wait_pidfile(path: Path, comm: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            pid = int(path.read_text().strip())
            if _alive(pid, comm):
                return pid
        time.sleep(0.1)
    raise SandboxError(f"{comm} did not start (no pid in {path})")


def _wait_port(address: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _ssh_ready(address: str, timeout: float) -> bool:
    """True once sshd answers with its banner (a bare TCP accept is not enough)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=1) as conn:
                conn.settimeout(2)
                if conn.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _create_host(sb: Sandbox, state: Path, base: Path, index: int, key: Path,
                 boot_timeout: float) -> SandboxHost:
    subnet = ipaddress.ip_network(sb.subnet)
    name = f"sandbox-{index}"
    host = SandboxHost(
        name=name, index=index, address=str(subnet.network_address + 10 + index),
        netns=f"rk-{sb.tag}-{index}", veth=f"rk{sb.tag}h{index}",
    )
    hdir = state / "hosts" / name
    for sub in ("upper", "work", "root"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    root = hdir / "root"
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", str(root)])

    # Identity and access.
    (root / "etc/hostname").write_text(name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
    run(["chroot", str(root), "ssh-keygen", "-A"])  # the base has no host keys, and an empty machine-id
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    # apt goes through the proxy on the gateway; nothing else is proxied (pitfall 3).
    (root / "etc/apt/apt.conf.d/01rigkit-proxy").write_text(
        f'Acquire::http::Proxy "{sb.apt_proxy}";\n')
    # HTTPS from here is intercepted by a local CA (pitfall 4).
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        shutil.copy(ca, root / "etc/ssl/certs/ca-certificates.crt")
    ccache = cache_dir() / "sandbox-ccache"
    ccache.mkdir(parents=True, exist_ok=True)

    # Network: a namespace, a veth whose outer end sits on the bridge.
    run(["ip", "netns", "add", host.netns])
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "host0",
         "netns", host.netns])
    run(["ip", "link", "set", host.veth, "master", sb.bridge, "up"])
    ns = ["ip", "-n", host.netns]
    run(ns + ["link", "set", "lo", "up"])
    run(ns + ["addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", "host0"])
    run(ns + ["link", "set", "host0", "up"])
    run(ns + ["route", "add", "default", "via", sb.gateway])

    # Boot, from a cgroup of its own.
    cgroups = _cgroup_dirs(sb.tag, name)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)

    def enter_cgroup() -> None:
        os.setsid()
        for cg in cgroups:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    logf = open(hdir / "nspawn.log", "w")
    proc = subprocess.Popen(
        ["systemd-nspawn", "-q", "-D", str(root), "-M", name, "--register=no", "--keep-unit",
         f"--network-namespace-path=/run/netns/{host.netns}", "--link-journal=no",
         f"--bind={ccache}:{HOST_CCACHE_DIR}", "-b"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        preexec_fn=enter_cgroup,
    )
    host.pid = proc.pid
    sb.hosts.append(host)
    if not _ssh_ready(host.address, boot_timeout):
        tail = (hdir / "nspawn.log").read_text()[-2000:]
        raise SandboxError(
            f"{name} did not answer SSH on {host.address} within {boot_timeout:.0f}s "
            f"(raise --boot-timeout). nspawn log tail:\n{tail}")
    return host


def _write_known_hosts(sb: Sandbox, state: Path) -> None:
    lines = []
    for host in sb.hosts:
        pub = (state / "hosts" / host.name / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text()
        kind, key = pub.split()[:2]
        lines.append(f"{host.address} {kind} {key}")
    Path(sb.known_hosts).write_text("\n".join(lines) + "\n")


def _destroy_host(sb: Sandbox, state: Path, host: SandboxHost) -> None:
    _stop_pid(host.pid, "systemd-nspawn")
    _destroy_host_leftovers(state, sb.tag, host.name, host.netns, host.veth)


def _destroy_host_leftovers(state: Path, tag: str, name: str, netns: str, veth: str) -> None:
    hdir = state / "hosts" / name
    root = hdir / "root"
    for cg in _cgroup_dirs(tag, name):
        _remove_cgroup_tree(cg)
    if root.exists() and _mounted(root):
        if run(["umount", str(root)], check=False).returncode != 0:
            run(["umount", "-l", str(root)], check=False)
    # Either may be gone already; a failed delete is fine.
    run(["ip", "netns", "delete", netns], check=False)
    run(["ip", "link", "delete", veth], check=False)
    if hdir.exists():
        shutil.rmtree(hdir, ignore_errors=True)


def _clean_stale(state: Path, tag: str, keep: set[str]) -> None:
    """Remove what an earlier run left behind that no live host owns (pitfall 10)."""
    for netns in _netns_list():
        if netns.startswith(f"rk-{tag}-") and netns not in keep:
            index = netns.rsplit("-", 1)[1]
            _destroy_host_leftovers(state, tag, f"sandbox-{index}", netns, f"rk{tag}h{index}")
    hosts_dir = state / "hosts"
    if hosts_dir.exists():
        for hdir in hosts_dir.iterdir():
            index = hdir.name.rsplit("-", 1)[-1]
            if f"rk-{tag}-{index}" not in keep:
                _destroy_host_leftovers(state, tag, hdir.name, f"rk-{tag}-{index}", f"rk{tag}h{index}")


SANDBOX_LLAMA_VERSIONS = ["0.3.34", "0.3.36"]  # llama-cpp-python sdists: b9976, b11312


def ensure_sources(progress: Callable[[str], None] = log) -> None:
    """The stand-ins for GitHub and the Hub that the sandbox inventory uses: a llama.cpp
    git mirror (real source, real build numbers) and a tiny generated 2-shard model."""
    from rigkit import offline

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SandboxError("the sandbox's generated model needs gguf: pip install 'rigkit[sandbox]' "
                           "(or run `sandbox up --no-sources` for the sample deploy only)") from None
    cache = cache_dir()
    mirror = cache / "mirrors" / "llama.cpp.git"
    started = time.monotonic()
    tags = sorted(f"b{offline.LLAMA_RELEASES[v][0]}" for v in SANDBOX_LLAMA_VERSIONS)
    if not offline.mirror_tags(mirror) >= set(tags):
        progress(f"making the local llama.cpp git mirror ({', '.join(tags)}) from PyPI sdists (once)")
        offline.make_llama_mirror(mirror, SANDBOX_LLAMA_VERSIONS, cache / "sdists")
    model_dir = cache / "models" / "tiny-qwen"
    if not (model_dir / "tiny-qwen-00002-of-00002.gguf").exists():
        progress("generating the tiny 2-shard test model (once)")
        offline.make_tiny_model(offline.MirrorRef(mirror, "b11312"), model_dir)
    progress(f"sources ready in {time.monotonic() - started:.1f}s")


def up(hosts: int = 2, boot_timeout: float = 60.0, sources: bool = True) -> Sandbox:
    """Bring the sandbox to exactly ``hosts`` running hosts; idempotent."""
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
    bridge_up = _link_exists(f"rkbr-{tag}")
    if sb is not None:
        sb.hosts = [h for h in sb.hosts if bridge_up and _alive(h.pid, "systemd-nspawn")]
    created_bridge = False
    created: list[SandboxHost] = []
    try:
        key = _ensure_key(state)
        if sb is None or not bridge_up:
            _clean_stale(state, tag, keep=set())
            if bridge_up:  # a bridge without an inventory: left by a killed run
                run(["ip", "link", "delete", f"rkbr-{tag}"])
            if sb is not None:
                _stop_services(sb)
            subnet = allocate_subnet(tag)
            sb = Sandbox(tag=tag, subnet=str(subnet), gateway=str(subnet.network_address + 1),
                         ssh_key=str(key), known_hosts=str(state / "known_hosts"))
            run(["ip", "link", "add", sb.bridge, "type", "bridge"])
            created_bridge = True
            run(["ip", "addr", "add", f"{sb.gateway}/{subnet.prefixlen}", "dev", sb.bridge])
            run(["ip", "link", "set", sb.bridge, "up"])
        else:
            _clean_stale(state, tag, keep={h.netns for h in sb.hosts})
        base = ensure_base()
        if sources:
            ensure_sources()
        _start_services(sb, state)
        sb.save(inventory)
        for extra in [h for h in sb.hosts if h.index > hosts]:
            log(f"stopping {extra.name}")
            _destroy_host(sb, state, extra)
            sb.hosts.remove(extra)
        present = {h.index for h in sb.hosts}
        for index in range(1, hosts + 1):
            if index in present:
                continue
            started = time.monotonic()
            host = _create_host(sb, state, base, index, key, boot_timeout)
            created.append(host)
            sb.save(inventory)
            log(f"{host.name} up at {host.address} in {time.monotonic() - started:.1f}s")
        sb.hosts.sort(key=lambda h: h.index)
        _write_known_hosts(sb, state)
        sb.save(inventory)
        return sb
    except BaseException:
        log("up failed: removing what this run created")
        if sb is not None:
            for host in created + [h for h in sb.hosts if h not in created and h.pid and not _alive(h.pid)]:
                _destroy_host(sb, state, host)
                if host in sb.hosts:
                    sb.hosts.remove(host)
            if created_bridge:
                down()
            else:
                sb.save(inventory)
        raise


def _stop_services(sb: Sandbox) -> None:
    for name, pid in sb.services.items():
        _stop_pid(pid, SERVICE_COMM.get(name, name))


def down() -> list[str]:
    """Stop every host and service this sandbox started and remove what it created."""
    check_prerequisites()
    state = state_dir()
    inventory = state / "inventory.json"
    tag = instance_tag()
    sb = Sandbox.load(inventory)
    removed = []
    if sb is not None:
        for host in list(sb.hosts):
            _destroy_host(sb, state, host)
            removed.append(host.name)
        _stop_services(sb)
    _clean_stale(state, tag, keep=set())
    run(["ip", "link", "delete", f"rkbr-{tag}"], check=False)  # gone already, unless stale
    for cg in _cgroup_dirs(tag):
        _remove_cgroup_tree(cg)
    for leftover in ("inventory.json", "known_hosts", "git-daemon.pid", "hf-mirror.log"):
        (state / leftover).unlink(missing_ok=True)
    shutil.rmtree(state / "apt-cacher-ng", ignore_errors=True)
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
        "hosts": [
            {"name": h.name, "address": h.address, "pid": h.pid, "running": running,
             "ssh": running and _ssh_ready(h.address, 2)}
            for h, running in ((h, _alive(h.pid, "systemd-nspawn")) for h in sb.hosts)
        ],
        "services": {name: {"pid": pid, "running": _alive(pid, SERVICE_COMM.get(name))}
                     for name, pid in sb.services.items()},
    }


def pyinfra_hosts(state: Path | None = None) -> list[tuple[str, dict]]:
    """Inventory entries for pyinfra: ``(name, data)`` per running sandbox host."""
    sb = Sandbox.load((state or state_dir()) / "inventory.json")
    if sb is None or not sb.hosts:
        raise SandboxError("no sandbox is up: run `sudo rigkit sandbox up --hosts 2` first")
    return [
        (h.name, {
            "ssh_hostname": h.address,
            "ssh_user": "root",
            "ssh_key": sb.ssh_key,
            "ssh_known_hosts_file": sb.known_hosts,
            "ssh_strict_host_key_checking": "yes",
            "sandbox_gateway": sb.gateway,
            "sandbox_git_url": sb.git_url,
            "sandbox_hf_endpoint": sb.hf_endpoint,
            "sandbox_models": str(cache_dir() / "models"),
        })
        for h in sb.hosts
    ]
