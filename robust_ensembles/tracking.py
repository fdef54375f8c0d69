"""Experiment tracking: wandb (offline by default) through Lightning's loggers."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def log_config(logger, cfg: DictConfig) -> None:
    """The full resolved config as the run's hyperparameters (wandb config, CSV hparams.yaml)."""
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def finish(failed: bool) -> None:
    """Close the wandb run of this job (if any), with exit code 1 when the job failed.

    Each job of a multirun must finish its run, or the next job's metrics land in it.
    """
    try:
        import wandb
    except ImportError:  # wandb is a dependency, but a CSV-only user may have removed it
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def log_evaluation(logger, label: str, curve, summary: dict, png) -> None:
    """Summary metrics, the curve as a wandb.Table with a line plot, and the PNG (wandb); metrics (others)."""
    if not logger:
        return
    logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:
        return
    if isinstance(logger, WandbLogger):
        import wandb
        run = logger.experiment
        rows = [[label, e, a, s] for e, a, s in zip(curve.eps, curve.cumulative, curve.stderr)]
        table = wandb.Table(columns=["model", "eps", "accuracy", "stderr"], data=rows)
        run.log({"curve": table,
                 "curve_plot": wandb.plot.line(table, "eps", "accuracy", stroke="model", title=f"{label}: accuracy vs eps"),
                 "curve_png": wandb.Image(str(png))})
        run.summary.update(summary)
