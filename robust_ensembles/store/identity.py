"""What keys a model in the store: the one place that turns a config into a store entry.

* `training_run(cfg)`: the entry of the model `cfg` trains (identity = `store.identity` keys).
* `composite_config(cfg, composite)`: the config a composite's head is trained with; the one place
  that sets its training radius (`alpha = composite.eps`).
* `composite_run(cfg, composite)`: a composite's entry, keyed by its config and its backbones' keys.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, open_dict

from robust_ensembles import store
from robust_ensembles.core.errors import ConfigError


def check(cfg: DictConfig) -> None:
    """Top-level scalars, checked before anything is built."""
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or cfg.alpha < 0:
        raise ConfigError(f"alpha={cfg.alpha!r} must be a number >= 0 (the L2 training radius in [0,1] pixels; "
                          f"0 = natural training).")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer >= 0.")


def training_identity(cfg: DictConfig) -> dict:
    """The config keys (`store.identity`) that determine the weights of the model `cfg` trains."""
    return store.identity_of(cfg, cfg.store.identity.include, cfg.store.identity.exclude)


def training_run(cfg: DictConfig) -> store.Run:
    """The store entry of the model that `cfg` trains."""
    return store.open_run(cfg.store.root, training_identity(cfg))


def members_query(cfg: DictConfig) -> dict:
    """The identity every seed of `cfg`'s recipe shares: the training identity less the seed."""
    identity = training_identity(cfg)
    identity.pop("seed", None)
    return identity


def with_radius(cfg: DictConfig, alpha: float, seed: int) -> DictConfig:
    """A copy of cfg training at `alpha` with `seed`."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.alpha, c.seed = alpha, seed
    return c


def backbone_run(cfg: DictConfig, spec: DictConfig, role: str) -> store.Run:
    """The complete store entry of a backbone trained with cfg's recipe at spec.alpha, spec.seed."""
    run = training_run(with_radius(cfg, spec.alpha, spec.seed))
    if not run.complete:
        raise ConfigError(
            f"composite.{role}: no trained backbone at alpha={spec.alpha} seed={spec.seed} in {cfg.store.root} "
            f"(expected {run.path}). Train it first: python -m robust_ensembles.train "
            f"experiment={cfg.name} alpha={spec.alpha} seed={spec.seed}")
    return run


def composite_config(cfg: DictConfig, composite: DictConfig) -> DictConfig:
    """The config that trains `composite`'s head: cfg with this composite and alpha = composite.eps
    (the head's training and validation attacks run at the composite's eps)."""
    eps = composite.eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ConfigError(f"composite.eps={eps!r} must be a number >= 0 (the L2 radius that trains the head).")
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.composite = composite
        c.alpha = eps
    return c


def composite_run(cfg: DictConfig, composite: DictConfig) -> tuple[store.Run, store.Run, store.Run]:
    """(composite entry, robust backbone entry, natural backbone entry) for one composite config."""
    robust, natural = backbone_run(cfg, composite.robust, "robust"), backbone_run(cfg, composite.natural, "natural")
    c = composite_config(cfg, composite)
    ident = store.identity_of(c, c.store.composite_identity.include, c.store.composite_identity.exclude)
    ident["backbones"] = {"robust": robust.key, "natural": natural.key}
    return store.open_run(c.store.root, ident), robust, natural
