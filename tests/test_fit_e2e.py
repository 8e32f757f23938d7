"""After the load, on a real sandbox host: the plan in the host's state, each GPU's used memory
read beside it by rigkit's operation, and ``rigkit status`` comparing the two. The host has no
GPU: a stand-in ``nvidia-smi`` (named so below) answers the used-memory query."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pyinfra_run import REPO, run_pyinfra, ssh

from rigkit.host_paths import MEMORY_DIR

pytestmark = pytest.mark.e2e

STANDIN_SMI = r"""#!/usr/bin/env python3
# A stand-in nvidia-smi for one test (the sandbox has no GPU): two GPUs' used memory in MiB.
import sys
if "--query-gpu=index,memory.used" in sys.argv:
    print("0, 17000")
    print("1, 10000")
else:
    sys.exit(9)
"""

RECORD = """
from io import StringIO
from pyinfra.operations import files
from rigkit.fit import measured
from rigkit.host_paths import MEMORY_DIR

files.directory(name="Memory plan directory", path=MEMORY_DIR, mode="755")
files.put(name="Memory plan", src=StringIO({plan!r}), dest=measured.plan_path("llama.cpp"), mode="644")
measured.measure(name="GPU memory after the load", engine="llama.cpp")
"""


def test_used_memory_recorded_beside_the_plan_and_compared_in_status(sandbox_hosts, tmp_path):
    sb, host = sandbox_hosts, sandbox_hosts.hosts[0]
    plan = json.dumps({"services": {"tiny": {"0": 17000 << 20, "1": 14000 << 20}}})
    deploy = tmp_path / "record.py"
    deploy.write_text(RECORD.format(plan=plan))
    smi = "/usr/local/bin/nvidia-smi"
    ssh(sb, host, f"cat > {smi} <<'EOF'\n{STANDIN_SMI}EOF\nchmod 755 {smi}")
    try:
        run = run_pyinfra("inventories/sandbox.py", str(deploy), "--limit", host.name)
        assert run.returncode == 0, run.stderr[-3000:]
        assert ssh(sb, host, f"cat {MEMORY_DIR}/llama.cpp.measured.csv").split() == ["0,", "17000", "1,", "10000"]
        status = subprocess.run(
            [sys.executable, "-m", "rigkit.cli", "status", "--json", "inventories/sandbox.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        memory = json.loads(status.stdout)[host.name]["memory"]
        assert memory["record"]["llama.cpp"]["measured"] == {"0": 17000, "1": 10000}
        assert "measured 16.60 GiB (+0%)" in memory["lines"][0]
        [warning] = memory["warnings"]
        assert warning.startswith("GPU 1: measured 9.77 GiB after the load, planned 13.67 GiB (-29%")
        # Without nvidia-smi the operation reads nothing and leaves the last measurement.
        ssh(sb, host, f"rm -f {smi}")
        again = run_pyinfra("inventories/sandbox.py", str(deploy), "--limit", host.name)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Memory plan" not in again.changed  # the plan as it was: no change
        assert ssh(sb, host, f"cat {MEMORY_DIR}/llama.cpp.measured.csv").split() == ["0,", "17000", "1,", "10000"]
    finally:
        ssh(sb, host, f"rm -rf {smi} {MEMORY_DIR}", check=False)
