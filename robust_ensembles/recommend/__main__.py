"""Recommend the training radius alpha for a target eps and an ensemble size K: the paper's objective
(highest natural accuracy while at least as robust at eps_t as the single model trained at eps_t),
searched on the validation split, reusing the store and training only the alphas it needs.

    python -m robust_ensembles.recommend scale=cpu target_eps=0.5 K=4
    python -m robust_ensembles.recommend scale=cpu target_eps=0.5 K=null      # the smallest K that gains
    python -m robust_ensembles.recommend scale=paper target_eps=0.5 K=8 hydra/launcher=slurm

`make recommend EPS=0.5 K=4 SCALE=cpu` is the same. Training runs as Hydra multiruns through
`hydra/launcher=...`; the report goes to reports/<scale>/recommend-eps<eps>-K<K>.{md,json,png}
and wandb. See `robust_ensembles.recommend.search` and docs/recommend.md.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from robust_ensembles.core import cli
from robust_ensembles.recommend.recommender import recommend as run


def recommend(cfg: DictConfig) -> dict:
    overrides = HydraConfig.get().overrides
    return run(cfg, list(overrides.task), cli.launcher_overrides(overrides.hydra))


main = cli.main("recommend")(recommend)

if __name__ == "__main__":
    main()
