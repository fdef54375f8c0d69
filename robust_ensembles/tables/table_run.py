"""The table object: one table of the paper at one scale, read from its sweep (sweeps/<table>.yaml), with
what it needs trained and the calls its module fills it with.

A table module (`module:` in the sweep; default `robust_ensembles.tables.<table>`) defines
`needs(t) -> Needs` and `fill(t)`; `fill` asks `t.evaluate_row(overrides)` for each row's records. The
evaluator behind it is the store's (`StoreEvaluator`: reuse a stored record, else compute it) or, for
an estimate, the planner (`estimate.Planner`: stand-ins, noting what is missing).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

from omegaconf import DictConfig, OmegaConf

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.records import evaluate
from robust_ensembles.evaluation.request import from_config
from robust_ensembles.store.identity import composite_run, training_run, with_radius
from robust_ensembles.tables.launch import multirun, multirun_groups

ROW_CONFIG = "tables"  # conf/tables.yaml: the evaluate config with the tables' shared evaluation settings
AUTOATTACK_MODES = ("run", "stored", "off")  # compute missing AutoAttack records | use stored ones only | no column


class Evaluator(Protocol):
    """What `TableRun.evaluate_row` hands a row's composed config to; returns the row's records."""
    planning: bool

    def __call__(self, cfg: DictConfig, overrides: list[str]) -> dict: ...


class StoreEvaluator:
    """Rows evaluated for real: each record reused from the store, or computed and stored."""
    planning = False

    def __call__(self, cfg: DictConfig, overrides: list[str]) -> dict:
        return evaluate(from_config(cfg))


def training_overrides(base: list[str], overrides: list[str]) -> list[str]:
    """The overrides the training config knows (the rest, e.g. `evaluation.*` or `K=`, are for rows only)."""
    known = []
    for o in overrides:
        try:
            compose_config("train", [*base, o])
        except ConfigError:
            continue
        known.append(o)
    return known


@dataclass
class Needs:
    """What a table needs trained: seeds per alpha (the first n seeds), and composite options; `later`:
    seeds a choice not yet made will need (e.g. the replicates of Table 1's chosen alpha), at the alpha
    the estimate assumes: costed by ESTIMATE, trained once the choice is made."""
    seeds: dict[float, int] = field(default_factory=dict)
    composites: list[str] = field(default_factory=list)
    later: dict[float, int] = field(default_factory=dict)

    def add_seeds(self, alpha: float, n: int) -> "Needs":
        self.seeds[float(alpha)] = max(self.seeds.get(float(alpha), 0), int(n))
        return self

    def add_later(self, alpha: float, n: int) -> "Needs":
        self.later[float(alpha)] = max(self.later.get(float(alpha), 0), int(n))
        return self


class TableRun:
    """One table at one scale: its sweep spec (`spec`, and `s` for the scale), and the calls its
    module fills it with (`evaluate_row`, which hands each row to `evaluator`: the store's, or the
    estimate's planner)."""

    def __init__(self, table: str, scale: str, overrides: list[str], autoattack: str = "run",
                 sweeps_dir: str | Path = PROJECT_ROOT / "sweeps", launcher: list[str] | None = None,
                 may_train: bool = True):
        sweeps_dir = Path(sweeps_dir)
        path = sweeps_dir / f"{table}.yaml"
        if not path.is_file():
            raise ConfigError(f"table={table}: no sweep {path}; tables: "
                              f"{sorted(p.stem for p in sweeps_dir.glob('*.yaml'))} (or all).")
        self.spec = OmegaConf.load(path)
        if scale not in self.spec.scales:
            raise ConfigError(f"scale={scale} is not declared in {path}; use one of {list(self.spec.scales)}.")
        if autoattack not in AUTOATTACK_MODES:
            raise ConfigError(f"autoattack_column={autoattack} is unknown; use one of {list(AUTOATTACK_MODES)}.")
        self.table, self.scale, self.s, self.autoattack = table, scale, self.spec.scales[scale], autoattack
        scale_base = [f"experiment={self.s.get('experiment', scale)}", *self.s.get("overrides", [])]
        # how every table evaluates its rows at this scale: stated once, in the preset (`table_evaluation`)
        stated = compose_config("train", scale_base).get("table_evaluation") or {}
        self.evaluate_overrides = list(self.s.get("evaluate_overrides", stated.get("overrides", [])))
        self.autoattack_n = self.s.get("autoattack_n", stated.get("autoattack_n"))
        if self.autoattack_n is None:
            raise ConfigError(f"scale={scale}: the preset {scale_base[0]} states no table_evaluation.autoattack_n (the "
                              f"test points of the AutoAttack column); add it there, or autoattack_n to {path}.")
        self.base = [*scale_base, *training_overrides(scale_base, overrides)]  # every train and finetune job
        self.row_base = [*scale_base, f"table={table}", f"scale={scale}", *self.evaluate_overrides,
                         *overrides]  # every row's evaluation: the user's overrides last
        self.launcher = list(launcher or [])
        self.user_overrides = list(overrides)
        self.trained: list[str] = []
        self.may_train = may_train  # False (train=false): a model the store lacks is an error, never trained
        self.evaluator: Evaluator = StoreEvaluator()  # estimate.planner_for(t) puts the planner here

    @property
    def planning(self) -> bool:
        """Whether rows are planned (ESTIMATE), not evaluated: nothing is trained, evaluated or written."""
        return self.evaluator.planning

    @functools.cached_property
    def module(self) -> ModuleType:
        name = self.spec.get("module", f"robust_ensembles.tables.{self.table}")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ConfigError(f"sweeps/{self.table}.yaml: module {name} cannot be imported ({e}); "
                              f"name a module with needs() and fill().") from None
        missing = [f for f in ("needs", "fill") if not callable(getattr(module, f, None))]
        if missing:
            raise ConfigError(f"table module {name} lacks {missing}: a table module defines needs(t) and fill(t).")
        return module

    @functools.cached_property
    def evaluate_cfg(self) -> DictConfig:
        """The config every row starts from (its attack, grid, flag gap, claims, logger), composed once."""
        return compose_config(ROW_CONFIG, self.row_base)

    @property
    def flag_gap(self) -> float:
        """The evaluation attack minus AutoAttack above this is flagged."""
        return float(self.evaluate_cfg.evaluation.autoattack.flag_gap)

    @property
    def claims(self) -> DictConfig:
        return self.evaluate_cfg.claims

    def command(self) -> str:
        """The command that fills this table, as a user types it: with the user's overrides but those naming
        this machine's folders (`paths.*`, and any whose value is an absolute or home path: the store is
        wherever the reader keeps theirs)."""
        local = lambda o: o.lstrip("+~").startswith("paths.") or o.partition("=")[2].startswith(("/", "~"))
        return " ".join(["python -m robust_ensembles.tables", f"table={self.table}", f"scale={self.scale}",
                         f"autoattack_column={self.autoattack}", *[o for o in self.user_overrides if not local(o)],
                         *self.launcher])

    # ------------------------------------------------------------------ what the table needs
    def needs(self) -> Needs:
        """The module's needs, with every composite's backbones added to the seeds."""
        needs = self.module.needs(self)
        for option in needs.composites:
            comp = compose_config("finetune", [*self.base, f"composite={option}"]).composite
            for part in (comp.robust, comp.natural):
                needs.add_seeds(part.alpha, int(part.seed) + 1)
        return needs

    def untrained(self, seeds: dict[float, int]) -> list[tuple[float, int]]:
        """The (alpha, seed) jobs of the first n seeds per alpha that the store lacks."""
        train_cfg = compose_config("train", self.base)
        return [(a, seed) for a, k in sorted(seeds.items()) for seed in range(k)
                if not training_run(with_radius(train_cfg, a, seed)).complete]

    def missing(self, with_later: bool = False) -> tuple[list[tuple[float, int]], list[str]]:
        """The (alpha, seed) jobs and composites the store lacks; `with_later` (ESTIMATE): with the seeds that
        choices not yet made will need (`Needs.later`)."""
        needs = self.needs()
        if with_later:
            for alpha, n in needs.later.items():
                needs.add_seeds(alpha, n)
        jobs = self.untrained(needs.seeds)
        comps = []
        for option in sorted(set(needs.composites)):
            cfg = compose_config("finetune", [*self.base, f"composite={option}"])
            try:
                if not composite_run(cfg, cfg.composite)[0].complete:
                    comps.append(option)
            except ConfigError:  # its backbones are not trained yet
                comps.append(option)
        return jobs, comps

    # ------------------------------------------------------------------ running
    def multirun(self, module: str, overrides: list[str]) -> None:
        multirun(module, [*self.base, *self.launcher, *overrides])

    def refuse_training(self, jobs: list[tuple[float, int]], comps: list[str], needed_by: str | None = None) -> None:
        """With train=false, these missing (alpha, seed) jobs and composites are one error naming them."""
        if (jobs or comps) and not self.may_train:
            lacking = [f"alpha={a} seed={s}" for a, s in jobs] + [f"composite={c}" for c in comps]
            raise ConfigError(f"train=false: the store {self.evaluate_cfg.store.root} lacks {len(lacking)} model(s) "
                              f"that {needed_by or self.table} need(s) ({', '.join(lacking)}); train them (drop "
                              f"train=false) or point paths.store_dir at the store that holds them.")

    def train(self, jobs: list[tuple[float, int]], comps: list[str], needed_by: str | None = None) -> list[str]:
        """Train these (alpha, seed) jobs and composites (which `needed_by` names the tables that need, default
        this one); returns what was trained."""
        self.refuse_training(jobs, comps, needed_by)
        trained = []
        for alphas, seeds in multirun_groups(jobs):
            self.multirun("robust_ensembles.train", ["alpha=" + ",".join(map(str, alphas)),
                                                     "seed=" + ",".join(map(str, seeds))])
            trained += [f"alpha={a} seed={s}" for a in alphas for s in seeds]
        if comps:
            self.multirun("robust_ensembles.finetune", ["composite=" + ",".join(comps)])
            trained += [f"composite={c}" for c in comps]
        return trained

    def train_missing(self) -> None:
        self.trained += self.train(*self.missing())

    def evaluate_row(self, overrides: list[str], autoattack: bool = True) -> dict:
        """One evaluation (reused from the store when it exists), with the table's AutoAttack column."""
        aa = ([f"evaluation.autoattack.eps={self.spec.target_eps}", f"evaluation.autoattack.n={self.autoattack_n}",
               f"evaluation.autoattack.compute={self.autoattack == 'run'}"]
              if autoattack and self.autoattack != "off" else ["evaluation.autoattack.eps=null"])
        full = [*self.row_base, *aa, *overrides]
        cfg = compose_config(ROW_CONFIG, full)
        record = self.evaluator(cfg, full)
        if not autoattack or self.autoattack == "off":  # no AutoAttack column: no stored attack records either
            record = {**record, "attacks": []}
        return record

    def fill(self):
        return self.module.fill(self)
