"""Launching the tables' jobs: Hydra multiruns as subprocesses, through whatever launcher the overrides
name, and how many of them the launcher runs at once."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

from omegaconf import OmegaConf

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class JobsFailedError(UserError):
    """A training multirun ended with failed jobs (each already reported); finished jobs are kept."""


def multirun(module: str, overrides: list[str]) -> None:
    """`python -m <module> -m <overrides>` (a Hydra multirun through whatever launcher the overrides
    name); failed jobs raise JobsFailedError after the others finished."""
    cmd = [sys.executable, "-m", module, "-m", *overrides]
    log.info("running: %s", " ".join(cmd))
    rc = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode
    if rc != 0:
        raise JobsFailedError(f"{module} multirun failed (exit {rc}; its failed jobs are reported above); "
                              f"fix them and rerun the target: finished jobs are kept.")


def multirun_groups(jobs: list[tuple[float, int]]) -> list[tuple[list[float], list[int]]]:
    """These (alpha, seed) training jobs as Hydra multiruns `alpha=... seed=...`: one per distinct seed
    list, its alphas x seeds (alpha outer, as Hydra's sweeper launches them)."""
    by_alpha: dict[float, list[int]] = {}
    for a, seed in jobs:
        by_alpha.setdefault(a, []).append(seed)
    by_seeds: dict[tuple, list[float]] = {}
    for a, seeds in by_alpha.items():
        by_seeds.setdefault(tuple(seeds), []).append(a)
    return [(alphas, list(seeds)) for seeds, alphas in by_seeds.items()]


def plugin_installed(plugin: str) -> bool:
    """Whether the Hydra plugin `hydra_plugins.<plugin>` is installed (hydra-core alone ships no such package)."""
    try:
        return importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None
    except ModuleNotFoundError:
        return False


def parallel_jobs(launcher: list[str]) -> int:
    """How many jobs the launcher these overrides select runs at once on this machine, where its config says
    so (a Ray launcher started with `ray.init.num_cpus`, each job asking `ray.remote.num_cpus`:
    hydra/launcher=ray_cpu, `make tables JOBS=n`), at most one per core; else 1 (the basic launcher, or a
    launcher whose concurrency is a cluster's or found when it starts)."""
    if not launcher:
        return 1
    try:
        hydra_cfg = compose_config("train", launcher, hydra=True).hydra
    except ConfigError as e:
        hint = ("" if plugin_installed("hydra_ray_launcher") else
                " (the Ray launchers, hydra/launcher=ray_cpu and gpus, need: pip install -e \".[gpu-cluster]\")")
        raise ConfigError(f"launcher overrides {launcher}: {str(e).split(': ', 1)[-1]}{hint}") from None
    cpus, per_job = (OmegaConf.select(hydra_cfg, f"launcher.ray.{k}.num_cpus") for k in ("init", "remote"))
    if not isinstance(cpus, int) or not isinstance(per_job, (int, float)) or per_job <= 0:
        return 1
    if cpus < per_job:
        raise ConfigError(f"hydra.launcher.ray.init.num_cpus={cpus} leaves no room for one job of "
                          f"ray.remote.num_cpus={per_job}; give at least {per_job} (make ... JOBS=n: n >= 1).")
    return max(1, min(int(cpus // per_job), os.cpu_count() or 1))
