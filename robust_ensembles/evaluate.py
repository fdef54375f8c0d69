"""Evaluate a single model, a K-ensemble or composites from the store, attacked as one model.

    python -m robust_ensembles.evaluate experiment=cpu alpha=0.25 K=4
    python -m robust_ensembles.evaluate -m experiment=cpu alpha=0.25 K=1,2,4
    python -m robust_ensembles.evaluate experiment=cpu alpha=0.25 K=4 check=true
    python -m robust_ensembles.evaluate experiment=cpu members=paper_composites

Members are the complete store entries trained with this config (every identity key but the
seed). The curve is a store record (<store>/records/curve/<key>.json, a PNG beside it); a record
that exists is reused (evaluation.force=true recomputes it). See `robust_ensembles.evaluation.records`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from robust_ensembles.core import cli
from robust_ensembles.evaluation import records
from robust_ensembles.evaluation.request import from_config


def evaluate(cfg: DictConfig) -> dict:
    """The door: the composed config becomes a Request once (the members resolved from the store, the
    attack and the grid built), and the records below take only that."""
    return records.evaluate(from_config(cfg))


main = cli.main("evaluate")(evaluate)

if __name__ == "__main__":
    main()
