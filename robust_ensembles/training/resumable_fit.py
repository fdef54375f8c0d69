"""Fit a LightningModule into a store entry: skip when complete, wait while another job fits it
(then skip or resume), resume when a job died, keep
the best validation epoch, test it, then write weights, metrics and the completion marker.

Shared by `train` (one model) and `finetune` (a composite's head).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

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


def fit_into_store(cfg: DictConfig, run: store.Run, tag: str, build_module: Callable[[], pl.LightningModule],
                   callbacks: Sequence[pl.Callback] = (), **trainer_overrides) -> dict:
    if run.complete:
        log.info("[store] skip %s: complete at %s", tag, run.path)
        return run.metrics()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # data missing or corrupt: one error before any store entry is created
    lock = cfg.store.get("lock") or {}
    with run.lock(timeout_s=lock.get("timeout_s", 0), poll_s=lock.get("poll_s", 5.0)):
        if run.complete:  # another job finished it while this one waited
            log.info("[store] skip %s: completed by another job at %s", tag, run.path)
            return run.metrics()
        with open_dict(cfg):
            cfg.paths.run_dir = str(run.path)
        resume = run.resume_checkpoint()
        log.info("[store] %s %s -> %s", "resume" if resume else "train", tag, run.path)
        run.begin(cfg)
        throughput = Throughput()
        checkpoint = instantiate(cfg.checkpoint)
        trainer, logger = job_setup.setup(cfg, [checkpoint, throughput, *callbacks], **trainer_overrides)
        module = build_module()
        with job_setup.tracked():
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            fit_seconds = time.perf_counter() - start
            best = store.load_weights(checkpoint.best_model_path)
            last, kept = _model_state(module.state_dict()), _model_state(best["state_dict"])
            module.model.load_state_dict(kept)
            test = trainer.test(module, datamodule=datamodule, verbose=False)[0] if cfg.run_test else {}
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
