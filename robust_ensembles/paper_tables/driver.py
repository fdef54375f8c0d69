"""The generic table driver: read a table's sweep, train what the store lacks, fill, write reports.

    python -m robust_ensembles.tables table=table1 scale=cpu            # the entry point
    python -m robust_ensembles.tables table=all scale=cpu estimate=true  # what is missing, and its cost

Overrides reach every train, finetune and evaluate call; `hydra/launcher=...` and
`hydra.launcher.*` overrides reach the training multiruns.
"""

from __future__ import annotations

import copy
import functools
import heapq
import importlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import CONFIG_DIR, PROJECT_ROOT, store
from robust_ensembles.errors import ConfigError, UserError
from robust_ensembles.identity import composite_run, training_identity, training_run, with_radius
from robust_ensembles.jobs import measured_with, threads_of
from robust_ensembles.paper_tables.reports import write_reports
from robust_ensembles.curves import Curve, check_grid
from robust_ensembles.robustness import (AUTOATTACK, CURVE, autoattack_spec, evaluate, seconds_per_member_point,
                                         stored, this_device)

log = logging.getLogger(__name__)
ROW_CONFIG = "tables"  # conf/tables.yaml: the evaluate config with the tables' shared evaluation settings
AUTOATTACK_MODES = ("run", "stored", "off")  # compute missing AutoAttack records | use stored ones only | no column


class JobsFailedError(UserError):
    """A training multirun ended with failed jobs (each already reported); finished jobs are kept."""


_COMPOSED: dict[tuple, DictConfig] = {}


def compose_config(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """conf/<config_name>.yaml with overrides (inside a running Hydra app, or outside one); a table
    composes the same configs many times, so each is composed once per process and handed out as a copy.
    `hydra`: with Hydra's own config (`cfg.hydra`: the launcher) and the `hydra...` overrides, else without.
    Overrides that only set a value (`alpha=0.5`, `evaluation.eps_grid=[0]`: no config group, no +/~) are
    applied to the composition of the others, as Hydra applies them after the defaults: a table's hundreds
    of rows differ in values only, and one composition takes about half a second."""
    overrides = [o for o in overrides if hydra or not o.startswith("hydra")]
    groups, values = (overrides, []) if hydra else split_overrides(overrides)
    key = (config_name, tuple(groups), hydra)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(config_name, groups, hydra)
    cfg = copy.deepcopy(_COMPOSED[key])
    try:
        for name, value in values:
            OmegaConf.update(cfg, name, value, merge=True)  # as Hydra applies a value override
    except Exception:  # a key the config lacks, a wrong type: Hydra's own composition says what is wrong
        return _compose(config_name, overrides, hydra)  # (a fresh composition: nothing to copy)
    return cfg


def _compose(config_name: str, overrides: list[str], hydra: bool) -> DictConfig:
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
    except HydraException as e:
        raise ConfigError(f"conf/{config_name}.yaml with {overrides}: {' '.join(str(e).split())}") from None


def split_overrides(overrides: list[str]) -> tuple[list[str], list[tuple[str, object]]]:
    """(the overrides composition needs: config groups, +/~, anything unparsed; the value overrides as (key,
    value)), a value override being `key=value` whose key names no config group (conf/<key>/)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return list(overrides), []
    groups, values = [], []
    for text, o in zip(overrides, parsed):
        name = o.key_or_group
        is_group = "/" in name or "@" in name or (CONFIG_DIR / name).is_dir()
        if o.type != OverrideType.CHANGE or o.is_sweep_override() or o.package is not None or is_group:
            groups.append(text)
        else:
            values.append((name, o.value()))
    # Hydra applies +, ++ and ~ overrides in the order given, among the value overrides: where one touches a
    # key a value override also sets (or one inside the other), only Hydra's own order gives the right config
    touched = [o.key_or_group for o in parsed if o.type != OverrideType.CHANGE]
    related = lambda a, b: a == b or a.startswith(b + ".") or b.startswith(a + ".")
    if any(related(t, name) for t in touched for name, _ in values):
        return list(overrides), []
    return groups, values


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


def multirun(module: str, overrides: list[str]) -> None:
    """`python -m <module> -m <overrides>` (a Hydra multirun through whatever launcher the overrides
    name); failed jobs raise JobsFailedError after the others finished."""
    cmd = [sys.executable, "-m", module, "-m", *overrides]
    log.info("running: %s", " ".join(cmd))
    rc = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode
    if rc != 0:
        raise JobsFailedError(f"{module} multirun failed (exit {rc}; its failed jobs are reported above); "
                              f"fix them and rerun the target: finished jobs are kept.")


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
    module fills it with (`evaluate_row`)."""

    def __init__(self, table: str, scale: str, overrides: list[str], autoattack: str = "run",
                 sweeps_dir: str | Path = PROJECT_ROOT / "sweeps", launcher: list[str] | None = None):
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
        scale_base = [f"experiment={self.s.experiment}", *self.s.get("overrides", [])]
        self.base = [*scale_base, *training_overrides(scale_base, overrides)]  # every train and finetune job
        self.row_base = [*scale_base, f"table={table}", f"scale={scale}", *self.s.get("evaluate_overrides", []),
                         *overrides]  # every row's evaluation: the user's overrides last
        self.launcher = list(launcher or [])
        self.user_overrides = list(overrides)
        self.trained: list[str] = []
        self.plan: list[dict] | None = None  # estimate mode: the records the rows need (evaluation_plan)

    @functools.cached_property
    def module(self) -> ModuleType:
        name = self.spec.get("module", f"robust_ensembles.paper_tables.{self.table}")
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

    def missing(self, planning: bool = False) -> tuple[list[tuple[float, int]], list[str]]:
        """The (alpha, seed) jobs and composites the store lacks; `planning` (ESTIMATE): with the seeds that
        choices not yet made will need (`Needs.later`)."""
        needs = self.needs()
        if planning:
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

    def train(self, jobs: list[tuple[float, int]], comps: list[str]) -> list[str]:
        """Train these (alpha, seed) jobs and composites; returns what was trained."""
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

    def estimate(self, train_jobs: int = 1, evaluate_jobs: int = 1, missing: tuple | None = None,
                 plan: list[dict] | None = None) -> str:
        """Missing training jobs and evaluation records, and their cost from what stored jobs and records
        of the same setup measured on this store's machines (`fit_seconds`, record wall times), with
        `train_jobs` training and `evaluate_jobs` evaluation jobs run at a time. `missing` and `plan`:
        this table's `missing()` and `evaluation_plan()` where the caller has them already."""
        jobs, comps = self.missing(planning=True) if missing is None else missing
        train, t_s = self.estimate_training(jobs, comps, slots=train_jobs)
        evaluation, e_s = self.estimate_evaluation(plan, slots=evaluate_jobs)
        return f"{train}; {evaluation}{total_text(t_s, e_s, train_jobs, evaluate_jobs, total_unit(train, t_s, evaluation, e_s))}"

    def estimate_training(self, jobs: list[tuple[float, int]], comps: list[str], what: str = "training jobs",
                          slots: int = 1) -> tuple[str, float | None]:
        """(text, seconds) of these training jobs and composites at the median fit time of each kind stored
        for this setup (natural, adversarial, composite): the text gives their sum, the seconds the wall
        time of their multiruns (`multirun_groups`, then the composites) with `slots` jobs at a time
        (`makespan`); seconds None when a kind has no measurement. `what` names the jobs in the text (the
        union of several tables: "distinct training jobs")."""
        cfg = compose_config("train", self.base)
        ident, threads = training_identity(cfg), threads_of(cfg)
        timed = lambda r: r.metrics().get("fit_seconds") and r.metrics().get("resumed_from") is None and \
            measured_with(threads, r.metrics())  # timed whole (a resumed fit timed only its rest), threads as this run's
        done = [r for r in store.query(cfg.store.root, {"model": ident["model"], "data": ident["data"]}) if timed(r)]
        # natural training (alpha=0) runs no attack: its fit time is estimated apart from the adversarial jobs'
        fits = {kind: [r.metrics()["fit_seconds"] for r in done if (r.identity["alpha"] == 0) == (kind == "natural")]
                for kind in ("natural", "adversarial")}
        # a composite trains a head through two frozen backbones: timed apart, from the composites stored
        # (same data, backbones of this model)
        fits["composite"] = [r.metrics()["fit_seconds"] for r in store.query(cfg.store.root, {"data": ident["data"]})
                             if "backbones" in r.identity and timed(r)
                             and r.sibling(r.identity["backbones"]["robust"]).identity.get("model") == ident["model"]]
        todo = {"natural": sum(1 for a, _ in jobs if a == 0), "adversarial": sum(1 for a, _ in jobs if a != 0),
                "composite": len(comps)}
        head = f"{len(jobs)} {what} and {len(comps)} composites missing"
        if not any(todo.values()):
            return head, 0.0
        source = {k: f"{len(v)} stored" for k, v in fits.items() if v}
        reference = reference_costs(cfg)
        for k, n in todo.items():  # a kind this store has not timed yet: the preset's reference figure, said so
            if n and not fits[k] and reference and reference.fit_seconds.get(k):
                fits[k], source[k] = [float(reference.fit_seconds[k])], f"reference of {reference.measured}"
        unmeasured = [k for k, n in todo.items() if n and not fits[k]]
        if unmeasured:
            return (f"{head}; no {' or '.join(unmeasured)} job of this setup has run yet, so no measured fit time "
                    f"to estimate from"), None
        fit = {k: statistics.median(v) for k, v in fits.items() if v}
        seconds = sum(n * fit[k] for k, n in todo.items() if n)
        multiruns = [[fit["natural" if a == 0 else "adversarial"] for a in alphas for _ in seeds]
                     for alphas, seeds in multirun_groups(jobs)] + ([[fit["composite"]] * len(comps)] if comps else [])
        unit = hours_unit(cfg, all(source[k].startswith("reference") for k in fit))
        text = (f"{head}; about {seconds / 3600:.2f} {unit} of training at the median measured fit time per job ("
                + ", ".join(f"{k} {fit[k] / 60:.1f} min, {source[k]}" for k in fit) + ")")
        return text, sum(makespan(m, slots) for m in multiruns)

    def evaluation_plan(self) -> list[dict]:
        """The records this table's rows need and which are missing: the table module's own fill, run with
        stand-in records (every point robust) wherever the store has none, so nothing is evaluated."""
        self.plan = []
        try:
            self.module.fill(self)
            return self.plan
        finally:
            self.plan = None

    def estimate_evaluation(self, plan: list[dict] | None = None, slots: int = 1) -> tuple[str, float | None]:
        """(text, seconds) of the missing curve and AutoAttack records of the plan, costed at the wall time
        per member and point of stored records computed the same way (`record_seconds`): the text gives
        the sum over the evaluation jobs that compute them (`evaluation_job_list`: one per missing curve,
        with its AutoAttack record, whichever rows and tables share it), the seconds the wall time of their
        multiruns (validation, then test) with `slots` jobs at a time (`makespan`)."""
        plan = self.evaluation_plan() if plan is None else plan
        n_curves = len({p["curve_key"] for p in plan})
        missing = {CURVE: len({p["curve_key"] for p in plan if p["curve_missing"]}),
                   AUTOATTACK: len({p["autoattack_key"] for p in plan if p["autoattack_missing"]})}
        left = missing[AUTOATTACK] - len({p["autoattack_key"] for p in plan if p["autoattack_todo"]})
        text = (f"evaluation: {missing[CURVE]} of {n_curves} curve records and {missing[AUTOATTACK]} AutoAttack "
                f"records missing" + (f" ({left} left pending: AUTOATTACK=stored computes none)" if left else ""))
        if any(p["curve_missing"] and p["cfg"].evaluation.split == "val" for p in plan):
            text += (" (a choice made on validation records not yet computed is taken as their stand-ins make it, "
                     "e.g. Table 1's smallest alpha candidate)")
        multiruns = [evaluation_job_list(plan, split) for split in SPLITS]
        if not any(multiruns):
            return text, 0.0
        unmeasured = sorted({kind for p in plan for kind, (seconds, _) in p["costs"].items() if seconds is None})
        if unmeasured:
            return (f"{text}; no stored {' or '.join(unmeasured)} record computed the same way on this kind "
                    f"of device ({this_device()}) yet to estimate their cost from (evaluate one such row first)"), None
        referenced = sorted({source for p in plan for _, source in p["costs"].values() if source})
        records = {(kind, p["curve_key" if kind == CURVE else "autoattack_key"]): cost
                   for p in plan for kind, (cost, _) in p["costs"].items()}  # each record once
        seconds = sum(records.values())
        in_jobs = sum(job["seconds"] for jobs in multiruns for job in jobs)
        unit = hours_unit(plan[0]["cfg"], all(source for p in plan for cost, source in p["costs"].values() if cost))
        text += (f"; about {seconds / 3600:.2f} {unit} at the wall time per member and point of stored records "
                 f"computed on this kind of device ({this_device()})"
                 + (f"; where none is stored yet: {', '.join(referenced)}" if referenced else ""))
        # what no job carries (a second AutoAttack record of one curve) is computed afterwards, one at a time
        return text, sum(makespan([job["seconds"] for job in jobs], slots) for jobs in multiruns) + \
            max(0.0, seconds - in_jobs)

    def _planned(self, cfg: DictConfig, overrides: list[str]) -> dict:
        """Estimate mode: the row's stored records, or stand-ins (every point robust), noting what is missing
        in self.plan (with the overrides that compose the row's config, for an evaluation job). Stand-ins
        never reach the store or a report: estimate mode writes neither."""
        have = stored(cfg)
        k, curve, aa = have["K"], have["curve"], have["autoattack"]
        want_aa = cfg.evaluation.autoattack.eps is not None
        split = cfg.evaluation.split
        n = int(cfg.data.val_size if split == "val" else
                cfg.data.get("test_subset") or cfg.data.get("synthetic", {}).get("n_test") or 10000)
        aa_n = int(cfg.evaluation.autoattack.n)
        # missing and to be computed here (AUTOATTACK=stored computes none)
        aa_todo = want_aa and aa is None and bool(cfg.evaluation.autoattack.compute)
        costs = {kind: record_seconds(cfg, kind, units) for kind, units, todo in
                 ((CURVE, k * n, curve is None), (AUTOATTACK, k * aa_n, aa_todo)) if todo}
        # a curve of clean accuracy alone (no radius above 0: a member's clean accuracy for claim 4) attacks
        # nothing: one forward pass per member and point, seconds, computed in the table's own process
        clean_only = max(check_grid(cfg.evaluation.eps_grid)) == 0
        if clean_only and CURVE in costs:
            costs[CURVE] = (0.0, None)
        self.plan.append({"K": k, "n": n, "aa_n": aa_n, "curve_key": have["curve_key"], "curve_missing": curve is None,
                          "autoattack_key": have["autoattack_key"], "autoattack_missing": want_aa and aa is None,
                          "autoattack_todo": aa_todo, "costs": costs, "cfg": cfg, "overrides": overrides,
                          "in_process": clean_only and not aa_todo})
        if curve is None:
            grid = check_grid(cfg.evaluation.eps_grid)
            curve = {"curve": Curve(grid, [1.0] * len(grid), None, n).to_dict(), "n": n, "K": k,
                     "members": [{"seed": i, "key": None, "backbones": None} for i in range(k)],
                     "per_point": {"min_flip": [None] * n}}
        curve = {**curve, "attacks": have.get("attacks") or []}
        if not want_aa:
            return curve
        if aa is None:  # a stand-in with the settings a stored record would have (`outcomes.procedure` pairs them)
            settings = autoattack_spec(cfg, None, [], instantiate(cfg.checks.autoattack))["autoattack"]
            aa = {"eps": float(cfg.evaluation.autoattack.eps), "n": aa_n, "K": k, "autoattack_correct": [1] * aa_n,
                  "autoattack": cfg.checks.autoattack.version, "autoattack_acc": 1.0, "device": "planned", "wall_s": 0.0,
                  "spec": {"autoattack": settings}}
        return {**curve, "autoattack": aa}

    def evaluate_row(self, overrides: list[str], autoattack: bool = True) -> dict:
        """One evaluation (reused from the store when it exists), with the table's AutoAttack column."""
        aa = ([f"evaluation.autoattack.eps={self.spec.target_eps}", f"evaluation.autoattack.n={self.s.autoattack_n}",
               f"evaluation.autoattack.compute={self.autoattack == 'run'}"]
              if autoattack and self.autoattack != "off" else ["evaluation.autoattack.eps=null"])
        full = [*self.row_base, *aa, *overrides]
        cfg = compose_config(ROW_CONFIG, full)
        record = self._planned(cfg, full) if self.plan is not None else evaluate(cfg)
        if not autoattack or self.autoattack == "off":  # no AutoAttack column: no stored attack records either
            record = {**record, "attacks": []}
        return record

    def fill(self):
        return self.module.fill(self)


def train_union(runs: list[TableRun]) -> list[str]:
    """Train what any of the tables lacks, each model once (one Hydra multirun per seed list and
    training setup: tables that share a setup share their models)."""
    by_setup: dict[tuple, list[TableRun]] = {}
    for t in runs:
        by_setup.setdefault(tuple(t.base), []).append(t)
    trained = []
    for same in by_setup.values():
        jobs, comps = set(), set()
        for t in same:
            j, c = t.missing()
            jobs.update(j)
            comps.update(c)
        trained += same[0].train(sorted(jobs), sorted(comps))
    return trained


EVALUATE_IN = ("process", "jobs")  # every row evaluated in this process | missing records computed as Hydra jobs first


SPLITS = ("val", "test")  # the order evaluation jobs run in: a choice on validation, then the test rows it picks


def record_seconds(cfg: DictConfig, kind: str, units: int) -> tuple[float | None, str | None]:
    """(seconds, source) of a `kind` record of `units` members x points computed with this row's config:
    at the median wall time per member and point of stored records computed the same way
    (`seconds_per_member_point`), else at the preset's reference figure (source: where it was measured),
    else (None, None)."""
    rate, source = seconds_per_member_point(cfg, kind), None
    reference = reference_costs(cfg)
    if rate is None and reference and reference.seconds_per_member_point.get(kind):
        rate, source = float(reference.seconds_per_member_point[kind]), f"{kind} (reference of {reference.measured})"
    return (None, None) if rate is None else (units * rate, source)


def evaluation_job_list(plan: list[dict], split: str) -> list[dict]:
    """The evaluation jobs that compute the records `plan` lacks on `split` (a curve, or an AutoAttack
    record with `evaluation.autoattack.compute`), one per curve: the row that also carries the AutoAttack
    record when two rows share a curve. Each {"overrides", "seconds"} (seconds 0 where unmeasured; an
    AutoAttack record two jobs carry is costed in the first), the longest first (then by overrides): jobs
    start as slots free, about in this order (Ray does not promise it), so the longest is unlikely to run
    alone at the end."""
    rows: dict[str, dict] = {}
    for p in plan:
        aa = p["autoattack_todo"]
        if p["cfg"].evaluation.split != split or not (p["curve_missing"] or aa) or p.get("in_process"):
            continue  # (a clean-only curve costs less than a job's start: the table computes it itself)
        if p["curve_key"] not in rows or aa:
            rows[p["curve_key"]] = p
    jobs, costed = [], set()
    for p in rows.values():
        seconds = sum(cost or 0.0 for kind, (cost, _) in p["costs"].items()
                      if kind == CURVE or p["autoattack_key"] not in costed)
        if AUTOATTACK in p["costs"]:
            costed.add(p["autoattack_key"])
        jobs.append({"overrides": p["overrides"], "seconds": seconds})
    return sorted(jobs, key=lambda j: (-j["seconds"], j["overrides"]))


def missing_rows(runs: list[TableRun], split: str) -> list[list[str]]:
    """The override lists of the evaluation jobs these tables lack on `split`, in launch order."""
    return [j["overrides"] for j in evaluation_job_list([p for t in runs for p in t.evaluation_plan()], split)]


def multirun_groups(jobs: list[tuple[float, int]]) -> list[tuple[list[float], list[int]]]:
    """These (alpha, seed) training jobs as Hydra multiruns `alpha=... seed=...`: one per distinct seed
    list, its alphas x seeds (alpha outer, as Hydra's sweeper launches them)."""
    by_alpha: dict[float, list[int]] = {}
    for a, seed in jobs:
        by_alpha.setdefault(a, []).append(seed)
    by_seeds: dict[tuple, list[float]] = {}
    for a, seeds in by_alpha.items():
        by_seeds.setdefault(tuple(seeds), []).append(a)
    return [(alphas, list(seeds)) for seeds, alphas in by_seeds.items()]


def makespan(seconds: list[float], slots: int = 1) -> float:
    """Wall time of one multirun whose jobs (these durations, in launch order) each start on the first of
    `slots` free workers (Hydra's Ray launcher queues them all; the multirun ends with its last job)."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def evaluation_jobs(runs: list[TableRun], launch=None, max_rounds: int = 10, before_test=None) -> int:
    """Compute the records these tables lack as Hydra jobs (`python -m robust_ensembles.evaluate_row -m`,
    one job per curve with its AutoAttack record, through the tables' launcher), before they are filled
    from the store. Validation records first, in rounds until none is missing (a choice such as Table
    1's alpha reads them, and each round's plan makes the choice with the records the last one stored),
    then (after `before_test`: e.g. training what the choice needs) the test split, planned with the choice
    made; each multirun's jobs the longest first (`evaluation_job_list`). A job that dies leaves no record; the next run launches it again. Returns
    the number of jobs launched."""
    launch = launch or (lambda rows_file, n, t: multirun(
        "robust_ensembles.evaluate_row", [f"rows_file={rows_file}", "row=" + ",".join(map(str, range(n))),
                                          *[o for o in t.user_overrides if o.startswith("paths.")], *t.launcher]))
    launched = 0
    for split in SPLITS:
        if split == "test" and before_test is not None:
            before_test()  # e.g. train what the choices made on validation need (Table 1's chosen replicates)
        for _ in range(max_rounds if split == "val" else 1):
            listed = missing_rows(runs, split)  # the longest first
            if not listed:
                break
            root = Path(runs[0].evaluate_cfg.store.root).expanduser().resolve()
            rows_file = root / "jobs" / f"evaluate-{store.key_of({'rows': listed})}.json"
            store.write_atomic(rows_file, json.dumps(listed, indent=1) + "\n")
            log.info("evaluation jobs (%s split): %d -> %s", split, len(listed), rows_file)
            launch(rows_file, len(listed), runs[0])
            launched += len(listed)
    left = {s: len(missing_rows(runs, s)) for s in SPLITS}
    if any(left.values()):
        log.warning("after the evaluation jobs the store still lacks %s records; the tables compute them here", left)
    return launched


def evaluate_listed_row(rows_file: str | Path, row: int) -> dict:
    """One evaluation job: the `row`-th override list of `rows_file` (written by `evaluation_jobs`), composed
    on the tables' row config and evaluated into the store."""
    path = Path(rows_file)
    if not path.is_file():
        raise ConfigError(f"rows_file={path} does not exist; the table driver writes it (evaluate_in=jobs).")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"rows_file={path} is not valid JSON ({e}); rerun the table with evaluate_in=jobs to "
                          f"write it again.") from None
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(rows):
        raise ConfigError(f"row={row!r} must be an index into the {len(rows)} rows of {path}.")
    return evaluate(compose_config(ROW_CONFIG, rows[row]))


def reference_costs(cfg: DictConfig) -> DictConfig | None:
    """The experiment preset's reference costs (`reference_costs`: fit seconds per kind of job, seconds per
    member and point per kind of record, and where they were measured; one such block or a list of them),
    the first measured on this kind of device with this config's torch threads per job (a block without
    `threads`: any); ESTIMATE uses them only for a kind the store has not timed yet."""
    blocks = cfg.get("reference_costs")
    blocks = [] if blocks is None else [blocks] if OmegaConf.is_dict(blocks) else list(blocks)
    threads, device = threads_of(cfg), this_device()
    mine = next((b for b in blocks if b.get("device") == device and measured_with(threads, b)), None)
    if mine is not None:
        return mine
    # a block measured on GPUs (`device: gpu`) serves any GPU, and plans a GPU preset (one with no block for
    # this machine's device) from a machine without one: the estimate is then in GPU-hours
    return next((b for b in blocks if b.get("device") == GPU), None)


GPU = "gpu"  # reference_costs' device for figures measured on (or scaled to) one GPU per job


def hours_unit(cfg: DictConfig, from_reference: bool) -> str:
    """"GPU-h" where an estimate's hours are a GPU's: this machine has one, or every figure of the estimate
    came from the preset's GPU reference costs (a GPU preset planned from a machine without one); else "h"."""
    if this_device() != "cpu":
        return "GPU-h"
    if not from_reference:
        return "h"
    reference = reference_costs(cfg)
    return "GPU-h" if reference is not None and reference.get("device") == GPU else "h"


def total_unit(train: str, train_s: float | None, evaluation: str, evaluate_s: float | None) -> str:
    """The unit of a total: GPU-hours only where each part that costs anything is in GPU-hours."""
    parts = [text for text, s in ((train, train_s), (evaluation, evaluate_s)) if s]
    return "GPU-h" if parts and all(" GPU-h " in text for text in parts) else "h"


def plugin_installed(plugin: str) -> bool:
    """Whether the Hydra plugin `hydra_plugins.<plugin>` is installed (hydra-core alone ships no such package)."""
    try:
        return importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None
    except ModuleNotFoundError:
        return False


def parallel_jobs(launcher: list[str]) -> int:
    """How many jobs the launcher these overrides select runs at once on this machine, where its config says
    so (a Ray launcher started with `ray.init.num_cpus`, each job asking `ray.remote.num_cpus`:
    hydra/launcher=ray_cpu, `make tables JOBS=n`), at most one per core; else 1 (the basic launcher, or a
    launcher whose concurrency is a cluster's or found when it starts)."""
    if not launcher:
        return 1
    try:
        hydra_cfg = compose_config("train", launcher, hydra=True).hydra
    except ConfigError as e:
        hint = ("" if plugin_installed("hydra_ray_launcher") else
                " (the Ray launchers, hydra/launcher=ray_cpu and gpus, need: pip install -e \".[gpu-cluster]\")")
        raise ConfigError(f"launcher overrides {launcher}: {str(e).split(': ', 1)[-1]}{hint}") from None
    cpus, per_job = (OmegaConf.select(hydra_cfg, f"launcher.ray.{k}.num_cpus") for k in ("init", "remote"))
    if not isinstance(cpus, int) or not isinstance(per_job, (int, float)) or per_job <= 0:
        return 1
    if cpus < per_job:
        raise ConfigError(f"hydra.launcher.ray.init.num_cpus={cpus} leaves no room for one job of "
                          f"ray.remote.num_cpus={per_job}; give at least {per_job} (make ... JOBS=n: n >= 1).")
    return max(1, min(int(cpus // per_job), os.cpu_count() or 1))


def total_text(train_s: float | None, evaluate_s: float | None, train_jobs: int = 1, evaluate_jobs: int = 1,
               unit: str = "h") -> str:
    """'; in all about X h' when both parts of an estimate were measured, else nothing: `train_s` and
    `evaluate_s` are the parts' wall times with `train_jobs` and `evaluate_jobs` jobs at a time, said
    when more than one."""
    if train_s is None or evaluate_s is None or train_s + evaluate_s == 0:
        return ""
    spread = [f"{n} {what} jobs at a time" for n, what, s in ((train_jobs, "training", train_s),
                                                             (evaluate_jobs, "evaluation", evaluate_s)) if n > 1 and s]
    return (f"; in all about {(train_s + evaluate_s) / 3600:.2f} {unit}"
            + (f" with {' and '.join(spread)} (each multirun's jobs start as slots free and it ends with its last)"
               if spread else ""))


def tables_in(sweeps_dir: str | Path) -> list[str]:
    return sorted(p.stem for p in Path(sweeps_dir).glob("*.yaml"))


def run(table: str, scale: str, overrides: list[str], autoattack: str = "run", estimate: bool = False,
        sweeps_dir: str | Path = PROJECT_ROOT / "sweeps", launcher: list[str] | None = None,
        evaluate_in: str = "process") -> list[dict]:
    """Fill `table` (or every table in sweeps_dir for `all`); returns the reports' paths per table.
    `evaluate_in=jobs` computes the missing records as Hydra jobs first (`evaluation_jobs`)."""
    if evaluate_in not in EVALUATE_IN:
        raise ConfigError(f"evaluate_in={evaluate_in} is unknown; use one of {list(EVALUATE_IN)}.")
    names = tables_in(sweeps_dir) if table == "all" else [table]
    runs = [TableRun(name, scale, overrides, autoattack, sweeps_dir, launcher) for name in names]
    parallel = parallel_jobs(runs[0].launcher)  # also checks the launcher composes before anything runs
    if estimate:  # the jobs' sums of seconds, and their wall time with the jobs run at once
        spread = {"train_jobs": parallel, "evaluate_jobs": parallel if evaluate_in == "jobs" else 1}
        missing = [t.missing(planning=True) for t in runs]
        plans = [t.evaluation_plan() for t in runs]  # each computed once: the union below reuses them
        for t, m, plan in zip(runs, missing, plans):
            print(f"{t.table} ({scale}): {t.estimate(**spread, missing=m, plan=plan)}")
        if len(runs) > 1:  # tables share models and records: the union is what `all` trains and evaluates
            plan = [p for table_plan in plans for p in table_plan]
            jobs = sorted(set().union(*(set(j) for j, _ in missing)))
            comps = sorted(set().union(*(set(c) for _, c in missing)))
            train, t_s = runs[0].estimate_training(jobs, comps, what="distinct training jobs",
                                                   slots=spread["train_jobs"])
            evaluation, e_s = runs[0].estimate_evaluation(plan, slots=spread["evaluate_jobs"])
            print(f"all ({scale}): {train}; {evaluation}"
                  f"{total_text(t_s, e_s, **spread, unit=total_unit(train, t_s, evaluation, e_s))}")
        return []
    start = time.perf_counter()
    if len(runs) > 1:
        trained = train_union(runs)
        print(f"all tables: trained this run: {len(trained)} ({', '.join(trained) or 'nothing'}); "
              f"wall {time.perf_counter() - start:.0f} s", flush=True)
    if evaluate_in == "jobs":
        for t in runs:
            t.train_missing()
        jobs_start = time.perf_counter()
        n = evaluation_jobs(runs, before_test=lambda: [t.train_missing() for t in runs])
        print(f"evaluation jobs: {n} launched; wall {time.perf_counter() - jobs_start:.0f} s", flush=True)
    written = []
    for t in runs:
        t_start = time.perf_counter()
        t.train_missing()
        paths = write_reports(t, t.fill(), time.perf_counter() - t_start)
        print(paths["md"].read_text())
        print(f"{t.table}: trained this run: {len(t.trained)} ({', '.join(t.trained) or 'nothing'}); "
              f"wall {time.perf_counter() - t_start:.0f} s; reports: {', '.join(str(p) for p in paths.values())}",
              flush=True)
        written.append(paths)
    print(f"done: {', '.join(names)} in {time.perf_counter() - start:.0f} s", flush=True)
    return written
