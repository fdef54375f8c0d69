"""Train one adversarially robust model per job, into the store.

    python -m robust_ensembles.train experiment=cpu alpha=0.25 seed=0
    python -m robust_ensembles.train -m experiment=cpu alpha=0,0.25 'seed=range(2)'

A job whose store entry is complete is skipped; one whose entry holds a last checkpoint resumes.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles import store
from robust_ensembles.errors import ConfigError
from robust_ensembles.fitting import fit_into_store


def check(cfg: DictConfig) -> None:
    """Top-level scalars, checked before anything is built."""
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or cfg.alpha < 0:
        raise ConfigError(f"alpha={cfg.alpha!r} must be a number >= 0 (the L2 training radius in [0,1] pixels; 0 = natural training).")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer >= 0.")


def training_identity(cfg: DictConfig) -> dict:
    """The config keys (`store.identity`) that determine the weights of the model `cfg` trains."""
    return store.identity_of(cfg, cfg.store.identity.include, cfg.store.identity.exclude)


def training_run(cfg: DictConfig) -> store.Run:
    """The store entry of the model that `cfg` trains."""
    return store.open_run(cfg.store.root, training_identity(cfg))


def train(cfg: DictConfig) -> dict:
    check(cfg)
    attack, eval_attack = instantiate(cfg.attack), instantiate(cfg.eval_attack)  # bad attack values fail here, fast
    return fit_into_store(
        cfg, training_run(cfg), f"alpha={cfg.alpha} seed={cfg.seed}",
        lambda: instantiate(cfg.module, model=instantiate(cfg.model), attack=attack, eval_attack=eval_attack),
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
