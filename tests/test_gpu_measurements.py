"""The one-run GPU measurement script (make gpu-measurements), at tiny sizes on the CPU (SMOKE=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robust_ensembles import PROJECT_ROOT


@pytest.mark.slow
def test_every_step_of_the_gpu_script_runs_and_reports(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/gpu_measurements.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=700)   # the script stops by DEADLINE (570 s)
    summary = (tmp_path / "out" / "summary.md").read_text()
    steps = [line for line in summary.splitlines() if line.startswith("- ") and " exit " in line]
    assert len(steps) == 4 and all(" exit 0 in " in s for s in steps), summary + done.stdout[-2000:]
    assert done.returncode == 0
    assert "kept epoch 0 of 1" in summary and "curve alpha=0.5 (32-true, n=32" in summary
    assert "curve alpha=0.5 (bf16-mixed, n=32" in summary and "AutoAttack (custom) alpha=0.5 at 0.5 (n=32" in summary
    assert "bf16-mixed - 32-true" in (tmp_path / "out" / "eval.md").read_text()
    assert "2 seeds' processes sharing the device" in (tmp_path / "out" / "bench-gpu.md").read_text()


def test_no_step_outlives_the_deadline(tmp_path):
    """A queue that kills a command at 600 s loses its output: every step is capped by what is left of
    DEADLINE (default under 600 s), and a step with no time left is reported as not run."""
    script = (PROJECT_ROOT / "scripts" / "gpu_measurements.sh").read_text()
    assert int(script.split("DEADLINE=${DEADLINE:-", 1)[1].split("}", 1)[0]) <= 585
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "DEADLINE": "15", "STEPS": "train eval bench"}
    done = subprocess.run(["bash", "scripts/gpu_measurements.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert done.returncode == 1, summary   # a step with no time left is a failed run
    assert [ln.split(":")[0] for ln in summary.splitlines() if "not run (no time left before DEADLINE=15 s)" in ln] \
        == ["- 1. train paper_fast alpha=0.5", "- 2a. evaluate fp32 + standard AutoAttack at 0.5 on 32 points",
            "- 3. bench-gpu"]
