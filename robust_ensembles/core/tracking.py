"""Experiment tracking: wandb (offline by default) through Lightning's loggers, and a job's output kept to
our own progress and results (`quiet_foreign_notices`)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import loggers

from robust_ensembles.core.registry import stable_name

log = logging.getLogger(__name__)


@stable_name("wandb_logger")
class WandbLogger(loggers.WandbLogger):
    """Lightning's wandb logger, less the `anonymous` setting it hands wandb on every run (None when unset),
    which wandb deprecated and answers with 'The anonymous setting has no effect' on every job; and with its
    folder made before wandb starts, which looks for the git repository from there and warns 'git root ...
    does not exist' when the folder is not there yet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("dir"):
            Path(self._wandb_init["dir"]).mkdir(parents=True, exist_ok=True)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def quiet_foreign_notices() -> None:
    """Drop what other projects print on every job that tells a user nothing about theirs, each matched
    narrowly so that their real warnings stay visible: Lightning's advertisement of its cloud logger (a
    '💡 Tip:' info line), and torch's FutureWarning on Lightning's own use of `LeafSpec` (Lightning's
    code, not ours)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _not_a_tip not in logger.filters:
            logger.addFilter(_not_a_tip)
    message, module = r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree"
    # added only where missing: adding a warnings filter again resets every module's "shown once" registry
    if not any(f[0] == "ignore" and getattr(f[1], "pattern", None) == message and getattr(f[3], "pattern", None) == module
               for f in warnings.filters):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


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
    if isinstance(logger, loggers.WandbLogger):
        import wandb
        run = logger.experiment
        rows = [[label, e, a, s] for e, a, s in zip(curve.eps, curve.cumulative, curve.stderr)]
        table = wandb.Table(columns=["model", "eps", "accuracy", "stderr"], data=rows)
        run.log({"curve": table,
                 "curve_plot": wandb.plot.line(table, "eps", "accuracy", stroke="model", title=f"{label}: accuracy vs eps"),
                 "curve_png": wandb.Image(str(png))})
        run.summary.update(summary)
