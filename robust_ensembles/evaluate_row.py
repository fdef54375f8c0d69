"""One evaluation job of the table driver: the curve (and AutoAttack) record of one row, into the store.

    python -m robust_ensembles.evaluate_row -m rows_file=<store>/jobs/evaluate-<key>.json row=0,1,2

The driver writes the rows and launches this multirun itself with `evaluate_in=jobs`
(`make tables ARGS="evaluate_in=jobs hydra/launcher=gpus"`); see `paper_tables.driver.evaluation_jobs`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from robust_ensembles import cli
from robust_ensembles.paper_tables.driver import evaluate_listed_row


def evaluate_row(cfg: DictConfig) -> dict:
    return evaluate_listed_row(cfg.rows_file, cfg.row)


main = cli.main("evaluate_row")(evaluate_row)

if __name__ == "__main__":
    main()
