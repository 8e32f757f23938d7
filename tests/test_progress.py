"""Progress of the long steps in pyinfra's default output: what an image build shows (its
step, throttled, nothing of the step's text), read from recorded docker build output.
The model download's lines are read from a real deploy's output in test_models_e2e.py."""

from __future__ import annotations

from rigkit.scripts import container_host
from rigkit.scripts.container_host import HEARTBEAT_S, PROGRESS_S, BuildProgress, build_step

# docker build's output, the classic builder's and BuildKit's plain progress (recorded)
CLASSIC = """Sending build context to Docker daemon  12.8kB
Step 1/4 : ARG BASE
Step 2/4 : FROM ${BASE}
 ---> 5b1f0a3c2d4e
Step 3/4 : COPY rigkit_vllm_patches /opt/rigkit/vllm/rigkit_vllm_patches
 ---> 77aa1b2c3d4e
Step 4/4 : RUN python3 /opt/rigkit/vllm/apply.py --token hf_NotShown_123
 ---> Running in 0c1d2e3f4a5b
Successfully built 9f8e7d6c5b4a
""".splitlines()
BUILDKIT = """#0 building with "default" instance using docker driver
#1 [internal] load build definition from Dockerfile
#5 [1/3] FROM docker.io/library/debian:bookworm
#6 [builder 2/3] COPY patches /opt/rigkit/patches
#7 [3/3] RUN pip install --index-url https://user:hf_NotShown_123@x/simple vllm
#7 12.3 Collecting vllm
#8 exporting to image
""".splitlines()


def test_build_steps_of_both_builders():
    assert [build_step(line) for line in CLASSIC if build_step(line)] == [
        (1, 4, "ARG"),
        (2, 4, "FROM"),
        (3, 4, "COPY"),
        (4, 4, "RUN"),
    ]
    assert [build_step(line) for line in BUILDKIT if build_step(line)] == [
        (1, 3, "FROM"),
        (2, 3, "COPY"),
        (3, 3, "RUN"),
    ]
    assert build_step("#7 12.3 Collecting vllm") is None and build_step(" ---> Running in 0c1d") is None


def test_build_progress_is_throttled_and_names_no_step_text():
    progress = BuildProgress("rigkit/vllm:abc", started=0.0)
    shown = []
    clock = 0.0
    for line in CLASSIC + BUILDKIT:  # a line a second: more steps than the output may show
        clock += 1.0
        progress.feed(line)
        if out := progress.due(clock):
            shown.append((clock, out))
    times = [t for t, _ in shown]
    assert all(b - a >= PROGRESS_S for a, b in zip(times, times[1:])) and times[0] >= PROGRESS_S
    assert shown[0][1] == "building rigkit/vllm:abc: step 3/4 (COPY), 5s"
    assert all("hf_NotShown" not in out and "pip" not in out for _, out in shown)
    # One step running on: named again once per HEARTBEAT_S, not once per PROGRESS_S.
    last = shown[-1][0]
    assert progress.due(last + PROGRESS_S) is None
    assert progress.due(last + HEARTBEAT_S) == f"building rigkit/vllm:abc: step 3/3 (RUN), {last + HEARTBEAT_S:.0f}s"
    assert progress.due(last + HEARTBEAT_S + 1) is None


def test_run_build_returns_the_whole_output(tmp_path, capsys):
    """A stand-in for docker (the output above, then exit 1): the build's whole output comes
    back for the failure message; only rigkit's own lines are printed."""
    standin = tmp_path / "docker"
    standin.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(CLASSIC) + "\nEOF\nexit 1\n")
    standin.chmod(0o755)
    code, output = container_host.run_build([str(standin), "build", "."], "rigkit/vllm:abc")
    assert code == 1 and output.splitlines() == CLASSIC
    assert "hf_NotShown" not in capsys.readouterr().out
