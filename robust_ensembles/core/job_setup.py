"""One Lightning job's set-up, shared by training and evaluation: threads, seed, logger, trainer,
and closing the job's tracking run whether it succeeds or fails."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig

from robust_ensembles.core import atomic_files, tracking


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints (last.ckpt, best.ckpt) written to a temporary file and renamed, so a
    kill during a save leaves the previous complete checkpoint to resume from."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_files.save_atomic(checkpoint, Path(path))


def threads_of(cfg: DictConfig) -> int:
    """The torch threads a job of `cfg` runs with (`threads`, else torch's default here): what its fit time
    and records' wall times were measured with, and what an estimate matches them by."""
    return int(cfg.get("threads") or torch.get_num_threads())


def measured_with(threads: int, measurement: Mapping) -> bool:
    """Whether a measurement (a fit's metrics, an evaluation record) was taken with `threads` torch threads
    per job: on a CPU, where they set the speed (one from before threads were recorded counts as taken with
    torch's default here); a GPU's always counts, its speed is the device's."""
    if measurement.get("device", "cpu") != "cpu":
        return True
    return measurement.get("threads", torch.get_num_threads()) == threads


def seed(cfg: DictConfig) -> None:
    """Threads (`threads`) and every random generator (`seed`) of this job."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True)


def setup(cfg: DictConfig, callbacks: list, **trainer_overrides) -> tuple[pl.Trainer, object]:
    """(trainer, logger) for `cfg`, after `seed(cfg)`; other projects' notices kept out of the job's output."""
    tracking.quiet_foreign_notices()
    seed(cfg)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()],
                          **trainer_overrides)
    tracking.log_config(logger, cfg)
    return trainer, logger


@contextlib.contextmanager
def tracked():
    """Finish this job's tracking run (wandb) with the job's outcome."""
    try:
        yield
    except BaseException:
        tracking.finish(failed=True)
        raise
    tracking.finish(failed=False)
