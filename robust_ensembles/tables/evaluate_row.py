"""One evaluation job of the table driver: the curve (and AutoAttack) record of one row, into the store.

    python -m robust_ensembles.tables.evaluate_row -m rows_file=<store>/jobs/evaluate-<key>.json row=0,1,2

The driver writes the rows and launches this multirun itself with `evaluate_in=jobs`
(`make tables ARGS="evaluate_in=jobs hydra/launcher=gpus"`); see `robust_ensembles.tables.evaluation_jobs`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from robust_ensembles.core import cli
from robust_ensembles.tables.evaluation_jobs import evaluate_listed_row


def evaluate_row(cfg: DictConfig) -> dict:
    return evaluate_listed_row(cfg.rows_file, cfg.row)


main = cli.main("evaluate_row")(evaluate_row)

if __name__ == "__main__":
    main()
