"""
Operations for the NVIDIA stack: NVIDIA's network repository (``cuda-keyring``), Debian's
``contrib``, the driver branch pinned and held, the container toolkit's key and Docker's
``nvidia`` runtime. Each reads the host's facts and yields the commands that bring it to
the state asked for, or says why there is nothing to do. :mod:`rigkit.nvidia.deploy` puts
them together; names and layout come from :mod:`rigkit.nvidia.repository`.

    from rigkit.operations import nvidia
    nvidia.driver(name="NVIDIA driver branch 580", branch="580", open_modules=True, distro="ubuntu")
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.facts.files import File, FindInFile

from rigkit.facts.nvidia import (
    CudaToolkit,
    DebianSourcesWithoutContrib,
    DockerRuntimes,
    HostOs,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaPackages,
)
from rigkit.hostdata.nvidia import Nvidia
from rigkit.nvidia.checks import (
    driver_installed,
    driver_outside_packages,
    other_branch,
    outside_message,
    toolkit_outside_packages,
)
from rigkit.nvidia.repository import (
    CONTAINER_KEYRING,
    DRIVER_PREFIXES,
    KEYRING_DEB,
    NOT_DRIVER_PREFIXES,
    driver_packages,
    is_driver_package,
    repo_dir,
    repo_list,
    toolkit_package,
)


def curl_protocols(url: str) -> tuple[str, ...]:
    """curl's options that keep it on the URL's scheme: an https URL is never redirected to
    plain http (host data's http opt-in allows http, and then the download is pinned)."""
    allowed = "=https" if url.lower().startswith("https://") else "=http,https"
    return ("--proto", allowed, "--proto-redir", allowed)


def sha256_check_command(path: str, sha256: str, what: str) -> str:
    """Fails, removing ``path``, unless the file's sha256 is the one host data pins."""
    return (
        f"echo {shlex.quote(f'{sha256}  {path}')} | sha256sum -c --status - "
        f"|| {{ rm -f {shlex.quote(path)}; echo {shlex.quote(f'{what}: sha256 is not {sha256} (host data pins it); not installed')} >&2; exit 1; }}"
    )


@operation()
def cuda_repository(repo_url: str, os: HostOs, sha256: str | None = None):
    """
    NVIDIA's network repository through its ``cuda-keyring`` package (the signing key and the
    source line for this distribution and architecture).

    + repo_url: the repository's root (host data ``repo_url``: NVIDIA's, or a mirror of it)
    + os: the host's distribution and architecture (fact ``NvidiaHostOs``), which pick the path
    + sha256: the package's sha256, checked before ``dpkg -i`` (host data ``keyring_sha256``;
      required for a plain-http mirror)

    .. code:: python

        nvidia.cuda_repository(repo_url=NVIDIA_REPO, os=host.get_fact(NvidiaHostOs))
    """
    url = f"{repo_url.rstrip('/')}/{repo_dir(os)}/"
    listed = host.get_fact(FindInFile, path=repo_list(os), pattern=url, interpolate_variables=False)
    if listed and "cuda-keyring" in host.get_fact(NvidiaPackages):
        host.noop(f"cuda-keyring installed, {repo_list(os)} names {url}")
        return
    tmp = f"/tmp/rigkit-{KEYRING_DEB}"
    yield StringCommand(
        "curl", "-fsSL", *curl_protocols(url), "--retry", "3", "-o", QuoteString(tmp), QuoteString(url + KEYRING_DEB)
    )
    if sha256 is not None:
        yield sha256_check_command(tmp, sha256, url + KEYRING_DEB)
    yield StringCommand("dpkg", "-i", QuoteString(tmp))
    yield StringCommand("rm", "-f", QuoteString(tmp))


@operation()
def debian_contrib():
    """
    ``contrib`` enabled beside ``main`` in Debian's sources (NVIDIA's Debian packages need it).

    .. code:: python

        nvidia.debian_contrib()
    """
    missing = host.get_fact(DebianSourcesWithoutContrib)
    if not missing:
        host.noop("contrib is enabled in Debian's sources")
        return
    for kind, path in missing:
        if kind == "list":
            script = r"/^deb(-src)? [^#]*debian/{/ contrib( |$)/!s/ main( |$)/ main contrib\1/}"
        else:
            script = r"/^Components:/{/ contrib( |$)/!s/ main( |$)/ main contrib\1/}"
        yield StringCommand("sed", "-i", "-E", QuoteString(script), QuoteString(path))


@operation()
def driver(branch: str, open_modules: bool, distro: str):
    """
    The driver branch, pinned the repository's way (:mod:`rigkit.nvidia.repository`), its
    packages held. A branch change unholds, installs the new branch (up or down) and holds again.
    A driver of the branch that is loaded and answering, installed outside Debian packages
    (the ``.run`` installer, the machine's image), is kept as it is; one of another branch
    installed that way is an error, not a second driver.

    + branch: the driver branch, ``"580"`` (host data ``driver_branch``)
    + open_modules: the open kernel modules (``nvidia-open``) rather than the proprietary ones
    + distro: ``ubuntu`` or ``debian`` (fact ``NvidiaHostOs``), which decides how a branch is pinned

    .. code:: python

        nvidia.driver(branch="580", open_modules=True, distro="ubuntu")
    """
    number = int(branch)
    pin, meta = driver_packages(distro, number, open_modules)
    pkgs = host.get_fact(NvidiaPackages)
    outside = driver_outside_packages(host.get_fact(NvidiaDriver), host.get_fact(NvidiaGpus), pkgs)
    if outside is not None:
        mismatch = other_branch(Nvidia(driver_branch=branch), outside)
        if mismatch:
            raise OperationError(mismatch)
        host.noop(f"{outside_message(outside)}: kept")
        return
    if driver_installed(pkgs, distro, number, open_modules):
        unheld = sorted(
            n for n, p in pkgs.items() if is_driver_package(n) and p.version.startswith(f"{branch}.") and not p.held
        )
        if unheld:
            yield StringCommand("apt-mark", "hold", *(QuoteString(n) for n in unheld))
        else:
            host.noop(f"driver branch {branch} installed ({meta} {pkgs[meta].version}), packages held")
        return
    held = sorted(n for n, p in pkgs.items() if p.held and is_driver_package(n))
    if held:
        yield StringCommand("apt-mark", "unhold", *(QuoteString(n) for n in held))
    # A pinning package replaces another branch's (they conflict), so this also switches.
    for package in ([pin] if pin else []) + [meta]:
        yield noninteractive_apt(f"install --allow-downgrades --no-install-recommends {shlex.quote(package)}")
    yield hold_driver_command(branch)


@operation()
def cuda_toolkit(release: str):
    """
    The CUDA toolkit release from the repository (``cuda-toolkit-X-Y``), unless that release is
    on disk already, whatever installed it (``/usr/local/cuda*``: its ``version.json`` or its
    ``nvcc``): then it is kept, and no second copy is installed.

    + release: the toolkit release, ``"13.0"`` (host data ``cuda_toolkit``)

    .. code:: python

        nvidia.cuda_toolkit(release="13.0")
    """
    package = toolkit_package(release)
    pkgs = host.get_fact(NvidiaPackages)
    if package in pkgs:
        host.noop(f"package {package} is installed ({pkgs[package].version})")
        return
    found = toolkit_outside_packages(release, host.get_fact(CudaToolkit), pkgs)
    if found:
        host.noop(f"CUDA {release} is on disk ({', '.join(found)}), installed outside the {package} package: kept")
        return
    yield noninteractive_apt(f"install --no-install-recommends {shlex.quote(package)}")


def hold_driver_command(branch: str) -> str:
    """Hold every installed driver package of ``branch`` (read when it runs, after the install)."""
    prefixes = "|".join(p.replace("-", "\\-") for p in DRIVER_PREFIXES)
    excluded = "|".join(p.replace("-", "\\-") for p in NOT_DRIVER_PREFIXES)
    return (
        f"dpkg-query -W -f='${{Package}} ${{Version}}\\n' | awk '$2 ~ /^{branch}\\./ {{print $1}}' "
        f"| grep -E '^({prefixes})' | grep -vE '^({excluded})' | xargs -r apt-mark hold"
    )


@operation()
def container_key(url: str, sha256: str | None = None):
    """
    The container toolkit repository's signing key, dearmored into its keyring (once).

    + url: where the key is served (host data ``container_key_url``)
    + sha256: the key's sha256 as served, checked before it is installed (host data
      ``container_key_sha256``; required for a plain-http mirror)

    .. code:: python

        nvidia.container_key(url="https://nvidia.github.io/libnvidia-container/gpgkey")
    """
    if host.get_fact(File, path=CONTAINER_KEYRING):
        host.noop(f"{CONTAINER_KEYRING} is there")
        return
    tmp = "/tmp/rigkit-nvidia-container-gpgkey"
    yield StringCommand("curl", "-fsSL", *curl_protocols(url), "--retry", "3", "-o", QuoteString(tmp), QuoteString(url))
    if sha256 is not None:
        yield sha256_check_command(tmp, sha256, url)
    yield (
        f"gpg --batch --yes --dearmor -o {CONTAINER_KEYRING}.new {tmp} "
        f"&& mv {CONTAINER_KEYRING}.new {CONTAINER_KEYRING} && rm -f {tmp}"
    )


@operation()
def docker_runtime():
    """
    Docker configured for the NVIDIA runtime (``nvidia-ctk runtime configure --runtime=docker``),
    restarted, and ``docker info`` listing ``nvidia`` among its runtimes.

    .. code:: python

        nvidia.docker_runtime()
    """
    runtimes = host.get_fact(DockerRuntimes)
    if runtimes is not None and "nvidia" in runtimes:
        host.noop("docker info lists the nvidia runtime")
        return
    yield "nvidia-ctk runtime configure --runtime=docker"
    yield "systemctl restart docker"
    yield (
        "docker info --format '{{json .Runtimes}}' | grep -q '\"nvidia\"' "
        "|| { echo 'docker info does not list the nvidia runtime' >&2; exit 1; }"
    )
