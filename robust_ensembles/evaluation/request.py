"""What one evaluation is asked to do, turned from the composed config once, at the door (`from_config`).

A `Request` holds the model under evaluation (`Subject`: the built model, its members' store entries,
its label and how it combines them), the evaluation attack, the grid and how it is searched
(`CurveSettings`), the test points, the AutoAttack column, the sanity checks, and the pieces of the job's
machinery a record needs (its trainer and logger, its data, its seeding, its resolved config). The record functions of
`robust_ensembles.evaluation.records` take a Request; none of them reads the config, so an evaluation
walks down the floors: the entry point composes the config, `from_config` resolves the members once
(`models.members.build`, which is where the config turns into store identities), the records are looked up
or computed by key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_ensembles import store
from robust_ensembles.core import job_setup
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.curves import check_grid, check_search
from robust_ensembles.models import members
from robust_ensembles.models.ensembles import Ensemble
from robust_ensembles.store.identity import check
from robust_ensembles.store.record_kinds import CURVE


@dataclass(frozen=True)
class Subject:
    """The model under evaluation, attacked as one model: the built Ensemble (K=1 included), its members'
    store entries, its label, how it combines its members (`ensemble.combine`), and the training radius
    its config names (`alpha`: a seed ensemble's members'; kept in the curve record)."""
    model: Ensemble
    runs: tuple[store.Run, ...]
    label: str
    combine: str
    alpha: float

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.runs]

    @property
    def weights(self) -> list[float]:
        return self.model.weights.tolist()


@dataclass(frozen=True)
class CurveSettings:
    """How the curve is made: the grid, how it is searched, and how the attacks run."""
    eps_grid: tuple[float, ...]
    per_eps: bool
    search: str
    warm_start: bool
    guess_scale: float
    first_order_step: bool
    auc_eps: float | None
    split: str
    batch_size: int
    channels_last: bool
    precision: str


@dataclass(frozen=True)
class AutoAttackColumn:
    """A table's AutoAttack column: AutoAttack (`attack`) on the first n points at one radius; `compute=False`
    only reads a stored record."""
    eps: float
    n: int
    compute: bool


@dataclass(frozen=True)
class Checks:
    """`check=true`'s sanity checks (`evaluation.checks.run_checks`)."""
    n: int
    eps: float
    large_eps: float
    large_eps_max_acc: float
    max_gap: float
    square: Any      # the black-box check (checks.square)


@dataclass(frozen=True)
class Request:
    store_root: Path
    subject: Subject
    attack: Any                          # the evaluation attack (a callable: PGD, APGD)
    curve: CurveSettings
    curve_spec: dict                     # the curve record's identity in the store
    points: dict                         # which test points (split and subset): part of every record's identity
    autoattack_attack: Any               # AutoAttack as configured (checks.autoattack): the column's and the checks' (else None)
    autoattack: AutoAttackColumn | None  # None: no column
    checks: Checks | None                # None: check=false
    force: bool                          # recompute records that are stored
    experiment: str
    provenance: Callable[[], dict]       # the resolved config, kept in the curve record
    trainer: Callable[[], tuple]         # (trainer, logger) logging into the curve record's folder, the job seeded
    data: Callable[..., Any]             # the datamodule (keyword arguments to its config)
    seed_job: Callable[[], None]         # threads and random generators of this job

    @property
    def label(self) -> str:
        return self.subject.label


def test_points(cfg: DictConfig) -> dict:
    """Which points an evaluation attacks (split and subset): part of every record's spec."""
    return {"split": cfg.evaluation.split, **{k: cfg.data[k] for k in ("source", "test_subset", "split_seed", "val_size")}}


SEARCH_KEYS = ("search", "warm_start", "guess_scale", "first_order_step")  # how the grid is searched: in a spec only off their defaults


def evaluation_spec(cfg: DictConfig) -> dict:
    """The evaluation settings that determine a curve (part of its record's spec): all of `evaluation` but
    the AutoAttack column's (its own record) and `force`; `search` only where it is not the grid scan that
    every record made before the option used, `warm_start` and `first_order_step` only where they are on, and
    `guess_scale` only for the guided search, so those records keep their keys; none of SEARCH_KEYS for a grid
    of 0 alone (clean accuracy: nothing is attacked, so no search can change it)."""
    ev = {k: v for k, v in OmegaConf.to_container(cfg.evaluation, resolve=True).items() if k not in ("autoattack", "force")}
    if ev.get("search", "scan") == "scan":
        ev.pop("search", None)
    for flag in ("warm_start", "first_order_step"):
        if not ev.get(flag, False):
            ev.pop(flag, None)
    if ev.get("search") != "guided":
        ev.pop("guess_scale", None)  # only the guided search reads it
    if max(float(e) for e in ev["eps_grid"]) == 0:
        for k in SEARCH_KEYS:
            ev.pop(k, None)
    return ev


def curve_settings(cfg: DictConfig) -> CurveSettings:
    ev = cfg.evaluation
    return CurveSettings(tuple(check_grid(ev.eps_grid)), bool(ev.per_eps), ev.search, bool(ev.warm_start),
                         ev.guess_scale, ev.first_order_step, ev.auc_eps, ev.split, int(ev.batch_size), bool(ev.channels_last), ev.precision)


def curve_spec(cfg: DictConfig, subject_keys: list[str], weights: list[float]) -> dict:
    return {"members": subject_keys, "weights": weights,
            "ensemble": OmegaConf.to_container(cfg.ensemble, resolve=True),
            "evaluation": evaluation_spec(cfg),
            "check": cfg.check, "checks": OmegaConf.to_container(cfg.checks, resolve=True) if cfg.check else None,
            "seed": cfg.seed, "test": test_points(cfg)}


def from_config(cfg: DictConfig, built: tuple | None = None) -> Request:
    """The Request of the configured evaluation: scalars checked, the attack built, the members resolved
    from the store once (`members.build`: an error that names the train command when they are missing;
    `built`: its result, when the caller has it already)."""
    check(cfg)
    attack = instantiate(cfg.evaluation.attack)
    ev = cfg.evaluation
    check_search(ev.search, ev.per_eps, ev.warm_start, attack, ev.guess_scale, ev.first_order_step)
    model, runs, label = members.build(cfg) if built is None else built
    subject = Subject(model, tuple(runs), label, cfg.ensemble.combine, cfg.alpha)
    column = None if ev.autoattack.eps is None else AutoAttackColumn(float(ev.autoattack.eps), int(ev.autoattack.n),
                                                                      bool(ev.autoattack.compute))
    checks = None
    if cfg.check:
        c = cfg.checks
        if isinstance(c.eps, bool) or not isinstance(c.eps, (int, float)) or c.eps <= 0:
            raise ConfigError(f"checks.eps={c.eps!r} must be a radius > 0 for check=true (it defaults to "
                              f"evaluation.auc_eps; set checks.eps=0.5, say).")
        checks = Checks(int(c.n), float(c.eps), float(c.large_eps), float(c.large_eps_max_acc), float(c.max_gap),
                        instantiate(c.square))
    # AutoAttack as configured: built only where a column or the checks use it
    autoattack_attack = instantiate(cfg.checks.autoattack) if column is not None or checks is not None else None

    spec = curve_spec(cfg, subject.keys, subject.weights)
    job = copy.deepcopy(cfg)  # the curve's job logs into the record's folder
    with open_dict(job):
        job.paths.run_dir = str(store.record_path(cfg.store.root, CURVE, spec).with_suffix(""))
    return Request(
        store_root=Path(cfg.store.root), subject=subject, attack=attack, curve=curve_settings(cfg),
        curve_spec=spec, points=test_points(cfg),
        autoattack_attack=autoattack_attack, autoattack=column, checks=checks,
        force=bool(ev.force), experiment=cfg.name, provenance=lambda: OmegaConf.to_container(job, resolve=True),
        trainer=lambda: job_setup.setup(job, [], enable_checkpointing=False, precision=ev.precision),
        data=lambda **kw: instantiate(cfg.data, **kw), seed_job=lambda: job_setup.seed(cfg))
