"""
A STAND-IN for NVIDIA's network repositories, for tests: NVIDIA's cannot be reached from here.

Laid out like the real ones and served over HTTP:

    compute/cuda/repos/debian12/x86_64/      flat apt repository ("deb [signed-by=...] URL /"),
                                             InRelease/Release.gpg signed with a test key made
                                             now with gpg
    libnvidia-container/stable/deb/amd64/    the container toolkit's repository, same key
    libnvidia-container/gpgkey               that key, armored

with small packages that carry the real names and dependency structure: ``cuda-keyring``
(installs the test key and the source line), per driver branch the pinning package
``nvidia-driver-pinning-<branch>`` (an apt preferences file; the branches' pinning packages
conflict, so installing one replaces the other), ``nvidia-open`` / ``cuda-drivers`` meta
packages, ``nvidia-kernel-open-dkms``, ``libnvidia-compute`` (a ``libnvidia-ml.so.<version>``),
``nvidia-driver-cuda`` with an ``nvidia-smi`` STAND-IN that prints a recording
(tests/recordings/nvidia) and keeps power limits set with ``-pl`` in ``/dev/shm`` (lost at a
reboot, like the driver's), ``nvidia-persistenced`` (a unit that sleeps), ``cuda-toolkit-13-0``,
kernel headers for the build machine's kernel (the sandbox hosts run it), and the container
toolkit with an ``nvidia-ctk`` STAND-IN that writes Docker's ``daemon.json`` as the real one does.
Nothing here is NVIDIA's software.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from pathlib import Path

BRANCHES = {"580": "580.95.05", "590": "590.48.01"}
TOOLKITS = {"13.0": "13.0.88"}
CONTAINER_TOOLKIT = "1.18.0"
KEYRING_PATH = "/usr/share/keyrings/cuda-archive-keyring.gpg"
RECORDINGS = Path(__file__).resolve().parent.parent / "recordings" / "nvidia"

NVIDIA_SMI = r'''#!/usr/bin/python3
"""STAND-IN for nvidia-smi (rigkit tests): prints recorded GPUs; not NVIDIA's program."""
import os, sys

VERSION = "@VERSION@"
RECORDING = next(p for p in ("/etc/nvidia-standin/query-gpu.csv", "/usr/share/nvidia-standin/query-gpu.csv")
                 if os.path.exists(p))
STATE = "/dev/shm/nvidia-standin"
FIELDS = ["index", "uuid", "name", "compute_cap", "memory.total", "power.limit", "power.min_limit",
          "power.max_limit", "driver_version"]


def gpus():
    rows = []
    for line in open(RECORDING):
        if not line.strip():
            continue
        row = dict(zip(FIELDS, [p.strip() for p in line.split(",")]))
        row["driver_version"] = VERSION
        state = os.path.join(STATE, "power-limit." + row["uuid"])
        if os.path.exists(state):
            row["power.limit"] = open(state).read().strip()
        rows.append(row)
    return rows


def loaded_module():
    try:
        return open("/sys/module/nvidia/version").read().strip()
    except OSError:
        return None  # the sandbox has no NVIDIA module: behave as if the installed one is loaded


def main(args):
    module = loaded_module()
    if module is not None and module != VERSION:
        print("Failed to initialize NVML: Driver/library version mismatch")
        print("NVML library version: " + ".".join(VERSION.split(".")[:2]))
        return 18
    if args[:1] == ["--version"]:
        print("NVIDIA-SMI version  : " + VERSION)
        return 0
    rows = gpus()
    if "-i" in args:
        wanted = args[args.index("-i") + 1]
        rows = [r for r in rows if wanted in (r["index"], r["uuid"])]
        if not rows:
            print("No devices were found")
            return 6
    if "-L" in args:
        for r in rows:
            print("GPU %s: %s (UUID: %s)" % (r["index"], r["name"], r["uuid"]))
        return 0
    if "-pl" in args:
        watts = float(args[args.index("-pl") + 1])
        for r in rows:
            if "N/A" in r["power.min_limit"]:
                print("Changing power management limit is not supported for GPU: %s." % r["uuid"])
                return 3
            low, high = float(r["power.min_limit"]), float(r["power.max_limit"])
            if not low <= watts <= high:
                print("Provided power limit %.2f W is not a valid power limit which should be between "
                      "%.2f W and %.2f W for GPU %s" % (watts, low, high, r["uuid"]))
                return 2
            os.makedirs(STATE, exist_ok=True)
            with open(os.path.join(STATE, "power-limit." + r["uuid"]), "w") as f:
                f.write("%.2f\n" % watts)
            print("Power limit for GPU %s was set to %.2f W from %s W." % (r["uuid"], watts, r["power.limit"]))
        print("All done.")
        return 0
    query = [a for a in args if a.startswith("--query-gpu=")]
    if query:
        fields = query[0].split("=", 1)[1].split(",")
        for r in rows:
            print(", ".join(r[f] for f in fields))
        return 0
    print("rigkit nvidia-smi stand-in: %d GPU(s), driver %s" % (len(gpus()), VERSION))
    return 0


sys.exit(main(sys.argv[1:]))
'''

NVIDIA_CTK = r'''#!/usr/bin/python3
"""STAND-IN for nvidia-ctk (rigkit tests): `runtime configure --runtime=docker` only."""
import json, os, sys

args = sys.argv[1:]
if args[:2] != ["runtime", "configure"] or "--runtime=docker" not in args:
    print("nvidia-ctk stand-in: only `runtime configure --runtime=docker`", file=sys.stderr)
    sys.exit(1)
path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "/etc/docker/daemon.json")
config = json.load(open(path)) if os.path.exists(path) else {}
config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(config, f, indent=4)
print("INFO Wrote updated config to " + path)
print("INFO It is recommended that docker daemon be restarted.")
'''

PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon (rigkit test stand-in)
Wants=syslog.target

[Service]
Type=simple
ExecStart=/usr/bin/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""


@dataclass
class StandIn:
    root: Path  # everything: the key's GNUPGHOME, the package trees, www/
    base_url: str

    @property
    def www(self) -> Path:
        return self.root / "www"

    @property
    def repo_url(self) -> str:
        """Host data ``nvidia.repo_url`` for this stand-in."""
        return f"{self.base_url}/compute/cuda/repos"

    @property
    def container_repo_url(self) -> str:
        return f"{self.base_url}/libnvidia-container/stable/deb"

    @property
    def container_key_url(self) -> str:
        return f"{self.base_url}/libnvidia-container/gpgkey"

    def host_data(self, **nvidia) -> dict:
        """Host data ``nvidia`` for this stand-in: served over plain http on the sandbox, so
        opted in to an http mirror, the keyring package and GPG key pinned by their sha256."""
        return {
            "repo_url": self.repo_url,
            "container_repo_url": self.container_repo_url,
            "container_key_url": self.container_key_url,
            "insecure_http_mirror": self.base_url.startswith("http://"),
            "keyring_sha256": self.sha256("compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb"),
            "container_key_sha256": self.sha256("libnvidia-container/gpgkey"),
            **nvidia,
        }

    def sha256(self, path: str) -> str:
        """sha256 of a file the stand-in serves."""
        return hashlib.sha256((self.www / path).read_bytes()).hexdigest()


def _gpg(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", *args],
        check=True,
        capture_output=True,
        **kwargs,
    )


def _deb(
    out: Path,
    name: str,
    version: str,
    arch: str = "amd64",
    depends: str = "",
    files=None,
    extra: str = "",
    postinst: str = "",
    prerm: str = "",
    description: str = "",
) -> None:
    tree = Path(tempfile.mkdtemp(prefix=f"standin-{name}-"))
    tree.chmod(0o755)
    (tree / "DEBIAN").mkdir()
    for path, (content, mode) in (files or {}).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        target.chmod(mode)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: rigkit tests <standin@rigkit.invalid>\nSection: misc\nPriority: optional\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    control += extra
    control += f"Description: STAND-IN for NVIDIA's {name} (rigkit tests)\n {description or 'not NVIDIA software'}\n"
    (tree / "DEBIAN" / "control").write_text(control)
    for script, body in (("postinst", postinst), ("prerm", prerm)):
        if body:
            (tree / "DEBIAN" / script).write_text(f"#!/bin/sh\nset -e\n{body}\n")
            (tree / "DEBIAN" / script).chmod(0o755)
    try:
        subprocess.run(
            [
                "dpkg-deb",
                "-Zgzip",
                "--root-owner-group",
                "--build",
                str(tree),
                str(out / f"{name}_{version}_{arch}.deb"),
            ],
            check=True,
            capture_output=True,
        )
    finally:
        shutil.rmtree(tree)


def _same(version: str, *names: str) -> str:
    """Depends on each of ``names`` at exactly ``version``."""
    return ", ".join(f"{n} (= {version})" for n in names)


def _index(repo: Path, home: Path, label: str) -> None:
    """Packages, Release, InRelease and Release.gpg of a flat repository."""
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True, capture_output=True
    ).stdout
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = [
        "Origin: rigkit stand-in",
        f"Label: {label} (rigkit test stand-in)",
        "Architectures: amd64 all",
        f"Date: {formatdate(time.time(), usegmt=True)}",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")
    _gpg(home, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release"))
    _gpg(home, "--armor", "--detach-sign", "-o", str(repo / "Release.gpg"), str(repo / "Release"))


def build(
    root: Path, base_url: str, kernel: str | None = None, recording: Path = RECORDINGS / "rtx3090x6-query-gpu.csv"
) -> StandIn:
    """Make the stand-in repositories under ``root`` for hosts that reach it at ``base_url``."""
    standin = StandIn(root=root, base_url=base_url.rstrip("/"))
    kernel = kernel or os.uname().release
    home = root / "gnupg"
    home.mkdir(parents=True, mode=0o700, exist_ok=True)
    _gpg(
        home,
        "--quick-generate-key",
        "rigkit stand-in NVIDIA repository (TEST KEY) <standin@rigkit.invalid>",
        "ed25519",
        "sign",
        "1d",
    )
    key = _gpg(home, "--export").stdout
    armored = _gpg(home, "--armor", "--export").stdout

    cuda = standin.www / "compute/cuda/repos/debian12/x86_64"
    cuda.mkdir(parents=True)
    _deb(
        cuda,
        "cuda-keyring",
        "1.1-1",
        "all",
        files={
            KEYRING_PATH: (key, 0o644),
            "/etc/apt/sources.list.d/cuda-debian12-x86_64.list": (
                f"deb [signed-by={KEYRING_PATH}] {standin.repo_url}/debian12/x86_64/ /\n",
                0o644,
            ),
        },
        description="GPG keyring for the CUDA repository: the stand-in's test key and source line",
    )
    pinned = (
        "nvidia-open cuda-drivers nvidia-driver-cuda nvidia-kernel-open-dkms nvidia-kernel-dkms "
        "libnvidia-compute nvidia-persistenced"
    )
    for branch, upstream in BRANCHES.items():
        v = f"{upstream}-1"
        _deb(
            cuda,
            f"nvidia-driver-pinning-{branch}",
            v,
            "all",
            extra="Provides: nvidia-driver-pinning\nConflicts: nvidia-driver-pinning\nReplaces: nvidia-driver-pinning\n",
            files={
                f"/etc/apt/preferences.d/nvidia-driver-pinning-{branch}": (
                    f"Package: {pinned}\nPin: version {branch}.*\nPin-Priority: 1000\n",
                    0o644,
                )
            },
        )
        _deb(
            cuda,
            "nvidia-open",
            v,
            "all",
            depends=_same(
                v, "nvidia-driver-cuda", "nvidia-kernel-open-dkms", "libnvidia-compute", "nvidia-persistenced"
            ),
        )
        _deb(
            cuda,
            "cuda-drivers",
            v,
            "amd64",
            depends=_same(v, "nvidia-driver-cuda", "nvidia-kernel-dkms", "libnvidia-compute", "nvidia-persistenced"),
        )
        for flavour, other in (
            ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"),
            ("nvidia-kernel-dkms", "nvidia-kernel-open-dkms"),
        ):
            _deb(
                cuda,
                flavour,
                v,
                extra=f"Conflicts: {other}\n",
                files={f"/usr/src/nvidia-{upstream}/STANDIN": ("rigkit stand-in: no kernel module\n", 0o644)},
            )
        _deb(
            cuda,
            "libnvidia-compute",
            v,
            files={f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{upstream}": ("rigkit stand-in\n", 0o644)},
        )
        _deb(
            cuda,
            "nvidia-driver-cuda",
            v,
            depends=_same(v, "libnvidia-compute"),
            files={
                "/usr/bin/nvidia-smi": (NVIDIA_SMI.replace("@VERSION@", upstream), 0o755),
                "/usr/share/nvidia-standin/query-gpu.csv": (recording.read_text(), 0o644),
            },
        )
        _deb(
            cuda,
            "nvidia-persistenced",
            v,
            files={
                "/usr/bin/nvidia-persistenced": ("#!/bin/sh\n# rigkit stand-in\nexec sleep infinity\n", 0o755),
                "/lib/systemd/system/nvidia-persistenced.service": (PERSISTENCED_UNIT, 0o644),
            },
        )
    for release, upstream in TOOLKITS.items():
        home_dir = f"/usr/local/cuda-{release}"
        _deb(
            cuda,
            f"cuda-toolkit-{release.replace('.', '-')}",
            f"{upstream}-1",
            files={
                f"{home_dir}/version.json": ('{"cuda" : {"name" : "CUDA SDK", "version" : "%s"}}\n' % upstream, 0o644),
                f"{home_dir}/bin/nvcc": (
                    f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{upstream} (rigkit stand-in)'\n",
                    0o755,
                ),
            },
            postinst=f"update-alternatives --install /usr/local/cuda cuda {home_dir} {release.replace('.', '')}",
            prerm=f"update-alternatives --remove cuda {home_dir}",
        )
    _deb(
        cuda,
        f"linux-headers-{kernel}",
        "1-1",
        files={f"/usr/src/linux-headers-{kernel}/STANDIN": ("rigkit stand-in kernel headers\n", 0o644)},
    )
    _index(cuda, home, "NVIDIA CUDA")

    container = standin.www / "libnvidia-container/stable/deb/amd64"
    container.mkdir(parents=True)
    v = f"{CONTAINER_TOOLKIT}-1"
    _deb(container, "libnvidia-container1", v)
    _deb(container, "libnvidia-container-tools", v, depends=f"libnvidia-container1 (>= {v})")
    _deb(
        container,
        "nvidia-container-toolkit-base",
        v,
        files={
            "/usr/bin/nvidia-ctk": (NVIDIA_CTK, 0o755),
            "/usr/bin/nvidia-container-runtime": ("#!/bin/sh\nexit 0\n", 0o755),
        },
    )
    _deb(
        container,
        "nvidia-container-toolkit",
        v,
        depends=f"nvidia-container-toolkit-base (= {v}), libnvidia-container-tools (>= {v})",
    )
    _index(container, home, "NVIDIA container toolkit")
    (standin.www / "libnvidia-container/gpgkey").write_bytes(armored)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
    return standin


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def serve(www: Path, address: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    """Serve ``www`` on ``address:port`` from a thread; ``.shutdown()`` stops it."""
    server = http.server.ThreadingHTTPServer((address, port), partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
