"""What a table lacks and what computing it costs (`make tables ESTIMATE=1`): the training jobs and
evaluation records missing, costed from what the store's own jobs and records measured on this kind of
device (else the preset's reference costs, said so), and the wall time with the jobs run at once.

The evaluation plan is the table module's own `fill`, run with the `Planner` as its evaluator: every row
it would read, stored or missing, and nothing evaluated.
"""

from __future__ import annotations

import contextlib
import heapq
import statistics
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import store
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.job_setup import measured_with, threads_of
from robust_ensembles.evaluation.curves import Curve, check_grid
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import request
from robust_ensembles.evaluation.records import (AUTOATTACK, CURVE, VERSIONS, autoattack_settings, autoattack_spec,
                                                 point_attack_records, stored_record, this_device)
from robust_ensembles.evaluation.request import SEARCH_KEYS, evaluation_spec, test_points
from robust_ensembles.models import members
from robust_ensembles.store.identity import check, members_query, training_identity
from robust_ensembles.tables.launch import multirun_groups

if TYPE_CHECKING:
    from robust_ensembles.tables.table_run import TableRun

SPLITS = ("val", "test")  # the order evaluation jobs run in: a choice on validation, then the test rows it picks


GPU = "gpu"  # reference_costs' device for figures measured on (or scaled to) one GPU per job


class Planner:
    """The evaluator of an estimate: each row's stored records, or stand-ins where the store has none,
    and in `plan` what every row needs and which records are missing. Stand-ins never reach the store
    or a report: an estimate writes neither."""
    planning = True

    def __init__(self):
        self.plan: list[dict] = []

    def __call__(self, cfg: DictConfig, overrides: list[str]) -> dict:
        """The row's stored records, or stand-ins (every point robust), noting what is missing in `plan`
        (with the overrides that compose the row's config, for an evaluation job)."""
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
            settings = autoattack_settings(instantiate(cfg.checks.autoattack))
            aa = {"eps": float(cfg.evaluation.autoattack.eps), "n": aa_n, "K": k, "autoattack_correct": [1] * aa_n,
                  "autoattack": cfg.checks.autoattack.version, "autoattack_acc": 1.0, "device": "planned", "wall_s": 0.0,
                  "spec": {"autoattack": settings}}
        return {**curve, "autoattack": aa}


def stored(cfg: DictConfig) -> dict:
    """What an evaluation of the row config `cfg` would reuse for the configured model: its stored curve and AutoAttack records
    (None where missing; both None when its members are not all trained), its number of members, and
    a key per record (the record's own key when the members exist, else one from the config) so that
    rows of different tables that need the same record count once."""
    check(cfg)
    want_aa = cfg.evaluation.autoattack.eps is not None
    try:
        built = members.build(cfg)
    except ConfigError:  # members not trained yet: nothing of it can be stored
        k = members.count(cfg)
        planned = {"members": members_query(cfg) if cfg.members.kind == "seeds" else
                   OmegaConf.to_container(cfg.members, resolve=True), "K": k,
                   "seeds": None if cfg.seeds is None else [int(s) for s in cfg.seeds],
                   "composite": OmegaConf.to_container(cfg.composite, resolve=True)
                   if cfg.members.kind != "seeds" else None, "test": test_points(cfg)}
        evaluation = evaluation_spec(cfg)
        aa = OmegaConf.to_container(cfg.evaluation.autoattack, resolve=True)
        return {"curve": None, "autoattack": None, "K": k,
                "curve_key": store.key_of({**planned, "evaluation": evaluation}),
                "autoattack_key": store.key_of({**planned, "eps": aa["eps"], "n": aa["n"]}) if want_aa else None}
    req = request.from_config(cfg, built)
    aa_spec = autoattack_spec(req) if want_aa else None
    return {"curve": stored_record(req, CURVE, req.curve_spec),
            "autoattack": stored_record(req, AUTOATTACK, aa_spec) if want_aa else None,
            "attacks": point_attack_records(req), "K": len(req.subject.runs), "curve_key": store.key_of(req.curve_spec),
            "autoattack_key": store.key_of(aa_spec) if want_aa else None}


def seconds_per_member_point(cfg: DictConfig, kind: str, device: str | None = None) -> float | None:
    """Median wall seconds per (member x point) of the stored records of `kind` computed like this one
    would be (same experiment; a curve with the same attack, grid, search, per_eps, precision and memory format
    and without check=true; AutoAttack of the same version) on the same kind of device (`device`, default
    this machine's: a GPU's records do not cost a CPU's evaluation), on a CPU with the same torch threads
    per job (`job_setup.measured_with`), or None when there is none."""
    device = this_device() if device is None else device
    threads = threads_of(cfg)
    ev = store.canonical_json(evaluation_spec(cfg))  # as a record's spec states it: targets by stable name
    same_curve = lambda spec: (not spec.get("check") and all(spec["evaluation"].get(k) == ev.get(k) for k in
                                                              ("attack", "eps_grid", "per_eps", "precision", *SEARCH_KEYS))
                               # memory format changes the time, not the numbers (records before the option: NCHW)
                               and spec["evaluation"].get("channels_last", False) == ev.get("channels_last", False))
    same_aa = lambda spec: (spec["autoattack"]["version"] == cfg.checks.autoattack.version
                            and spec["autoattack"].get("apgd_restarts") == cfg.checks.autoattack.apgd_restarts)
    same = same_curve if kind == CURVE else same_aa
    rates = [r["wall_s"] / (r["K"] * r["n"]) for r in store.records(cfg.store.root, kind, VERSIONS[kind])
             if r.get("K") and r.get("n") and r.get("wall_s") and same(r["spec"]) and r.get("device") == device
             and measured_with(threads, r)
             and r.get("experiment", r.get("config", {}).get("name")) == cfg.name]
    return statistics.median(rates) if rates else None


@contextlib.contextmanager
def planner_for(t: TableRun):
    """Within: t's rows are planned, not evaluated (`Planner`); yields the planner."""
    saved, t.evaluator = t.evaluator, Planner()
    try:
        yield t.evaluator
    finally:
        t.evaluator = saved


def evaluation_plan(t: TableRun) -> list[dict]:
    """The records this table's rows need and which are missing: the table module's own fill, run with
    the planner, so nothing is evaluated."""
    with planner_for(t) as planner:
        t.module.fill(t)
        return planner.plan


def estimate_table(t: TableRun, train_jobs: int = 1, evaluate_jobs: int = 1, missing: tuple | None = None,
                   plan: list[dict] | None = None) -> str:
    """Missing training jobs and evaluation records, and their cost from what stored jobs and records
    of the same setup measured on this store's machines (`fit_seconds`, record wall times), with
    `train_jobs` training and `evaluate_jobs` evaluation jobs run at a time. `missing` and `plan`:
    this table's `missing()` and `evaluation_plan()` where the caller has them already."""
    jobs, comps = t.missing(with_later=True) if missing is None else missing
    train, t_s = estimate_training(t, jobs, comps, slots=train_jobs)
    evaluation, e_s = estimate_evaluation(t, plan, slots=evaluate_jobs)
    return f"{train}; {evaluation}{total_text(t_s, e_s, train_jobs, evaluate_jobs, total_unit(train, t_s, evaluation, e_s))}"


def estimate_training(t: TableRun, jobs: list[tuple[float, int]], comps: list[str], what: str = "training jobs",
                      slots: int = 1) -> tuple[str, float | None]:
    """(text, seconds) of these training jobs and composites at the median fit time of each kind stored
    for this setup (natural, adversarial, composite): the text gives their sum, the seconds the wall
    time of their multiruns (`multirun_groups`, then the composites) with `slots` jobs at a time
    (`makespan`); seconds None when a kind has no measurement. `what` names the jobs in the text (the
    union of several tables: "distinct training jobs")."""
    cfg = compose_config("train", t.base)
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


def estimate_evaluation(t: TableRun, plan: list[dict] | None = None, slots: int = 1) -> tuple[str, float | None]:
    """(text, seconds) of the missing curve and AutoAttack records of the plan, costed at the wall time
    per member and point of stored records computed the same way (`record_seconds`): the text gives
    the sum over the evaluation jobs that compute them (`evaluation_job_list`: one per missing curve,
    with its AutoAttack record, whichever rows and tables share it), the seconds the wall time of their
    multiruns (validation, then test) with `slots` jobs at a time (`makespan`)."""
    plan = evaluation_plan(t) if plan is None else plan
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
    from_store = any(cost and not source for p in plan for cost, source in p["costs"].values())  # (0: clean only)
    if from_store:
        text += (f"; about {seconds / 3600:.2f} {unit} at the wall time per member and point of stored records "
                 f"computed the same way on this kind of device ({this_device()})"
                 + (f"; where none is stored yet: {', '.join(referenced)}" if referenced else ""))
    else:  # nothing stored to cost from: the preset's reference figures alone
        text += f"; about {seconds / 3600:.2f} {unit} at the preset's reference cost per member and point: {', '.join(referenced)}"
    # what no job carries (a second AutoAttack record of one curve) is computed afterwards, one at a time
    return text, sum(makespan([job["seconds"] for job in jobs], slots) for jobs in multiruns) + \
        max(0.0, seconds - in_jobs)


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


def makespan(seconds: list[float], slots: int = 1) -> float:
    """Wall time of one multirun whose jobs (these durations, in launch order) each start on the first of
    `slots` free workers (Hydra's Ray launcher queues them all; the multirun ends with its last job)."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


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
