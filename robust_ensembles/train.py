"""Train one adversarially robust model per job, into the store.

    python -m robust_ensembles.train experiment=cpu alpha=0.25 seed=0
    python -m robust_ensembles.train -m experiment=cpu alpha=0,0.25 'seed=range(2)'

A job whose store entry is complete is skipped; one whose entry holds a last checkpoint resumes.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles.core import cli
from robust_ensembles.store.identity import check, training_run
from robust_ensembles.training.resumable_fit import fit_into_store, fit_job


def train(cfg: DictConfig) -> dict:
    check(cfg)
    attack, eval_attack = instantiate(cfg.attack), instantiate(cfg.eval_attack)  # bad attack values fail here, fast
    return fit_into_store(fit_job(
        cfg, training_run(cfg), f"alpha={cfg.alpha} seed={cfg.seed}",
        lambda: instantiate(cfg.module, model=instantiate(cfg.model), attack=attack, eval_attack=eval_attack),
        callbacks=[instantiate(cfg.early_stopping)] if cfg.get("early_stopping") else [],
    ))


main = cli.main("train")(train)

if __name__ == "__main__":
    main()
