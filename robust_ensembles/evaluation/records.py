"""Robustness records of one evaluated model (a single model, a K-ensemble, composites), attacked
as one model: its accuracy-vs-eps curve and its AutoAttack column, each a store record.

Every function takes a `Request` (`robust_ensembles.evaluation.request`: the evaluated model, the attack,
the grid, the points, built from the config once at the door), never the config.

* `evaluate(req)`: the curve of the requested model, computed or reused from the store, with its
  AutoAttack record when the request has an AutoAttack column.
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
import time

import torch

from robust_ensembles import store
from robust_ensembles.core import job_setup, tracking
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import checks
from robust_ensembles.evaluation.curves import Curve, EnsembleEvaluation, plot_curves, standard_error
from robust_ensembles.evaluation.request import Request
from robust_ensembles.store.record_kinds import AUTOATTACK, CURVE, VERSIONS

log = logging.getLogger(__name__)


def evaluate(req: Request) -> dict:
    """The curve record of the requested model, with its AutoAttack record under "autoattack" when the
    request has an AutoAttack column (None when it is pending)."""
    result = curve_record(req)
    if req.autoattack is not None:
        result["autoattack"] = autoattack_record(req)
    result["attacks"] = point_attack_records(req)
    return result


def point_attack_records(req: Request) -> list[dict]:
    """Every per-point attack record the store holds for this model (members, weights, combination) on
    these test points, at any radius and with any settings: the AutoAttack column's, and any attack run
    later (e.g. `python -m robust_ensembles.evaluate ... evaluation.autoattack.eps=0.5
    checks.autoattack.version=standard`). The tables combine them per point with the curve
    (`outcomes.worst_case`)."""
    same = store.canonical_json({"members": req.subject.keys, "weights": req.subject.weights,
                                 "combine": req.subject.combine, "test": req.points})
    return [r for r in store.records(req.store_root, AUTOATTACK, VERSIONS[AUTOATTACK])
            if all(r.get("spec", {}).get(k) == v for k, v in same.items())]


def this_device() -> str:
    """The kind of device an evaluation here runs on (a GPU's name, or cpu): what records' `device` names."""
    return device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def stored_record(req: Request, kind: str, spec: dict) -> dict | None:
    """The stored record of `kind` with this spec (None when missing, or when the request forces a recompute)."""
    return None if req.force else store.get_record(req.store_root, kind, spec, VERSIONS[kind])


def curve_record(req: Request) -> dict:
    """The curve record of the requested model (computed, or reused from the store)."""
    spec, label, model, attack, cs = req.curve_spec, req.label, req.subject.model, req.attack, req.curve
    runs = req.subject.runs
    path = store.record_path(req.store_root, CURVE, spec)
    stored = stored_record(req, CURVE, spec)
    if stored is not None:
        log.info("[store] skip evaluation %s: %s", label, path)
        return stored
    trainer, logger = req.trainer()
    datamodule = req.data(eval_batch_size=cs.batch_size, test_split=cs.split)
    module = EnsembleEvaluation(in_memory_format(model, cs.channels_last), attack, cs.eps_grid, cs.per_eps,
                                cs.search, cs.warm_start, cs.guess_scale, cs.first_order_step)
    with job_setup.tracked():
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        device = trainer.strategy.root_device  # teardown has moved the module back to the CPU; this is where it ran
        curve: Curve = module.curve
        payload = {
            "label": label, "alpha": req.subject.alpha, "K": len(runs), "weights": req.subject.weights,
            "members": [{"key": r.key, "seed": r.identity["seed"], "backbones": r.identity.get("backbones")} for r in runs],
            "attack": repr(attack), "curve": curve.to_dict(), "n": curve.n,
            "auc": {} if cs.auc_eps is None else {f"{cs.auc_eps:g}": curve.auc(cs.auc_eps)},
            "per_point": per_point(module),
            "config": req.provenance(), "git_commit": store.git_commit(),
            "device": device_name(device), "threads": torch.get_num_threads(), "precision": cs.precision,
        }
        if req.checks is not None:
            c = req.checks
            x, y = first_points(datamodule, cs.split, min(c.n, curve.n), device)
            found = checks.run_checks(model.to(device).eval(), curve, attack, req.autoattack_attack, c.square, x, y,
                                      c.eps, c.large_eps, c.large_eps_max_acc, c.max_gap, cs.batch_size)
            payload["checks"] = checks.as_dicts(found)
            payload["checks_passed"] = checks.passed(found)
        payload["wall_s"] = time.perf_counter() - start
        record = store.put_record(req.store_root, CURVE, spec, VERSIONS[CURVE], payload)
        png = path.with_suffix(".png")
        plot_curves({label: curve}, png, f"{label} ({req.experiment}, n={curve.n}, {attack!r})")
        summary = {f"eval/acc@{e:g}": a for e, a in zip(curve.eps, curve.cumulative)}
        summary.update({f"eval/auc@{k}": v for k, v in record["auc"].items()})
        tracking.log_evaluation(logger, label, curve, summary, png)
    log.info("[store] evaluated %s -> %s", label, path)
    print(format_curve(record), flush=True)
    return record


def in_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The evaluated model in `evaluation.channels_last`'s memory format (attacks hand over NCHW inputs;
    convolutions then run channels_last, the faster path on CPU: docs/evaluation.md)."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


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


def autoattack_spec(req: Request) -> dict:
    """What an AutoAttack record depends on: the model, the points, the radius and AutoAttack's settings
    (not the evaluation attack: its outcome on these points comes from the curve, so changing it keeps
    every AutoAttack record)."""
    column, autoattack = req.autoattack, req.autoattack_attack
    return {"members": req.subject.keys, "weights": req.subject.weights, "combine": req.subject.combine,
            "eps": column.eps, "n": column.n, "test": req.points, "autoattack": autoattack_settings(autoattack)}


def autoattack_settings(autoattack) -> dict:
    """AutoAttack's settings as an AutoAttack record keys them (`outcomes.procedure` pairs records by them);
    `apgd_restarts` only where it is set, so records made before the option keep their keys."""
    restarts = autoattack.apgd_restarts
    return {"norm": autoattack.norm, "version": autoattack.version, "attacks": autoattack.attacks,
            "seed": autoattack.seed, "square_queries": autoattack.square_queries,
            "apgd_iterations": autoattack.apgd_iterations, **({"apgd_restarts": restarts} if restarts is not None else {})}


def autoattack_record(req: Request) -> dict | None:
    """AutoAttack on the first n points at one eps, each point's outcome kept: one store record per
    (model, points, eps, AutoAttack settings), so tables that share a row attack it once. With
    `evaluation.autoattack.compute=false` only a stored record is used (None when there is none):
    the column can be computed elsewhere, e.g. on a GPU node sharing the store."""
    column, autoattack, label, cs = req.autoattack, req.autoattack_attack, req.label, req.curve
    spec = autoattack_spec(req)
    path = store.record_path(req.store_root, AUTOATTACK, spec)
    stored = stored_record(req, AUTOATTACK, spec)
    if stored is not None:
        log.info("[store] skip AutoAttack %s at eps=%g: %s", label, column.eps, path)
        return stored
    if not column.compute:
        log.info("[store] AutoAttack %s at eps=%g not in the store (%s); evaluation.autoattack.compute=false, "
                 "so it stays pending", label, column.eps, path)
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    req.seed_job()
    datamodule = req.data(eval_batch_size=cs.batch_size, test_split=cs.split, device_resident=False)
    x, y = first_points(datamodule, cs.split, column.n, device)
    if len(y) < column.n:
        raise ConfigError(f"evaluation.autoattack.n={column.n} but the {cs.split} split has only "
                          f"{len(y)} points; lower evaluation.autoattack.n or raise data.test_subset.")
    log.info("AutoAttack (%s) on %s: %d points at eps=%g on %s", autoattack.version, label, len(y), column.eps, device)
    start = time.perf_counter()
    model = in_memory_format(req.subject.model.to(device), cs.channels_last).eval()
    robust = checks.correct(model, autoattack(model, x, y, eps=column.eps), y, cs.batch_size)
    acc = robust.float().mean().item()
    payload = {"eps": column.eps, "n": len(y), "K": len(req.subject.runs), "experiment": req.experiment,
               "autoattack": autoattack.version, "autoattack_acc": acc,
               "autoattack_se": standard_error(acc, len(y)), "autoattack_correct": robust.int().tolist(),
               "label": label, "wall_s": time.perf_counter() - start, "git_commit": store.git_commit(),
               "device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    record = store.put_record(req.store_root, AUTOATTACK, spec, VERSIONS[AUTOATTACK], payload)
    log.info("[store] AutoAttack %s: %.2f%% in %.0f s -> %s", label, 100 * acc, record["wall_s"], path)
    return record


def format_curve(record: dict) -> str:
    c = record["curve"]
    rows = [f"{record['label']}  n={c['n']}" + "".join(f"  AUC({k})={v:.4f}" for k, v in record["auc"].items())]
    rows += [f"  eps={e:<5g} acc={100 * a:6.2f}% +- {100 * s:.2f}" + (f"  (per-eps {100 * p:6.2f}%)" if c["per_eps"] else "")
             for e, a, s, p in zip(c["eps"], c["cumulative"], c["stderr"], c["per_eps"] or c["cumulative"])]
    return "\n".join(rows)
