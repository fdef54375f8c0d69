"""Models built from store entries: the one place that turns store records into `nn.Module`s.

* `load_model(run)`: a single model (its config's `model`) or a composite (its two backbones, each
  from its own entry, under the stored head), with the kept weights, in eval mode.
* `seed_ensemble(...)`: the first K complete seeds of one training recipe, averaged.
* `build(cfg)`: what `evaluate` evaluates (`members.kind`): a K-ensemble of seeds (K=1 = a single
  model), one composite, or a weighted ensemble of composites; with its store entries and a label.

The store returns identities, configs and weights; only this module instantiates models from them.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from robust_ensembles import store
from robust_ensembles.core import registry
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.models.composites import Composite
from robust_ensembles.models.ensembles import Ensemble
from robust_ensembles.store.identity import composite_run, members_query

KINDS = ("seeds", "composites")


def load_model(run: store.Run, which: str = "model.pt") -> nn.Module:
    """The model stored in `run` (kept epoch by default) in eval mode."""
    if "backbones" in run.identity:  # a composite: its backbones come from their own entries
        parts = {role: load_model(run.sibling(key)) for role, key in run.identity["backbones"].items()}
        model = Composite(**parts)
    else:
        # the stored config names its targets by the import paths of its day: build them where they live now
        model = instantiate(registry.buildable(OmegaConf.to_container(run.config().model, resolve=True)))
    model.load_state_dict(run.weights(which))
    return model.eval()


def seed_ensemble(root, where: Mapping, K: int, seeds: Iterable[int] | None = None, train_hint: str = "",
                  **ensemble_kw) -> tuple[Ensemble, list[store.Run]]:
    """An ensemble of the first K complete store entries matching `where` (by seed)."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ConfigError(f"K={K!r} must be an integer >= 1 (the number of ensemble members).")
    runs = store.query(root, where, seeds=seeds)
    if len(runs) < K:
        have = [r.identity.get("seed") for r in runs]
        what = f"alpha={where['alpha']} and this recipe" if "alpha" in where else f"the identity {dict(where)}"
        raise ConfigError(f"K={K} needs {K} trained members ({what}) in {root}, found {len(runs)} "
                          f"(seeds {have}). Train them first: {train_hint or 'python -m robust_ensembles.train -m'} "
                          f"'seed=range({K})'")
    runs = runs[:K]
    return Ensemble([load_model(r) for r in runs], **ensemble_kw), runs


def composite_label(runs: list[store.Run], weights: list[float]) -> str:
    parts = [f"({r.identity['composite']['robust']['alpha']}, {r.identity['composite']['natural']['alpha']})"
             f"@{r.identity['composite']['eps']}" for r in runs]
    if len(runs) == 1:
        return f"composite {parts[0]}"
    return f"{len(runs)}x composite {' + '.join(parts)} w={'/'.join(f'{w:g}' for w in weights)}"


def count(cfg: DictConfig) -> int:
    """How many members the configured model has (K seeds, or its composites)."""
    return int(cfg.K) if cfg.members.kind == "seeds" else len(cfg.members.composites)


def build(cfg: DictConfig) -> tuple[Ensemble, list[store.Run], str]:
    """The evaluated model (an Ensemble, K=1 included), its store entries, and a label."""
    ens = OmegaConf.to_container(cfg.ensemble, resolve=True)
    if cfg.members.kind not in KINDS:
        raise ConfigError(f"members.kind={cfg.members.kind!r} is unknown; use one of {list(KINDS)}.")
    seed_keys = [k for k, unset in (("K", 1), ("seeds", None)) if cfg.get(k, unset) != unset]
    if cfg.members.kind != "seeds" and seed_keys:
        given = " and ".join(f"{k}={cfg.get(k)}" for k in seed_keys)
        raise ConfigError(f"{given} set, but members.kind=composites (members=composite or paper_composites) evaluates "
                          f"members.composites, not seeds; drop {' and '.join(seed_keys)}, or use members=seeds.")
    if cfg.members.kind == "seeds":
        hint = f"python -m robust_ensembles.train -m experiment={cfg.get('name')} alpha={cfg.alpha}"
        model, runs = seed_ensemble(cfg.store.root, members_query(cfg), cfg.K, seeds=cfg.seeds, train_hint=hint, **ens)
        return model, runs, (f"{cfg.K}x alpha={cfg.alpha}" if cfg.K > 1 else f"alpha={cfg.alpha}")
    runs = []
    for spec in cfg.members.composites:
        comp = OmegaConf.merge(cfg.composite, spec)
        run = composite_run(cfg, comp)[0]
        if not run.complete:
            raise ConfigError(
                f"members: composite robust={comp.robust.alpha} natural={comp.natural.alpha} eps={comp.eps} "
                f"seed={cfg.seed} is not in the store ({run.path}). Fine-tune it first: python -m "
                f"robust_ensembles.finetune experiment={cfg.name} composite.robust.alpha={comp.robust.alpha} "
                f"composite.natural.alpha={comp.natural.alpha} composite.eps={comp.eps} seed={cfg.seed}")
        runs.append(run)
    if ens["weights"] is None and cfg.members.get("weights") is not None:
        ens["weights"] = list(cfg.members.weights)
    model = Ensemble([load_model(r) for r in runs], **ens)
    return model, runs, composite_label(runs, model.weights.tolist())
