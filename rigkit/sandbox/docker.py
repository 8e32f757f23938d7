"""A sandbox host that uses the build machine's Docker engine: a dockerd started in the
host's network namespace (so ``--network host`` containers listen where the host's services
do) whose socket lies inside the host's root (``/srv/rigkit-docker/docker.sock``, linked from
``/run/docker.sock``), the docker CLI copied in and a ``docker`` group of the same GID. Docker
inside an nspawn host does not work (pitfall 9); this is the way round. Test tooling only."""

from __future__ import annotations

import grp
import shlex
import shutil
import subprocess
from pathlib import Path

from rigkit.sandbox.hosts import host_dir
from rigkit.sandbox.state import Sandbox, SandboxHost, state_dir

SOCKET_DIR = "srv/rigkit-docker"


def host_root(host: SandboxHost, state: Path | None = None) -> Path:
    return host_dir(state or state_dir(), host.name) / "root"


def socket_path(host: SandboxHost, state: Path | None = None) -> Path:
    """Where dockerd puts its socket, seen from the build machine."""
    return host_root(host, state) / SOCKET_DIR / "docker.sock"


def netns_path(host: SandboxHost) -> str:
    return f"/run/netns/{host.netns}"


def prepare_client(sb: Sandbox, host: SandboxHost, group: str = "docker") -> Path:
    """The docker CLI, a ``docker`` group with the build machine's GID and the socket link in
    the host; returns the socket's path on the build machine (for ``dockerd -H``)."""
    root = host_root(host)
    (root / SOCKET_DIR).mkdir(parents=True, exist_ok=True)
    cli = shutil.which("docker")
    if cli is None:
        raise RuntimeError("no docker CLI on the build machine (apt-get install docker.io)")
    shutil.copy(cli, root / "usr/bin/docker")
    gid = grp.getgrnam(group).gr_gid
    if subprocess.run(["chroot", str(root), "getent", "group", group], capture_output=True).returncode != 0:
        subprocess.run(["chroot", str(root), "groupadd", "-g", str(gid), group], check=True, capture_output=True)
    tmpfiles = root / "etc/tmpfiles.d/rigkit-docker.conf"
    tmpfiles.parent.mkdir(parents=True, exist_ok=True)
    tmpfiles.write_text(f"L+ /run/docker.sock - - - - /{SOCKET_DIR}/docker.sock\n")
    sb.ssh(host, f"ln -sfn /{SOCKET_DIR}/docker.sock /run/docker.sock")
    return socket_path(host)


#: The host's directories that bind mounts of its units name (models, keys): dockerd resolves a
#: ``-v SRC:DST`` in its own mount namespace, where these are the host's.
HOST_PATHS = ("etc", "srv")


def dockerd_argv(host: SandboxHost, work: Path, group: str = "docker") -> list[str]:
    """dockerd in the host's network namespace, in a private mount namespace where /etc and
    /srv are the host's (so ``-v /srv/models/..`` and ``-v /etc/rigkit/..`` in its units name
    the host's files, and nothing is created on this machine); its state under ``work``; no
    iptables, bridge or forwarding changes to this machine."""
    root = host_root(host)
    binds = " && ".join(f"mount --bind {shlex.quote(str(root / p))} /{p}" for p in HOST_PATHS)
    dockerd = [
        "nsenter",
        f"--net={netns_path(host)}",
        "dockerd",
        "-H",
        f"unix://{socket_path(host)}",
        "--group",
        group,
        "--data-root",
        str(work / "data"),
        "--exec-root",
        str(work / "exec"),
        "--pidfile",
        str(work / "dockerd.pid"),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--ip-forward=false",
        "--ip-masq=false",
    ]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{binds} && exec {shlex.join(dockerd)}"]
