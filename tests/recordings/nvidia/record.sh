#!/bin/sh
# Record, read-only, what rigkit's NVIDIA facts read on a GPU host, and the plan of
# deploys/nvidia.py there (pyinfra @local --dry: facts only, nothing changed). Changes no GPU
# setting (no power limit, clocks, persistence mode, MIG or reset).
#   sh tests/recordings/nvidia/record.sh OUTDIR     (in the repository root; needs pyinfra)
out=${1:?OUTDIR}
mkdir -p "$out"
nvidia-smi --query-gpu=index,uuid,name,compute_cap,memory.total,power.limit,power.min_limit,power.max_limit,driver_version \
  --format=csv,noheader,nounits > "$out/query-gpu.csv" 2>&1
python3 - "$out" <<'PY'
import json, subprocess, sys
from rigkit.facts import nvidia as f
out = sys.argv[1]
facts = {}
for cls in (f.NvidiaGpus, f.NvidiaDriver, f.CudaToolkit, f.DgxOs, f.SecureBoot, f.NvidiaHostOs, f.NvidiaPackages,
            f.DockerInstalled, f.SystemdBooted):
    cmd = cls().command()
    run = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    lines = run.stdout.splitlines()
    facts[cls.__name__] = {"command": cmd, "rc": run.returncode, "stdout": lines,
                           "parsed": repr(cls().process(lines))}
json.dump(facts, open(f"{out}/facts.json", "w"), indent=1)
PY
cat > /tmp/rigkit-nvidia-inv.py <<'PY'
local = [("@local", {"gpus": {"count": 1}, "nvidia": {"driver_branch": "580", "cuda_toolkit": "13.0", "power_limit_w": 350}})]
PY
pyinfra --dry /tmp/rigkit-nvidia-inv.py deploys/nvidia.py < /dev/null > "$out/pyinfra-dry.txt" 2>&1
echo "pyinfra rc=$?" >> "$out/pyinfra-dry.txt"
