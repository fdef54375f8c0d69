"""Robustness records of one evaluated model (a single model, a K-ensemble, composites), attacked
as one model: its accuracy-vs-eps curve and its AutoAttack column, each a store record.

* `evaluate(cfg)`: the curve of the model `cfg` selects (`members.build`), computed or reused from
  the store, with its AutoAttack record when `evaluation.autoattack.eps` is set.
* `curve_record`: record kind `curve`: every radius of `evaluation.eps_grid`; per point the smallest
  radius that flipped it (`per_point.min_flip`, null = never) and, with per_eps, its outcome at each
  radius (`per_point.correct_at`, one "0/1" string per point).
* `autoattack_record`: record kind `autoattack`: AutoAttack (`checks.autoattack`: standard, or a subset
  of its attacks) on the first n points at one eps, with each point's outcome (`outcomes` combines it
  with the curve's outcomes on the same points).
* `point_attack_records`: every `autoattack` record of the same model and points, whatever its radius
  and settings: the column's and any attack run later, all folded into the per-point worst case.

Each kind has a semantics version (`robust_ensembles.store.record_kinds`): bump it when a change alters what
a stored record means, and every older record is reported stale and recomputed.
"""

from __future__ import annotations

import logging
import math
import statistics
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_ensembles import store
from robust_ensembles.core import job_setup, tracking
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import checks
from robust_ensembles.evaluation.curves import Curve, EnsembleEvaluation, check_search, plot_curves, standard_error
from robust_ensembles.models import members
from robust_ensembles.models.ensembles import Ensemble
from robust_ensembles.store.identity import check, members_query
from robust_ensembles.store.record_kinds import AUTOATTACK, CURVE, VERSIONS

log = logging.getLogger(__name__)



def evaluate(cfg: DictConfig) -> dict:
    """The curve record of the configured model, with its AutoAttack record under "autoattack"
    when `evaluation.autoattack.eps` is set (None when it is pending)."""
    check(cfg)
    attack = instantiate(cfg.evaluation.attack)
    check_search(cfg.evaluation.search, cfg.evaluation.per_eps, cfg.evaluation.warm_start, attack,
                 cfg.evaluation.guess_scale)
    model, runs, label = members.build(cfg)
    result = curve_record(cfg, model, runs, label, attack)
    if cfg.evaluation.autoattack.eps is not None:
        result["autoattack"] = autoattack_record(cfg, model, runs, label)
    result["attacks"] = point_attack_records(cfg, model, runs)
    return result


def point_attack_records(cfg: DictConfig, model: Ensemble, runs: list[store.Run]) -> list[dict]:
    """Every per-point attack record the store holds for this model (members, weights, combination) on
    these test points, at any radius and with any settings: the AutoAttack column's, and any attack run
    later (e.g. `python -m robust_ensembles.evaluate ... evaluation.autoattack.eps=0.5
    checks.autoattack.version=standard`). The tables combine them per point with the curve
    (`outcomes.worst_case`)."""
    same = store.canonical_json({"members": [r.key for r in runs], "weights": model.weights.tolist(),
                                 "combine": cfg.ensemble.combine, "test": test_points(cfg)})
    return [r for r in store.records(cfg.store.root, AUTOATTACK, VERSIONS[AUTOATTACK])
            if all(r.get("spec", {}).get(k) == v for k, v in same.items())]


def stored(cfg: DictConfig) -> dict:
    """What `evaluate` would reuse for the configured model: its stored curve and AutoAttack records
    (None where missing; both None when its members are not all trained), its number of members, and
    a key per record (the record's own key when the members exist, else one from the config) so that
    rows of different tables that need the same record count once."""
    check(cfg)
    want_aa = cfg.evaluation.autoattack.eps is not None
    try:
        model, runs, _ = members.build(cfg)
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
    spec = curve_spec(cfg, model, runs)
    aa_spec = autoattack_spec(cfg, model, runs, instantiate(cfg.checks.autoattack)) if want_aa else None
    return {"curve": _stored(cfg, CURVE, spec), "autoattack": _stored(cfg, AUTOATTACK, aa_spec) if want_aa else None,
            "attacks": point_attack_records(cfg, model, runs), "K": len(runs), "curve_key": store.key_of(spec), "autoattack_key": store.key_of(aa_spec) if want_aa else None}


def this_device() -> str:
    """The kind of device an evaluation here runs on (a GPU's name, or cpu): what records' `device` names."""
    return device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def seconds_per_member_point(cfg: DictConfig, kind: str, device: str | None = None) -> float | None:
    """Median wall seconds per (member x point) of the stored records of `kind` computed like this one
    would be (same experiment; a curve with the same attack, grid, search, per_eps, precision and memory format
    and without check=true; AutoAttack of the same version) on the same kind of device (`device`, default
    this machine's: a GPU's records do not cost a CPU's evaluation), on a CPU with the same torch threads
    per job (`job_setup.measured_with`), or None when there is none."""
    device = this_device() if device is None else device
    threads = job_setup.threads_of(cfg)
    ev = store.canonical_json(OmegaConf.to_container(cfg.evaluation, resolve=True))  # targets by stable name, as in specs
    same_curve = lambda spec: (not spec.get("check") and all(spec["evaluation"].get(k) == ev[k] for k in
                                                              ("attack", "eps_grid", "per_eps", "precision"))
                               # memory format changes the time, not the numbers (records before the option: NCHW)
                               and spec["evaluation"].get("channels_last", False) == ev.get("channels_last", False)
                               and spec["evaluation"].get("search", "scan") == ev.get("search", "scan")
                               and spec["evaluation"].get("warm_start", False) == ev.get("warm_start", False)
                               and (ev.get("search", "scan") != "guided"
                                    or spec["evaluation"].get("guess_scale") == ev.get("guess_scale")))
    same_aa = lambda spec: spec["autoattack"]["version"] == cfg.checks.autoattack.version
    same = same_curve if kind == CURVE else same_aa
    rates = [r["wall_s"] / (r["K"] * r["n"]) for r in store.records(cfg.store.root, kind, VERSIONS[kind])
             if r.get("K") and r.get("n") and r.get("wall_s") and same(r["spec"]) and r.get("device") == device
             and job_setup.measured_with(threads, r)
             and r.get("experiment", r.get("config", {}).get("name")) == cfg.name]
    return statistics.median(rates) if rates else None


def test_points(cfg: DictConfig) -> dict:
    """Which points an evaluation attacks (split and subset): part of every record's spec."""
    return {"split": cfg.evaluation.split, **{k: cfg.data[k] for k in ("source", "test_subset", "split_seed", "val_size")}}


def evaluation_spec(cfg: DictConfig) -> dict:
    """The evaluation settings that determine a curve (part of its record's spec): all of `evaluation` but
    the AutoAttack column's (its own record) and `force`; `search` only where it is not the grid scan that
    every record made before the option used, and `warm_start` only where it is on, so those records keep
    their keys."""
    ev = {k: v for k, v in OmegaConf.to_container(cfg.evaluation, resolve=True).items() if k not in ("autoattack", "force")}
    if ev.get("search", "scan") == "scan":
        ev.pop("search", None)
    if not ev.get("warm_start", False):
        ev.pop("warm_start", None)
    if ev.get("search") != "guided":
        ev.pop("guess_scale", None)  # only the guided search reads it
    return ev


def curve_spec(cfg: DictConfig, model: Ensemble, runs: list[store.Run]) -> dict:
    return {"members": [r.key for r in runs], "weights": model.weights.tolist(),
            "ensemble": OmegaConf.to_container(cfg.ensemble, resolve=True),
            "evaluation": evaluation_spec(cfg),
            "check": cfg.check, "checks": OmegaConf.to_container(cfg.checks, resolve=True) if cfg.check else None,
            "seed": cfg.seed, "test": test_points(cfg)}


def _stored(cfg: DictConfig, kind: str, spec: dict) -> dict | None:
    return None if cfg.evaluation.force else store.get_record(cfg.store.root, kind, spec, VERSIONS[kind])


def curve_record(cfg: DictConfig, model: Ensemble, runs: list[store.Run], label: str, attack) -> dict:
    """The curve record of `model` (computed, or reused from the store)."""
    spec = curve_spec(cfg, model, runs)
    path = store.record_path(cfg.store.root, CURVE, spec)
    stored = _stored(cfg, CURVE, spec)
    if stored is not None:
        log.info("[store] skip evaluation %s: %s", label, path)
        return stored
    with open_dict(cfg):
        cfg.paths.run_dir = str(path.with_suffix(""))
    trainer, logger = job_setup.setup(cfg, [], enable_checkpointing=False, precision=cfg.evaluation.precision)
    datamodule = instantiate(cfg.data, eval_batch_size=cfg.evaluation.batch_size, test_split=cfg.evaluation.split)
    module = EnsembleEvaluation(in_memory_format(model, cfg), attack, cfg.evaluation.eps_grid, cfg.evaluation.per_eps,
                                cfg.evaluation.search, cfg.evaluation.warm_start, cfg.evaluation.guess_scale)
    with job_setup.tracked():
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        device = trainer.strategy.root_device  # teardown has moved the module back to the CPU; this is where it ran
        curve: Curve = module.curve
        payload = {
            "label": label, "alpha": cfg.alpha, "K": len(runs), "weights": model.weights.tolist(),
            "members": [{"key": r.key, "seed": r.identity["seed"], "backbones": r.identity.get("backbones")} for r in runs],
            "attack": repr(attack), "curve": curve.to_dict(), "n": curve.n,
            "auc": {} if cfg.evaluation.auc_eps is None else {f"{cfg.evaluation.auc_eps:g}": curve.auc(cfg.evaluation.auc_eps)},
            "per_point": per_point(module),
            "config": OmegaConf.to_container(cfg, resolve=True), "git_commit": store.git_commit(),
            "device": device_name(device), "threads": torch.get_num_threads(), "precision": cfg.evaluation.precision,
        }
        if cfg.check:
            x, y = first_points(datamodule, cfg.evaluation.split, min(cfg.checks.n, curve.n), device)
            found = checks.run_checks(model.to(device).eval(), curve, attack, instantiate(cfg.checks.autoattack),
                                      instantiate(cfg.checks.square), x, y, cfg.checks.eps, cfg.checks.large_eps,
                                      cfg.checks.large_eps_max_acc, cfg.checks.max_gap, cfg.evaluation.batch_size)
            payload["checks"] = checks.as_dicts(found)
            payload["checks_passed"] = checks.passed(found)
        payload["wall_s"] = time.perf_counter() - start
        record = store.put_record(cfg.store.root, CURVE, spec, VERSIONS[CURVE], payload)
        png = path.with_suffix(".png")
        plot_curves({label: curve}, png, f"{label} ({cfg.name}, n={curve.n}, {attack!r})")
        summary = {f"eval/acc@{e:g}": a for e, a in zip(curve.eps, curve.cumulative)}
        summary.update({f"eval/auc@{k}": v for k, v in record["auc"].items()})
        tracking.log_evaluation(logger, label, curve, summary, png)
    log.info("[store] evaluated %s -> %s", label, path)
    print(format_curve(record), flush=True)
    return record


def in_memory_format(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The evaluated model in `evaluation.channels_last`'s memory format (attacks hand over NCHW inputs;
    convolutions then run channels_last, the faster path on CPU: docs/evaluation.md)."""
    return model.to(memory_format=torch.channels_last if cfg.evaluation.channels_last else torch.contiguous_format)


def per_point(module: EnsembleEvaluation) -> dict:
    out = {"min_flip": [None if math.isinf(v) else v for v in module.min_flip.tolist()]}
    if module.correct_at is not None:
        out["correct_at"] = ["".join("1" if c else "0" for c in row) for row in module.correct_at.tolist()]
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def first_points(datamodule, split: str, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a split (the same points the curve starts with), as floats in [0, 1]."""
    datamodule.setup("test")
    x, y = datamodule.splits[split][list(range(min(n, len(datamodule.splits[split]))))]
    return x.to(device).float() / 255, y.to(device)


def autoattack_spec(cfg: DictConfig, model: Ensemble | None, runs: list[store.Run], autoattack) -> dict:
    """What an AutoAttack record depends on: the model, the points, the radius and AutoAttack's settings
    (not the evaluation attack: its outcome on these points comes from the curve, so changing it keeps
    every AutoAttack record)."""
    aa_cfg = cfg.evaluation.autoattack
    return {"members": [r.key for r in runs], "weights": model.weights.tolist() if model is not None else None,
            "combine": cfg.ensemble.combine,
            "eps": float(aa_cfg.eps), "n": int(aa_cfg.n), "test": test_points(cfg),
            "autoattack": {"norm": autoattack.norm, "version": autoattack.version, "attacks": autoattack.attacks,
                           "seed": autoattack.seed, "square_queries": autoattack.square_queries,
                           "apgd_iterations": autoattack.apgd_iterations}}


def autoattack_record(cfg: DictConfig, model: Ensemble, runs: list[store.Run], label: str) -> dict | None:
    """AutoAttack on the first n points at one eps, each point's outcome kept: one store record per
    (model, points, eps, AutoAttack settings), so tables that share a row attack it once. With
    `evaluation.autoattack.compute=false` only a stored record is used (None when there is none):
    the column can be computed elsewhere, e.g. on a GPU node sharing the store."""
    aa_cfg = cfg.evaluation.autoattack
    autoattack = instantiate(cfg.checks.autoattack)
    spec = autoattack_spec(cfg, model, runs, autoattack)
    path = store.record_path(cfg.store.root, AUTOATTACK, spec)
    stored = _stored(cfg, AUTOATTACK, spec)
    if stored is not None:
        log.info("[store] skip AutoAttack %s at eps=%g: %s", label, aa_cfg.eps, path)
        return stored
    if not aa_cfg.compute:
        log.info("[store] AutoAttack %s at eps=%g not in the store (%s); evaluation.autoattack.compute=false, "
                 "so it stays pending", label, aa_cfg.eps, path)
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    job_setup.seed(cfg)
    datamodule = instantiate(cfg.data, eval_batch_size=cfg.evaluation.batch_size, test_split=cfg.evaluation.split,
                             device_resident=False)
    x, y = first_points(datamodule, cfg.evaluation.split, aa_cfg.n, device)
    if len(y) < aa_cfg.n:
        raise ConfigError(f"evaluation.autoattack.n={aa_cfg.n} but the {cfg.evaluation.split} split has only "
                          f"{len(y)} points; lower evaluation.autoattack.n or raise data.test_subset.")
    log.info("AutoAttack (%s) on %s: %d points at eps=%g on %s", autoattack.version, label, len(y), aa_cfg.eps, device)
    start = time.perf_counter()
    model = in_memory_format(model.to(device), cfg).eval()
    robust = checks.correct(model, autoattack(model, x, y, eps=float(aa_cfg.eps)), y, cfg.evaluation.batch_size)
    acc = robust.float().mean().item()
    payload = {"eps": float(aa_cfg.eps), "n": len(y), "K": len(runs), "experiment": cfg.name,
               "autoattack": autoattack.version, "autoattack_acc": acc,
               "autoattack_se": standard_error(acc, len(y)), "autoattack_correct": robust.int().tolist(),
               "label": label, "wall_s": time.perf_counter() - start, "git_commit": store.git_commit(),
               "device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    record = store.put_record(cfg.store.root, AUTOATTACK, spec, VERSIONS[AUTOATTACK], payload)
    log.info("[store] AutoAttack %s: %.2f%% in %.0f s -> %s", label, 100 * acc, record["wall_s"], path)
    return record


def format_curve(record: dict) -> str:
    c = record["curve"]
    rows = [f"{record['label']}  n={c['n']}" + "".join(f"  AUC({k})={v:.4f}" for k, v in record["auc"].items())]
    rows += [f"  eps={e:<5g} acc={100 * a:6.2f}% +- {100 * s:.2f}" + (f"  (per-eps {100 * p:6.2f}%)" if c["per_eps"] else "")
             for e, a, s, p in zip(c["eps"], c["cumulative"], c["stderr"], c["per_eps"] or c["cumulative"])]
    return "\n".join(rows)
