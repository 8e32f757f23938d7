"""NVIDIA facts, host data, repository layout, checks and the power unit, from recordings
(tests/recordings/nvidia: the H100 recorded on the lent GPU machine, the RTX 3090 and GB10
written from NVIDIA's documented formats)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from rigkit.facts import nvidia as facts
from rigkit.facts.nvidia import DgxOs, HostOs, NvidiaPackages, SecureBootState, parse_gpus
from rigkit.hostdata.nvidia import NVIDIA_REPO, parse_nvidia
from rigkit.hostdata.schema import HostDataError
from rigkit.nvidia import checks, repository
from rigkit.operations import nvidia as ops
from rigkit.render import nvidia as render

REC = Path(__file__).parent / "recordings" / "nvidia"
UBUNTU = HostOs(distro="ubuntu", release="24.04", arch="x86_64", kernel="6.8.0-45-generic")
NO_SB = SecureBootState(enabled=False, signing_key=None)


def gpus(name: str):
    return parse_gpus((REC / f"{name}-query-gpu.csv").read_text().splitlines())


# --- GPU facts -----------------------------------------------------------------------------


def test_h100_recording():
    [gpu] = gpus("h100")
    assert gpu.index == 0 and gpu.uuid == "GPU-73736827-e95d-f8bc-dbc4-a81d0f9fa17c"
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.compute_cap, gpu.cuda_arch, gpu.memory_mib) == ("9.0", "90", 81559)
    assert (gpu.power_limit_w, gpu.power_min_w, gpu.power_max_w) == (700.0, 200.0, 700.0)
    assert gpu.driver_version == "580.159.04" and gpu.power_settable


def test_rtx3090_recording_six_gpus():
    rig = gpus("rtx3090x6")
    assert [g.index for g in rig] == list(range(6))
    assert {g.cuda_arch for g in rig} == {"86"}
    assert len({g.uuid for g in rig}) == 6
    assert all(g.power_limit_w == 350.0 and g.memory_mib == 24576 for g in rig)


def test_gb10_na_fields_become_none():
    [gpu] = gpus("gb10")
    assert gpu.cuda_arch == "121"
    assert gpu.memory_mib is None and gpu.power_limit_w is None
    assert gpu.power_min_w is None and gpu.power_max_w is None
    assert not gpu.power_settable
    assert gpu.driver_version == "580.95.05"


def test_not_supported_is_none_too():
    [gpu] = parse_gpus(
        [
            "0, GPU-00000000-0000-0000-0000-000000000001, Some GPU, 8.9, 23028, [Not Supported], [Not Supported], [Not Supported], 580.95.05"
        ]
    )
    assert gpu.power_limit_w is None and gpu.memory_mib == 23028


def test_nvml_mismatch_is_no_gpus_not_a_crash():
    assert parse_gpus((REC / "nvml-mismatch.txt").read_text().splitlines()) is None
    assert facts.NvidiaGpus().process([]) == []


# --- driver, toolkit, DGX, Secure Boot, OS -----------------------------------------------------


def test_kernel_userspace_mismatch_is_reboot_pending():
    state = facts.parse_driver(
        [
            "sys 580.95.05",
            "proc NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)",
            "lib /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            "lib /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.126.09",
            "smi Failed to initialize NVML: Driver/library version mismatch",
        ]
    )
    assert (state.kernel, state.userspace, state.open_kernel) == ("580.95.05", "580.126.09", True)
    assert state.reboot_pending and "mismatch" in state.nvml_error


def test_driver_states():
    h100 = facts.parse_driver(
        ["sys 580.159.04", "proc ", "lib /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04", "smi "]
    )
    assert not h100.reboot_pending and h100.nvml_error is None
    fresh = facts.parse_driver(["sys ", "proc ", "lib /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05"])
    assert fresh.kernel is None and fresh.reboot_pending  # installed, never loaded
    assert not facts.parse_driver(["sys ", "proc "]).reboot_pending  # no driver at all
    # Only /proc (older kernels): the version comes from its first line.
    proc = facts.parse_driver(
        ["sys ", "proc NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.172.08  Tue Jul 8 2025"]
    )
    assert proc.kernel == "570.172.08" and proc.open_kernel is False


def test_toolkits():
    out = [
        '/usr/local/cuda {"cuda" : {"name" : "CUDA SDK", "version" : "13.0.2"}}',
        '/usr/local/cuda-12.8 {"cuda" : {"name" : "CUDA SDK", "version" : "12.8.1"}}',
        '/usr/local/cuda-13.0 {"cuda" : {"name" : "CUDA SDK", "version" : "13.0.2"}}',
        "/usr/local/cuda-broken {not json",
    ]
    assert facts.parse_toolkits(out) == facts.CudaToolkits(installed=("12.8", "13.0"), default="13.0")


def test_dgx_release_and_secure_boot_and_os():
    release = DgxOs().process(
        ['DGX_NAME="DGX Spark"', 'DGX_PRETTY_NAME="NVIDIA DGX Spark"', 'DGX_SWBUILD_VERSION="7.2.3"']
    )
    assert release["DGX_NAME"] == "DGX Spark"
    assert DgxOs().process([]) is None
    assert facts.parse_secure_boot(["mokutil SecureBoot enabled"]) == SecureBootState(True, None)
    assert facts.parse_secure_boot(["mokutil SecureBoot disabled", "key /var/lib/dkms/mok.pub"]).enabled is False
    assert facts.parse_secure_boot(["efivar  6 0 0 0 1"]) == SecureBootState(True, None)
    assert facts.parse_secure_boot([]) == SecureBootState(None, None)
    assert facts.parse_os(["id ubuntu", "version 24.04", "arch aarch64", "kernel 6.11.0-1016-nvidia"]) == HostOs(
        "ubuntu", "24.04", "aarch64", "6.11.0-1016-nvidia"
    )


def test_packages_fact_reads_holds():
    pkgs = NvidiaPackages().process(
        [
            "hi  nvidia-open 580.95.05-1 hold",
            "ii  libnvidia-compute 580.95.05-1 install",
            "un  nvidia-driver-pinning-590 <none> unknown",
        ]
    )
    assert pkgs["nvidia-open"].held and not pkgs["libnvidia-compute"].held
    assert "nvidia-driver-pinning-590" not in pkgs


def test_fact_commands_only_read():
    for cls in (
        facts.NvidiaGpus,
        facts.NvidiaDriver,
        facts.CudaToolkit,
        facts.DgxOs,
        facts.SecureBoot,
        facts.NvidiaHostOs,
        facts.NvidiaPackages,
        facts.DockerRuntimes,
        facts.DebianSourcesWithoutContrib,
    ):
        command = cls().command()
        for writer in (" -pl", "-pm", "-lgc", "--gpu-reset", "-mig", "apt-get", "> /", "tee "):
            assert writer not in command, (cls.__name__, writer)


# --- repository layout -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "distro,release,arch,path",
    [
        ("ubuntu", "22.04", "x86_64", "ubuntu2204/x86_64"),
        ("ubuntu", "24.04", "x86_64", "ubuntu2404/x86_64"),
        ("ubuntu", "24.04", "aarch64", "ubuntu2404/sbsa"),
        ("debian", "12", "x86_64", "debian12/x86_64"),
    ],
)
def test_repo_line_per_distro_and_arch(distro, release, arch, path):
    os = HostOs(distro, release, arch, "k")
    assert repository.repo_dir(os) == path
    assert repository.repo_line(NVIDIA_REPO, os) == (
        "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
        f"https://developer.download.nvidia.com/compute/cuda/repos/{path}/ /"
    )
    assert repository.repo_list(os) == f"/etc/apt/sources.list.d/cuda-{path.replace('/', '-')}.list"


def test_unknown_distro_is_refused():
    with pytest.raises(ValueError, match="no ubuntu 20.10"):
        repository.repo_dir(HostOs("ubuntu", "20.10", "x86_64", "k"))
    nv = parse_nvidia("h", {"driver_branch": "580"})
    assert "no fedora" in " ".join(
        checks.problems(nv, HostOs("fedora", "41", "x86_64", "k"), None, NO_SB, None, True, False)
    )


def test_branch_pinning_the_repository_way():
    assert repository.driver_packages("ubuntu", 580, True) == (None, "nvidia-open-580")
    assert repository.driver_packages("ubuntu", 580, False) == (None, "cuda-drivers-580")
    assert repository.driver_packages("ubuntu", 590, True) == ("nvidia-driver-pinning-590", "nvidia-open")
    assert repository.driver_packages("ubuntu", 595, False) == ("nvidia-driver-pinning-595", "cuda-drivers")
    assert repository.driver_packages("debian", 580, True) == ("nvidia-driver-pinning-580", "nvidia-open")
    assert repository.toolkit_package("13.0") == "cuda-toolkit-13-0"
    hold = ops.hold_driver_command("580")
    assert "apt-mark hold" in hold and "/^580\\./" in hold and "nvidia\\-container" in hold
    assert repository.is_driver_package("libnvidia-compute") and not repository.is_driver_package(
        "nvidia-container-toolkit"
    )
    assert not repository.is_driver_package("cuda-toolkit-13-0") and repository.is_driver_package("cuda-drivers-580")


# --- host data ---------------------------------------------------------------------------------


def test_host_data_defaults_and_values():
    nv = parse_nvidia(
        "rig",
        {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350, "container_toolkit": True},
        gpu_count=6,
    )
    assert nv.open_modules and not nv.reboot and nv.branch == 580
    assert nv.power_limits(6) == (350,) * 6
    per = parse_nvidia("rig", {"driver_branch": "580", "power_limit_w": [300, 350]}, gpu_count=2)
    assert per.power_limits(2) == (300, 350)
    assert parse_nvidia("rig", None) is None


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"driver_branch": "58O"}, "nvidia.driver_branch"),
        ({"driver_branch": "580\n"}, "nvidia.driver_branch"),
        ({"driver_branch": "$(reboot)"}, "nvidia.driver_branch"),
        ({"driver_branch": "58\u0660"}, "nvidia.driver_branch"),  # an Arabic-Indic zero
        ({"driver_branch": True}, "nvidia.driver_branch"),
        ({"driver_branch": "470"}, "nvidia.open_modules"),  # no open modules before 515
        ({"driver_branch": "570", "cuda_toolkit": "13.0"}, "nvidia.driver_branch"),  # CUDA 13 needs 580
        ({"driver_branch": "580", "cuda_toolkit": "13"}, "nvidia.cuda_toolkit"),
        ({"driver_branch": "580", "cuda_toolkit": "9.2"}, "nvidia.cuda_toolkit"),
        ({"driver_branch": "580", "cuda_toolkit": "14.0"}, "nvidia.cuda_toolkit"),
        ({"power_limit_w": 0}, "nvidia.power_limit_w"),
        ({"power_limit_w": 350.5}, "nvidia.power_limit_w"),
        ({"power_limit_w": [350, 9999]}, "nvidia.power_limit_w[1]"),
        ({"power_limit_w": []}, "nvidia.power_limit_w"),
        ({"power_limit_w": [350, 350, 350]}, "nvidia.power_limit_w"),  # gpus.count is 6
        ({"reboot": "yes"}, "nvidia.reboot"),
        ({"repo_url": "http://mirror.lan/cuda\nrepos"}, "nvidia.repo_url"),
        ({"repo_url": "http://mirror.lan/$(id)"}, "nvidia.repo_url"),
        ({"container_key_url": "file:///etc/shadow"}, "nvidia.container_key_url"),
        ({"driver": "580"}, "nvidia.driver"),
    ],
)
def test_host_data_refused(raw, key):
    with pytest.raises(HostDataError) as err:
        parse_nvidia("rig", raw, gpu_count=6)
    assert err.value.key == key, str(err.value)
    assert str(err.value).startswith("host rig: ")


def test_proprietary_allowed_before_open_modules():
    assert not parse_nvidia("rig", {"driver_branch": "470", "open_modules": False}).open_modules


# --- checks against facts, before any change -------------------------------------------------------


def test_power_limit_out_of_range_refused():
    nv = parse_nvidia("rig", {"driver_branch": "580", "power_limit_w": 450})
    found = checks.problems(nv, UBUNTU, gpus("rtx3090x6"), NO_SB, None, False, False)
    assert len(found) == 6 and "450 W is outside GPU 0's range (NVIDIA GeForce RTX 3090: 100-400 W)" in found[0]
    ok = parse_nvidia("rig", {"driver_branch": "580", "power_limit_w": 350})
    assert checks.problems(ok, UBUNTU, gpus("rtx3090x6"), NO_SB, None, False, False) == []
    per = parse_nvidia("rig", {"driver_branch": "580", "power_limit_w": [350, 350]})
    assert "expected 6 values" in checks.problems(per, UBUNTU, gpus("rtx3090x6"), NO_SB, None, False, False)[0]
    h100 = parse_nvidia("rig", {"driver_branch": "580", "power_limit_w": 150})
    assert "200-700 W" in checks.problems(h100, UBUNTU, gpus("h100"), NO_SB, None, False, False)[0]


def test_gb10_has_no_power_limit_and_needs_open_modules():
    dgx = {"DGX_NAME": "DGX Spark"}
    nv = parse_nvidia("spark", {"power_limit_w": 100})
    [problem] = checks.problems(nv, UBUNTU, gpus("gb10"), NO_SB, dgx, False, False)
    assert "no settable power limit" in problem
    prop = parse_nvidia("spark", {"driver_branch": "580", "open_modules": False})
    assert (
        "only with the open kernel modules" in checks.problems(prop, UBUNTU, gpus("gb10"), NO_SB, None, True, False)[0]
    )


def test_secure_boot_without_key_stops_a_driver_install():
    nv = parse_nvidia("rig", {"driver_branch": "580"})
    on = SecureBootState(enabled=True, signing_key=None)
    [problem] = checks.problems(nv, UBUNTU, None, on, None, True, False)
    assert "Secure Boot is on and there is no module signing key" in problem
    assert checks.problems(nv, UBUNTU, None, on, None, False, False) == []  # nothing to install
    keyed = SecureBootState(enabled=True, signing_key="/var/lib/dkms/mok.pub")
    assert checks.problems(nv, UBUNTU, None, keyed, None, True, False) == []


def test_old_gpus_and_the_toolkit():
    pascal = parse_gpus(
        [
            "0, GPU-00000000-0000-0000-0000-000000000002, Tesla P100-PCIE-16GB, 6.0, 16384, 250.00, 125.00, 250.00, 580.95.05"
        ]
    )
    nv = parse_nvidia("rig", {"driver_branch": "580", "cuda_toolkit": "13.0"})
    found = " ".join(checks.problems(nv, UBUNTU, pascal, NO_SB, None, False, False))
    assert "needs the proprietary modules" in found and "CUDA 13 builds for compute 7.5" in found


def test_container_toolkit_needs_docker():
    nv = parse_nvidia("rig", {"container_toolkit": True})
    assert "Docker is not installed" in checks.problems(nv, UBUNTU, None, NO_SB, None, False, False)[0]
    assert checks.problems(nv, UBUNTU, None, NO_SB, None, False, True) == []


# --- the power unit ------------------------------------------------------------------------------


def test_power_unit_per_gpu_by_uuid():
    rig = gpus("rtx3090x6")
    unit = render.power_unit(rig, (350,) * 6)
    lines = unit.splitlines()
    starts = [line for line in lines if line.startswith("ExecStart=")]
    assert starts == [f"ExecStart=/usr/bin/nvidia-smi -i {g.uuid} -pl 350" for g in rig]
    for needed in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=nvidia-persistenced.service",
        "Wants=nvidia-persistenced.service",
        "WantedBy=multi-user.target",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/nvidiactl rw",
        "DeviceAllow=/dev/nvidia5 rw",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateNetwork=yes",
    ):
        assert needed in lines, needed
    assert "DeviceAllow=/dev/nvidia6 rw" not in lines
    assert "# GPU 0: NVIDIA GeForce RTX 3090, 100-400 W" in lines
    check = render.power_check_command(rig, (350,) * 6)
    assert check.count("--query-gpu=power.limit") == 6 and "-v w=350" in check
    mixed = render.power_unit(rig[:2], (300, 350))
    assert f"-i {rig[0].uuid} -pl 300" in mixed and f"-i {rig[1].uuid} -pl 350" in mixed


def test_a_uuid_that_is_not_one_is_refused():
    # A UUID goes into ExecStart and a shell check: anything but the expected shape is no GPU line.
    assert parse_gpus(["0, GPU-1 -pl 1; reboot, X, 9.0, 1, 1, 1, 1, 580.1.1"]) is None
    assert parse_gpus(["0, GPU-73736827-e95d-f8bc-dbc4-a81d0f9fa17c$(id), X, 9.0, 1, 1, 1, 1, 580.1.1"]) is None


# --- the lent H100, recorded read-only (tests/recordings/nvidia/record.sh) ----------------------------

H100 = json.loads((REC / "h100" / "facts.json").read_text())


def recorded(name: str):
    return getattr(facts, name)().process(H100[name]["stdout"])


def test_h100_facts_as_recorded_on_the_lent_machine():
    [gpu] = recorded("NvidiaGpus")
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.cuda_arch == "90" and gpu.memory_mib == 81559
    assert (gpu.power_min_w, gpu.power_max_w) == (200.0, 700.0) and gpu.driver_version == "580.159.04"
    assert parse_gpus((REC / "h100" / "query-gpu.csv").read_text().splitlines()) == [gpu]
    state = recorded("NvidiaDriver")
    assert state.kernel == "580.159.04" and state.open_kernel is True
    # The driver is the host's, mounted into a container with an unversioned libnvidia-ml.so.1:
    # no installed userspace to compare, so nothing is pending.
    assert not state.reboot_pending
    os = recorded("NvidiaHostOs")
    assert (os.distro, os.release, os.arch) == ("ubuntu", "24.04", "x86_64")
    assert repository.repo_dir(os) == "ubuntu2404/x86_64"
    pkgs = recorded("NvidiaPackages")
    assert "cuda-compat-13-0" in pkgs and not [n for n in pkgs if repository.is_driver_package(n)]
    assert recorded("DgxOs") is None and recorded("SecureBoot") == SecureBootState(None, None)
    nv = parse_nvidia("h100", {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350})
    assert checks.problems(nv, os, [gpu], recorded("SecureBoot"), None, True, False) == []


def test_h100_dry_run_plan():
    plan = (REC / "h100" / "pyinfra-dry.txt").read_text()
    assert plan.rstrip().endswith("pyinfra rc=0")
    for step in (
        "NVIDIA CUDA repository (ubuntu2404/x86_64)",
        "NVIDIA driver branch 580 (nvidia-open-580, held)",
        "CUDA toolkit 13.0",
        "Kernel headers for 6.18.44-fc-v657-gpu",
    ):
        assert step in plan, step
    assert "systemd is not running the host" in plan  # a container: no units touched there


def test_toolkit_from_nvcc_without_version_json():
    out = ["/usr/local/cuda nvcc release 13.0", "/usr/local/cuda-13.0 nvcc release 13.0", "/usr/local/cuda-12.8 nvcc "]
    assert facts.parse_toolkits(out) == facts.CudaToolkits(installed=("13.0",), default="13.0")


def test_llama_cpp_build_takes_cuda_arch_from_the_gpu_facts(monkeypatch):
    from rigkit.engines import llama_cpp as rig_steps
    from rigkit.hostdata import parse_rig

    class Host:
        def get_fact(self, fact):
            assert fact is facts.NvidiaGpus
            return gpus("rtx3090x6") + gpus("gb10")

    monkeypatch.setattr(rig_steps, "host", Host())
    config = parse_rig("rig", {"gpus": {"count": 7}, "llama_cpp": {"ref": "b8137"}})
    assert rig_steps.cuda_arch(config) == ("121", "86")


# --- the lent H200, recorded read-only: a driver and CUDA from outside Debian packages --------------
# tests/recordings/nvidia/h200: open module 580.159.04 loaded, its userspace under
# /usr/local/nvidia (no driver package), CUDA 13.0 at /usr/local/cuda-13.0 without the
# cuda-toolkit-13-0 package, a kernel no repository has headers for.

H200 = json.loads((REC / "h200" / "facts.json").read_text())
H200_DATA = {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350}


@dataclass
class Planned:
    name: str
    commands: list[str]
    noops: list[str]


def plan(recording: dict, raw: dict, **overrides) -> list[Planned]:
    """``setup()`` planned as ``pyinfra --dry`` plans it, for one host whose facts are the
    recording's (with ``overrides``: fact name -> stdout lines); nothing connects."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.host import Host
    from pyinfra.context import ctx_host, ctx_inventory, ctx_state

    from rigkit.nvidia import deploy as nvidia

    outputs = {name: fact["stdout"] for name, fact in recording.items()} | overrides
    noops: list[str] = []

    def get_fact(self, cls, *args, **kwargs):
        if cls.__name__ in outputs:
            return cls().process(outputs[cls.__name__])
        return cls.default() if hasattr(cls, "default") else None

    inventory = Inventory((["gpu"], {}))
    state = State(inventory, Config())
    host = inventory.get_host("gpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Host, "get_fact", get_fact)
        mp.setattr(Host, "noop", lambda self, why: noops.append(why))
        with ctx_state.use(state), ctx_inventory.use(inventory), ctx_host.use(host):
            nvidia.setup(parse_nvidia("gpu", raw), gpu_count=1)
            planned = []
            for op_hash in state.get_op_order():
                noops.clear()
                data = state.get_op_data_for_host(host, op_hash)
                commands = [str(c) for c in data.command_generator()]
                [name] = state.get_op_meta(op_hash).names
                planned.append(Planned(name.split(" | ", 1)[-1], commands, list(noops)))
    return planned


def installs(planned: list[Planned]) -> str:
    """The planned package installs but the repository's prerequisites (curl, gnupg, ...)."""
    return "\n".join(
        c for p in planned if p.name != "Install curl, gnupg, ca-certificates" for c in p.commands if " install " in c
    )


def test_h200_facts_as_recorded():
    [gpu] = parse_gpus((REC / "h200" / "query-gpu.csv").read_text().splitlines())
    assert gpu.name == "NVIDIA H200" and gpu.driver_version == "580.159.04"
    state = facts.NvidiaDriver().process(H200["NvidiaDriver"]["stdout"])
    assert state == facts.DriverState(kernel="580.159.04", userspace="580.159.04", open_kernel=True)
    pkgs = NvidiaPackages().process(H200["NvidiaPackages"]["stdout"])
    assert not [n for n in pkgs if repository.is_driver_package(n)] and "cuda-toolkit-13-0" not in pkgs
    toolkits = facts.CudaToolkit().process(H200["CudaToolkit"]["stdout"])
    assert toolkits.installed == ("13.0",) and "/usr/local/cuda-13.0" in toolkits.found_at("13.0")
    assert checks.driver_outside_packages(state, [gpu], pkgs) == "580.159.04"
    assert checks.toolkit_outside_packages("13.0", toolkits, pkgs)


def test_h200_driver_and_toolkit_from_outside_debian_are_kept():
    planned = plan(H200, H200_DATA)
    names = [p.name for p in planned]
    assert installs(planned) == ""
    assert not any(
        "nvidia-open" in c or "cuda-toolkit-13-0" in c or "linux-headers" in c for p in planned for c in p.commands
    )
    assert not any(n.startswith("Kernel headers") for n in names), names
    assert "Report: reboot pending" not in names
    kept = {p.name: p for p in planned}
    driver = kept["NVIDIA driver branch 580 (580.159.04, installed outside Debian packages: kept)"]
    assert driver.commands == [] and driver.noops == [
        "driver 580.159.04 (branch 580) is loaded and answering, installed outside Debian packages: kept"
    ]
    toolkit = kept["CUDA toolkit 13.0"]
    assert toolkit.commands == [] and "CUDA 13.0 is on disk (" in toolkit.noops[0]
    assert "/usr/local/cuda-13.0" in toolkit.noops[0] and toolkit.noops[0].endswith(
        "installed outside the cuda-toolkit-13-0 package: kept"
    )


def test_h100_container_keeps_the_hosts_driver_too():
    # The recorded plan (pyinfra-dry.txt) predates this: the mounted driver is kept now.
    planned = plan(H100, H200_DATA, CudaToolkit=H200["CudaToolkit"]["stdout"])
    assert installs(planned) == ""
    assert "NVIDIA driver branch 580 (580.159.04, installed outside Debian packages: kept)" in [p.name for p in planned]


def test_another_branch_installed_outside_debian_is_an_error_before_any_change():
    from pyinfra.api.exceptions import PyinfraError

    with pytest.raises(PyinfraError) as err:
        plan(H200, {**H200_DATA, "driver_branch": "590"})
    message = str(err.value)
    assert message.startswith("host gpu: nvidia.driver_branch: driver 580.159.04 (branch 580) is loaded and answering")
    assert "pins branch 590" in message and "no second driver" in message and "(nothing was changed)" in message
    nv = parse_nvidia("h", {"driver_branch": "590"})
    [problem] = checks.problems(nv, UBUNTU, None, NO_SB, None, False, False, outside="580.159.04")
    assert "580.159.04" in problem and "590" in problem
    assert checks.problems(nv, UBUNTU, None, NO_SB, {"DGX_NAME": "x"}, False, False, outside="580.159.04") == []


def test_a_driver_from_debian_packages_is_still_the_packages_way():
    # The same host with the branch's packages installed: held the repository's way, not "kept".
    pkgs = [
        "hi  nvidia-open-580 580.159.04-0ubuntu1 hold",
        "ii  libnvidia-compute-580 580.159.04-0ubuntu1 install",
        "ii  cuda-toolkit-13-0 13.0.2-1 install",
    ]
    planned = {p.name: p for p in plan(H200, H200_DATA, NvidiaPackages=pkgs)}
    assert planned["NVIDIA driver branch 580 (nvidia-open-580, held)"].commands == [
        "apt-mark hold libnvidia-compute-580"
    ]
    assert planned["CUDA toolkit 13.0"].noops == ["package cuda-toolkit-13-0 is installed (13.0.2-1)"]
    assert "Kernel headers for 6.18.44-fc-v973-gpu" in planned


def test_nothing_found_installs_driver_toolkit_and_headers_as_before():
    # nvidia-smi does not answer (no driver loaded) and no toolkit on disk.
    planned = plan(H200, H200_DATA, NvidiaGpus=[], NvidiaDriver=[], CudaToolkit=[])
    apt = 'DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::="--force-confdef" -o Dpkg::Options::="--force-confold" install '
    assert apt + "--no-install-recommends linux-headers-6.18.44-fc-v973-gpu" in installs(planned)
    assert apt + "--allow-downgrades --no-install-recommends nvidia-open-580" in installs(planned)
    assert apt + "--no-install-recommends cuda-toolkit-13-0" in installs(planned)
    assert "Report: reboot pending" in [p.name for p in planned]


def test_a_loaded_driver_that_does_not_answer_is_not_kept():
    state = facts.DriverState(kernel="580.159.04", userspace="580.159.04")
    other = parse_gpus(["0, GPU-b7a537eb-5d0b-5c8d-8c8e-2d187a252b4e, NVIDIA H200, 9.0, 1, 700, 200, 700, 580.95.05"])
    assert checks.driver_outside_packages(state, None, {}) is None  # nvidia-smi failed
    assert checks.driver_outside_packages(state, [], {}) is None
    assert checks.driver_outside_packages(state, other, {}) is None  # answering for another version
    assert checks.driver_outside_packages(facts.DriverState(None, None), other, {}) is None
