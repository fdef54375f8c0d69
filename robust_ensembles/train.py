"""Train one adversarially robust model per job, into the store.

    python -m robust_ensembles.train experiment=cpu alpha=0.25 seed=0
    python -m robust_ensembles.train -m experiment=cpu alpha=0,0.25 'seed=range(2)'

A job whose store entry is complete is skipped; one whose entry holds a last checkpoint resumes.
"""

from __future__ import annotations

import logging
import time

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from robust_ensembles import store, tracking
from robust_ensembles.callbacks import Throughput
from robust_ensembles.errors import ConfigError

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """Top-level scalars, checked before anything is built."""
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or cfg.alpha < 0:
        raise ConfigError(f"alpha={cfg.alpha!r} must be a number >= 0 (the L2 training radius in [0,1] pixels; 0 = natural training).")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer >= 0.")


def train(cfg: DictConfig) -> dict:
    check(cfg)
    attack, eval_attack = instantiate(cfg.attack), instantiate(cfg.eval_attack)  # bad attack values fail here, fast
    run = store.open_run(cfg.store.root, store.identity_of(cfg, cfg.store.identity.include, cfg.store.identity.exclude))
    tag = f"alpha={cfg.alpha} seed={cfg.seed}"
    if run.complete:
        log.info("[store] skip %s: complete at %s", tag, run.path)
        return run.metrics()
    with run.lock():
        with open_dict(cfg):
            cfg.paths.run_dir = str(run.path)
        resume = run.resume_checkpoint()
        log.info("[store] %s %s -> %s", "resume" if resume else "train", tag, run.path)
        run.begin(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        module = instantiate(cfg.module, model=instantiate(cfg.model), attack=attack, eval_attack=eval_attack)
        throughput = Throughput()
        checkpoint = instantiate(cfg.checkpoint)
        logger = instantiate(cfg.logger) if cfg.get("logger") else False
        trainer = instantiate(cfg.trainer, callbacks=[checkpoint, throughput], logger=logger)
        tracking.log_config(logger, cfg)
        try:
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            fit_seconds = time.perf_counter() - start
            best = store.load_weights(checkpoint.best_model_path)
            last = {k.removeprefix("model."): v for k, v in module.state_dict().items() if k.startswith("model.")}
            best_model = {k.removeprefix("model."): v for k, v in best["state_dict"].items() if k.startswith("model.")}
            module.model.load_state_dict(best_model)
            test = trainer.test(module, datamodule=datamodule, verbose=False)[0] if cfg.run_test else {}
            metrics = {
                "best_epoch": best["epoch"], "last_epoch": trainer.current_epoch - 1,
                "monitor": checkpoint.monitor, "best_score": float(checkpoint.best_model_score),
                **{k: float(v) for k, v in test.items()},
                "n_test": len(datamodule.splits["test"]), "n_train": len(datamodule.splits["train"]),
                "fit_seconds": fit_seconds, "resumed_from": resume,
                "train_images_per_s": throughput.images_per_s,
                "device": str(module.device), "torch": torch.__version__, "git_commit": store.git_commit(),
            }
            if logger:
                logger.log_metrics({f"store/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            run.finish(best_model, last, metrics)
        except BaseException:
            tracking.finish(failed=True)
            raise
        tracking.finish(failed=False)
    log.info("[store] done %s: %s", tag, {k: metrics[k] for k in metrics if k.startswith("test/")})
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
