"""Hydra launchers: one job per GPU through Ray, SLURM arrays through submitit; a 2-job Ray run on CPU."""

from __future__ import annotations

import os

import pytest
import yaml
from hydra import compose, initialize_config_dir

from robust_ensembles import CONFIG_DIR
from robust_ensembles.tables.launch import parallel_jobs, plugin_installed
from tests.conftest import TINY, run_module

GPU_CLUSTER = "needs the gpu-cluster extra: pip install -e '.[gpu-cluster]' (CI installs it)"


needs_ray = pytest.mark.skipif(not plugin_installed("hydra_ray_launcher"), reason=GPU_CLUSTER)
needs_submitit = pytest.mark.skipif(not plugin_installed("hydra_submitit_launcher"), reason=GPU_CLUSTER)


def launcher_cfg(name: str) -> dict:
    out = run_module(["robust_ensembles.train", f"hydra/launcher={name}", "--cfg", "hydra", "--package", "hydra.launcher"])
    assert out.returncode == 0, out.stderr[-2000:]
    return yaml.safe_load(out.stdout.split("\n", 1)[1])


def ray_remote(*overrides: str, config: str = "train"):
    """The gpus launcher's per-job Ray resources, composed and resolved as the launcher resolves them."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config, overrides=["hydra/launcher=gpus", *overrides], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("RayLauncher") and cfg.hydra.launcher.ray.init.get("num_gpus") is None
    return cfg.hydra.launcher.ray.remote


@needs_ray
def test_gpus_launcher_gives_each_job_one_gpu_or_a_share_of_one():
    assert ray_remote().num_gpus == 1.0
    assert ray_remote("jobs_per_gpu=2").num_gpus == 0.5 and ray_remote("jobs_per_gpu=4").num_gpus == 0.25
    with pytest.raises(Exception, match="jobs_per_gpu=0 must be an integer >= 1"):
        ray_remote("jobs_per_gpu=0").num_gpus
    # the table driver's evaluation jobs go through the same launcher (their config has no jobs_per_gpu)
    assert ray_remote("rows_file=rows.json", "row=0", config="evaluate_row").num_gpus == 1.0


@needs_ray
def test_the_table_estimate_knows_how_many_jobs_the_cpu_launcher_runs_at_once():
    assert parallel_jobs(["hydra/launcher=ray_cpu"]) == 2   # conf/hydra/launcher/ray_cpu.yaml: 2 CPUs, 1 per job
    assert parallel_jobs(["hydra/launcher=ray_cpu", "hydra.launcher.ray.init.num_cpus=1"]) == 1   # make ... JOBS=1
    # make ... JOBS=4: four at once, or one per core where the machine has fewer
    assert parallel_jobs(["hydra/launcher=ray_cpu", "hydra.launcher.ray.init.num_cpus=4"]) == min(4, os.cpu_count())
    assert parallel_jobs(["hydra/launcher=gpus"]) == 1   # Ray counts the GPUs itself when it starts: not known here


@needs_submitit
def test_slurm_launcher_builds_a_gpu_array():
    cfg = launcher_cfg("slurm")
    assert cfg["_target_"].endswith("SlurmLauncher")
    assert cfg["gpus_per_node"] == 1 and cfg["tasks_per_node"] == 1 and cfg["array_parallelism"] >= 1


@pytest.mark.slow
@needs_ray
def test_two_parallel_ray_jobs_on_cpu_write_two_entries_and_a_rerun_skips_them(tmp_path):
    args = ["robust_ensembles.train", "-m", "hydra/launcher=ray_cpu", "threads=1", *TINY, "alpha=0.1", "seed=0,1",
            f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    env = {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    first = run_module(args, env_extra=env, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert len(list((tmp_path / "store").glob("*/COMPLETE"))) == 2
    second = run_module(args, env_extra=env, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    log = second.stdout + second.stderr
    assert log.count("[store] skip") == 2 and "[store] train" not in log


def test_ray_launches_state_the_authentication_mode_and_a_users_choice_stands(monkeypatch):
    """Ray warns on every launch that it chose token authentication for its local cluster unless
    RAY_AUTH_MODE states a mode: the multirun callback states its default (token), and leaves a user's
    own setting alone; a mode Ray does not know is one line."""
    from hydra.utils import instantiate

    from robust_ensembles.core.cli import RayAuthMode
    from robust_ensembles.core.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=TINY, return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.ray_auth)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    callback.on_multirun_start(cfg)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    callback.on_multirun_start(cfg)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    with pytest.raises(ConfigError, match="hydra.callbacks.ray_auth.mode='tokens' must be token or disabled"):
        RayAuthMode("tokens")
