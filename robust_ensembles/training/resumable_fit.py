"""Fit a LightningModule into a store entry: skip when complete, wait while another job fits it
(then skip or resume), resume when a job died, keep
the best validation epoch, test it, then write weights, metrics and the completion marker.

Shared by `train` (one model) and `finetune` (a composite's head). Their entry points turn the config into
a `FitJob` once (`fit_job`); `fit_into_store` takes the FitJob, never the config.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from robust_ensembles import store
from robust_ensembles.core import job_setup
from robust_ensembles.training.callbacks import Throughput

log = logging.getLogger(__name__)


def _model_state(state_dict: dict) -> dict:
    return {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}


@dataclass(frozen=True)
class FitJob:
    """One fit into a store entry, as the entry point built it from the config (`fit_job`)."""
    run: store.Run                                  # the entry (its identity: the store's key)
    tag: str                                        # how the log names it
    build_module: Callable[[], pl.LightningModule]
    data: Callable[[], Any]                         # the datamodule
    checkpoint: Callable[[], pl.Callback]           # the checkpoint callback that keeps the best epoch
    trainer: Callable[[list], tuple]                # (trainer, logger) with these callbacks, logging into the entry
    config: DictConfig                              # the job's config, written into the entry (config.yaml)
    lock_timeout_s: float
    lock_poll_s: float
    run_test: bool


def fit_job(cfg: DictConfig, run: store.Run, tag: str, build_module: Callable[[], pl.LightningModule],
            callbacks: Sequence[pl.Callback] = (), **trainer_overrides) -> FitJob:
    """The FitJob of `cfg`: the entry point's door from the config to the fit."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.paths.run_dir = str(run.path)  # the job logs into its store entry
    lock = job.store.get("lock") or {}
    return FitJob(run=run, tag=tag, build_module=build_module, data=lambda: instantiate(job.data),
                  checkpoint=lambda: instantiate(job.checkpoint),
                  trainer=lambda cbs: job_setup.setup(job, [*cbs, *callbacks], **trainer_overrides), config=job,
                  lock_timeout_s=lock.get("timeout_s", 0), lock_poll_s=lock.get("poll_s", 5.0),
                  run_test=bool(job.run_test))


def fit_into_store(job: FitJob) -> dict:
    run, tag = job.run, job.tag
    if run.complete:
        log.info("[store] skip %s: complete at %s", tag, run.path)
        return run.metrics()
    datamodule = job.data()
    datamodule.setup("fit")  # data missing or corrupt: one error before any store entry is created
    with run.lock(timeout_s=job.lock_timeout_s, poll_s=job.lock_poll_s):
        if run.complete:  # another job finished it while this one waited
            log.info("[store] skip %s: completed by another job at %s", tag, run.path)
            return run.metrics()
        resume = run.resume_checkpoint()
        log.info("[store] %s %s -> %s", "resume" if resume else "train", tag, run.path)
        run.begin(job.config)
        throughput = Throughput()
        checkpoint = job.checkpoint()
        trainer, logger = job.trainer([checkpoint, throughput])
        module = job.build_module()
        with job_setup.tracked():
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            fit_seconds = time.perf_counter() - start
            best = store.load_weights(checkpoint.best_model_path)
            last, kept = _model_state(module.state_dict()), _model_state(best["state_dict"])
            module.model.load_state_dict(kept)
            test = trainer.test(module, datamodule=datamodule, verbose=False)[0] if job.run_test else {}
            metrics = {
                "best_epoch": best["epoch"], "last_epoch": trainer.current_epoch - 1,
                # with early stopping: whether training ended because validation stopped rising (an epoch
                # after the anneal failed to beat the best), not because it reached max_epochs still rising
                **({"val_stopped_rising": trainer.early_stopping_callback.stopped_epoch > 0}
                   if trainer.early_stopping_callback else {}),
                "monitor": checkpoint.monitor, "best_score": float(checkpoint.best_model_score),
                **{k: float(v) for k, v in test.items()},
                "n_test": len(datamodule.splits["test"]), "n_train": len(datamodule.splits["train"]),
                "fit_seconds": fit_seconds, "resumed_from": resume,
                "train_images_per_s": throughput.images_per_s,
                "device": str(trainer.strategy.root_device), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "git_commit": store.git_commit(),
            }
            if logger:
                logger.log_metrics({f"store/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            run.finish(kept, last, metrics)
    log.info("[store] done %s: %s", tag, {k: metrics[k] for k in metrics if k.startswith("test/")})
    return metrics
