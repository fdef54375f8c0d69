"""Per-point outcomes of one evaluated model, combined over every attack run on it.

A point counts as robust at eps only if no attack run on it at a radius at most eps flipped it:
the curve (the evaluation attack at every grid radius up to eps: `min_flip > eps`), and every
per-point attack record of the same model and points (the table's AutoAttack column, and any
later attack stored for it: AutoAttack on the first n points at one radius e <= eps; a point
flipped inside the ball of radius e is flipped inside every larger ball).
Both record kinds keep their per-point outcomes in the order of the split's points, so outcomes of
two models on the same split line up point by point (the paired statistics use this).
"""

from __future__ import annotations

import json
import math

import torch

from robust_ensembles.core.errors import ConfigError


def under_curve(record: dict, eps: float) -> torch.Tensor:
    """Per point of a curve record: not flipped by the evaluation attack at any grid radius <= eps."""
    grid = record["curve"]["eps"]
    if not any(math.isclose(e, eps) for e in grid):
        raise ConfigError(f"eps={eps} is not on the evaluated grid {grid}; add it to evaluation.eps_grid.")
    min_flip = torch.tensor([math.inf if v is None else v for v in record["per_point"]["min_flip"]])
    return min_flip > eps + 1e-12


def under_autoattack(aa: dict) -> torch.Tensor:
    """Per point of an AutoAttack record (the first n points of the split): AutoAttack did not flip it."""
    return torch.tensor(aa["autoattack_correct"], dtype=torch.bool)


def covered(curve_outcomes: torch.Tensor, aa: dict) -> torch.Tensor:
    """The curve's per-point outcomes, checked to cover the AutoAttack record's first n points."""
    if len(curve_outcomes) < aa["n"]:
        raise ConfigError(f"the AutoAttack record covers {aa['n']} points but the curve only {len(curve_outcomes)}; "
                          f"evaluate the curve on at least evaluation.autoattack.n points.")
    return curve_outcomes


def point_attacks(record: dict) -> list[dict]:
    """Every per-point attack record run on the record's model and points: the table's AutoAttack
    column (`record["autoattack"]`) and any later one the store holds for the same model and points
    (`record["attacks"]`: AutoAttack, a subset of it, Square, at any radius; `records.point_attack_records`),
    each once."""
    out, seen = [], set()
    for aa in [record.get("autoattack"), *(record.get("attacks") or [])]:
        name = aa and (aa.get("key") or id(aa))
        if aa and name not in seen:
            seen.add(name)
            out.append(aa)
    return out


def procedure(aa: dict) -> tuple:
    """What makes two models' attack records the same attack procedure: radius, points and settings."""
    settings = (aa.get("spec") or {}).get("autoattack") or aa.get("autoattack")
    return round(float(aa["eps"]), 9), int(aa["n"]), json.dumps(settings, sort_keys=True)


def applicable(record: dict, eps: float) -> list[dict]:
    """The record's per-point attacks whose radius is <= eps (each bounds the accuracy at eps)."""
    return [aa for aa in point_attacks(record) if aa["eps"] <= eps + 1e-12]


def worst_case(record: dict, eps: float, procedures: set | None = None) -> torch.Tensor:
    """Per point of the record's split: robust at eps under every attack run on it (the curve, and every
    per-point attack record whose radius is <= eps; with `procedures` only those whose `procedure` is in
    it: an empty set leaves the curve alone)."""
    robust = under_curve(record, eps)
    for aa in applicable(record, eps):
        if procedures is not None and procedure(aa) not in procedures:
            continue
        covered(robust, aa)
        robust = robust.clone()
        robust[:aa["n"]] &= under_autoattack(aa)
    return robust


def common_procedures(first: dict, second: dict, eps: float) -> set:
    """The attack procedures (radius, points, settings) both models have a per-point record of, at <= eps."""
    return {procedure(a) for a in applicable(first, eps)} & {procedure(b) for b in applicable(second, eps)}


def paired_worst_case(first: dict, second: dict, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' per-point outcomes at eps under the same attack procedure: a per-point attack record
    counts only when both have one of the same procedure (else one side would face an attack the other
    did not); the curve always counts (both evaluated on the same grid)."""
    both = common_procedures(first, second, eps)
    return worst_case(first, eps, procedures=both), worst_case(second, eps, procedures=both)


def autoattack_columns(record: dict) -> dict | None:
    """On the AutoAttack record's points at its radius: AutoAttack's accuracy, the evaluation attack's
    (its curve, every grid radius up to that eps), and the worst case of both; None without a record."""
    aa = record.get("autoattack")
    if not aa:
        return None
    ours = covered(under_curve(record, aa["eps"]), aa)[: aa["n"]]
    theirs = under_autoattack(aa)
    return {"n": aa["n"], "eps": aa["eps"], "autoattack": theirs.float().mean().item(),
            "attack": ours.float().mean().item(), "worst": (ours & theirs).float().mean().item()}
