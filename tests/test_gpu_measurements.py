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
                          text=True, timeout=900)
    summary = (tmp_path / "out" / "summary.md").read_text()
    steps = [line for line in summary.splitlines() if line.startswith("- ") and " exit " in line]
    assert len(steps) == 4 and all(" exit 0 in " in s for s in steps), summary + done.stdout[-2000:]
    assert "kept epoch 0 of 1" in summary and "curve alpha=0.5 (32-true, n=32" in summary
    assert "curve alpha=0.5 (bf16-mixed, n=32" in summary and "AutoAttack (custom) alpha=0.5 at 0.5 (n=32" in summary
    assert "bf16-mixed - 32-true" in (tmp_path / "out" / "eval.md").read_text()
    assert "2 seeds' processes sharing the device" in (tmp_path / "out" / "bench-gpu.md").read_text()
