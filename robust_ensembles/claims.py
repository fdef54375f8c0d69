"""The paper's three claims as verdicts the code writes from stored records: `holds`, `fails` or
`inconclusive at this n`, each with its difference, interval and margin.

Every comparison is paired: both models' per-point outcomes on the same test points, each point's
outcome the worst case over every attack run on it (`outcomes.worst_case`: the evaluation attack's
curve, and AutoAttack where it ran).

1. `ensemble_vs_single`: a K-ensemble trained at alpha is at least as robust at eps as the single
   model trained at eps (non-inferiority: the lower end of the interval of ensemble - single is
   above -margin) and more accurate on clean data (the lower end of the clean difference is above 0).
   It fails when the robust interval lies wholly below -margin or the clean one wholly below 0.
2. `growth_with_k`: robust accuracy grows with K and saturates. Growth (largest K - K=1) holds when
   the interval's lower end is above 0, checked first; otherwise it fails when the whole interval is
   below +margin (no gain as large as the margin is possible). Saturation: the last step of the K list
   (largest K - the one before) holds when its whole interval lies inside [-margin, margin] (an
   equivalence test) and fails when it lies wholly outside (still gaining, or dropping, by more than
   the margin).
3. `equivalent_eps_about_2alpha`: the single-robust-equivalent eps (`equivalent_eps`) of the
   ensemble trained at alpha lies within a relative tolerance of 2*alpha: its paired-bootstrap
   interval (points resampled, every model read on the same draw) inside
   [2*alpha*(1-tol), 2*alpha*(1+tol)] holds, wholly outside fails.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from robust_ensembles import outcomes
from robust_ensembles.paired import Difference, bootstrap_accuracies, paired_difference, percentile_interval
from robust_ensembles.replicates import ReplicatedDifference, needed, replicated_difference

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive at this n"


@dataclass
class Verdict:
    claim: str
    verdict: str
    detail: str
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"**{self.verdict}**: {self.claim}. {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def combine(*verdicts: str) -> str:
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def attacks_text(procedures: set) -> str:
    """Which attacks a paired comparison combined per point (`outcomes.common_procedures` of its pairs)."""
    if not procedures:
        return "the evaluation attack only (no other attack record is on both models' points at this eps)"
    listed = "; ".join(f"{settings_name(s)} at eps={e:g} on the first {n} points" for e, n, s in sorted(procedures))
    return f"per point the worst case of the evaluation attack and, run on both models: {listed}"


def settings_name(settings: str) -> str:
    """A short name of an attack record's settings (`outcomes.procedure`'s JSON): version and attacks."""
    s = json.loads(settings)
    if not isinstance(s, dict):
        return f"AutoAttack {s}"
    return f"AutoAttack {s.get('version')}" + (f" [{', '.join(s['attacks'])}]" if s.get("attacks") else "")


def at_least(d: Difference, margin: float) -> str:
    """first >= second - margin: holds when the whole interval is above -margin, fails when below."""
    return HOLDS if d.low > -margin else FAILS if d.high < -margin else INCONCLUSIVE


def within(d: Difference, margin: float) -> str:
    """|first - second| <= margin: holds when the whole interval is inside, fails when wholly outside."""
    if -margin < d.low and d.high < margin:
        return HOLDS
    return FAILS if d.low > margin or d.high < -margin else INCONCLUSIVE


def ensemble_vs_single(ensemble: dict, single: dict, eps: float, margin: float, level: float,
                       ensemble_label: str, single_label: str) -> Verdict:
    robust = paired_difference(*outcomes.paired_worst_case(ensemble, single, eps), level)
    clean = paired_difference(outcomes.under_curve(ensemble, 0.0), outcomes.under_curve(single, 0.0), level)
    r_v, c_v = at_least(robust, margin), at_least(clean, 0.0)
    both = outcomes.common_procedures(ensemble, single, eps)
    detail = (f"Robust at eps={eps:g}, {ensemble_label} - {single_label}: {robust.text()}, non-inferiority margin "
              f"{100 * margin:g} points ({r_v}). Clean: {clean.text()}, must be above 0 ({c_v}). "
              f"{100 * level:g}% intervals, {robust.method}; {attacks_text(both)}.")
    return Verdict(f"(1) {ensemble_label} is at least as robust at eps={eps:g} as {single_label}, and more accurate "
                   f"on clean data", combine(r_v, c_v), detail,
                   {"robust": robust.to_dict(), "clean": clean.to_dict(), "margin": margin, "eps": eps,
                    "autoattack_included": bool(both)})


def growth_with_k(records: dict[int, dict], eps: float, margin: float, level: float) -> Verdict:
    ks = sorted(records)
    if len(ks) < 3 or ks[0] != 1:
        raise ValueError(f"the growth claim needs K=1 and at least two larger K (got {ks})")
    best, before = ks[-1], ks[-2]
    growth = paired_difference(*outcomes.paired_worst_case(records[best], records[1], eps), level)
    last = paired_difference(*outcomes.paired_worst_case(records[best], records[before], eps), level)
    g_v = HOLDS if growth.low > 0 else FAILS if growth.high < margin else INCONCLUSIVE
    s_v = within(last, margin)
    growth_attacks = outcomes.common_procedures(records[best], records[1], eps)
    last_attacks = outcomes.common_procedures(records[best], records[before], eps)
    detail = (f"Growth, K={best} - K=1 at eps={eps:g}: {growth.text()}, must be above 0; no growth if wholly "
              f"below the margin ({g_v}). Saturation, "
              f"K={best} - K={before}: {last.text()}, must lie within +-{100 * margin:g} points ({s_v}). "
              f"{100 * level:g}% intervals, {growth.method}; growth: {attacks_text(growth_attacks)}; saturation: "
              f"{attacks_text(last_attacks)}.")
    return Verdict(f"(2) robust accuracy at eps={eps:g} grows with K and saturates (K in {ks})",
                   combine(g_v, s_v), detail,
                   {"growth": growth.to_dict(), "last_step": last.to_dict(), "margin": margin, "eps": eps, "K": ks,
                    "autoattack_included": bool(growth_attacks and last_attacks)})


def equivalent_eps(grid: Sequence[float], ensemble_acc: Sequence[float], single_acc: Sequence[float]) -> tuple[float, str]:
    """The largest grid epsilon e at which the ensemble is at least as accurate at e as the single
    model trained at e (both evaluated at e; a tie counts as at least as accurate), linearly
    interpolated towards the next grid point, where the ensemble falls behind. Returns (value, text):
    "> max" when that e is the grid's last (value = the grid's max), "< min" when the ensemble is
    behind at every grid point (value = nan). Whatever happens below that e does not matter.
    """
    if not (len(grid) == len(ensemble_acc) == len(single_acc)) or not grid:
        raise ValueError("equivalent_eps needs one ensemble and one single accuracy per grid epsilon")
    if list(grid) != sorted(grid):
        raise ValueError(f"the single-model grid {list(grid)} must be increasing")
    d = [a - b for a, b in zip(ensemble_acc, single_acc)]
    last = max((i for i, v in enumerate(d) if v >= 0), default=None)
    if last is None:
        return math.nan, f"< {grid[0]:g}"
    if last == len(d) - 1:
        return float(grid[-1]), f"> {grid[-1]:g}"
    e0, e1 = grid[last], grid[last + 1]
    value = e0 + (e1 - e0) * d[last] / (d[last] - d[last + 1])
    return value, f"{value:.3f}"


def equivalent_eps_interval(ensemble: dict, singles: dict[float, dict], samples: int, seed: int,
                            level: float) -> tuple[float, float, float]:
    """(estimate, low, high) of the equivalent eps, the interval from a paired bootstrap over points."""
    grid = sorted(singles)
    pairs = [outcomes.paired_worst_case(ensemble, singles[e], e) for e in grid]
    rows = [p[0] for p in pairs] + [p[1] for p in pairs]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"the ensemble and the single models at eps {grid} must be evaluated on the same points "
                         f"(per-point outcome lengths {[len(r) for r in rows]})")
    table = torch.stack(rows)
    point, _ = equivalent_eps(grid, table[:len(grid)].float().mean(1).tolist(), table[len(grid):].float().mean(1).tolist())
    accs = bootstrap_accuracies(table, samples, seed)
    values = [equivalent_eps(grid, a[:len(grid)].tolist(), a[len(grid):].tolist())[0] for a in accs]
    low, high = percentile_interval(values, level)
    return point, low, high


def equivalent_eps_about_2alpha(ensemble: dict, singles: dict[float, dict], alpha: float, tolerance: float,
                                samples: int, seed: int, level: float, label: str) -> Verdict:
    target = 2 * alpha
    band = (target * (1 - tolerance), target * (1 + tolerance))
    point, low, high = equivalent_eps_interval(ensemble, singles, samples, seed, level)
    grid = sorted(singles)
    fmt = lambda v: f"< {grid[0]:g}" if math.isnan(v) else (f">= {grid[-1]:g}" if v >= grid[-1] else f"{v:.3f}")
    # censoring: nan = below the grid (only known to be < grid[0]); grid[-1] = at or beyond the grid's end
    lower = -math.inf if math.isnan(low) else low
    upper = grid[0] if math.isnan(high) else (math.inf if high >= grid[-1] else high)
    below = upper <= band[0] if math.isnan(high) else upper < band[0]
    if band[0] <= lower and upper <= band[1]:
        v = HOLDS
    elif below or lower > band[1]:
        v = FAILS
    else:
        v = INCONCLUSIVE
    detail = (f"{label}: equivalent eps {fmt(point)}, {100 * level:g}% paired-bootstrap interval "
              f"[{fmt(low)}, {fmt(high)}] ({samples} resamples of the test points); 2*alpha = {target:g}, "
              f"band +-{100 * tolerance:g}% = [{band[0]:.3f}, {band[1]:.3f}] on the single-model grid {grid}")
    return Verdict(f"(3) the single-robust-equivalent eps of {label} is about 2*alpha = {target:g}", v, detail,
                   {"alpha": alpha, "estimate": point, "low": low, "high": high, "band": list(band),
                    "tolerance": tolerance, "grid": grid, "samples": samples})


# ----------------------------------------------------------------------------- over seed replicates
def above(d: ReplicatedDifference, bound: float) -> tuple[str, str]:
    """(verdict, text) of `first - second > bound` from the interval over seeds and test points: holds when
    it lies wholly above the bound, fails when wholly below. With one replicate on a side the seed variance
    is unknown: the verdict is then read from the test-point interval and says it covers only those. An
    undecided one says what would decide it (`replicates.needed`)."""
    if d.known:
        low, high, covers = d.low, d.high, "seeds and test points"
    else:
        low, high, covers = d.points_only.low, d.points_only.high, "test points only: seed variance unknown"
    v = HOLDS if low > bound else FAILS if high < bound else INCONCLUSIVE
    text = f"{d.text()} ({v}, over {covers})"
    if v == INCONCLUSIVE:
        text += f"; would be decided by {needed(d, bound).text()}"
    return v, text


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([r.float() for r in rows])


def ensemble_beats_members(ensembles: list[dict], members: list[list[dict]], level: float, label: str) -> Verdict:
    """(4) an ensemble's clean accuracy exceeds the mean of its members' (the paper's rho(theta-bar, 0) >
    rho-bar(theta, 0)). `ensembles[b]` is the curve record of the ensemble of seed block b, `members[b]`
    its members' own records: the replicates are paired (block b's ensemble against block b's members)."""
    if len(ensembles) != len(members) or not ensembles:
        raise ValueError("claim (4) needs one list of member records per ensemble record")
    first = _stack([outcomes.under_curve(e, 0.0) for e in ensembles])
    second = _stack([_stack([outcomes.under_curve(m, 0.0) for m in block]).mean(0) for block in members])
    d = replicated_difference(first, second, level, paired_replicates=True)
    v, text = above(d, 0.0)
    seeds = [[m.get("members", [{}])[0].get("seed") for m in block] for block in members]
    detail = (f"Clean, {label} - the mean of its members: {text}. Seed blocks {seeds}; {100 * level:g}% intervals.")
    return Verdict(f"(4) {label} is more accurate on clean data than its members on average", v, detail,
                   {"clean": d.to_dict(), "blocks": seeds})


def per_point_auc(record: dict, eps_t: float) -> torch.Tensor:
    """Each point's AUC(eps_t): (1/eps_t) x the trapezoid integral over the grid of 'still standing' (its
    curve of 1s then 0s); their mean is the record's AUC, so AUCs compare point by point."""
    grid = [e for e in record["curve"]["eps"] if e <= eps_t + 1e-12]
    if not grid or not math.isclose(grid[-1], eps_t):
        raise ValueError(f"AUC({eps_t}): eps_t must be on the grid {record['curve']['eps']}")
    up = _stack([outcomes.under_curve(record, e) for e in grid])  # (len(grid), n)
    widths = torch.tensor([e1 - e0 for e0, e1 in zip(grid, grid[1:])])[:, None]
    return ((up[:-1] + up[1:]) / 2 * widths).sum(0) / eps_t


def composites_vs_single(composite: list[dict], pair: list[dict], single: list[dict], eps: float, margin: float,
                         level: float, auc_eps: float, labels: tuple[str, str, str]) -> Verdict:
    """(5) composites against the single robust model trained at the composite's eps (each side a list of
    replicate records, read on the same points): one composite more accurate on clean data, with robust
    accuracy at eps at most `margin` below; two weighted composites at least as robust (within the margin);
    AUC(auc_eps) of both against the single model's, reported."""
    one, two, ref = labels
    clean = lambda recs: _stack([outcomes.under_curve(r, 0.0) for r in recs])

    def robust(first: list[dict], second: list[dict]) -> ReplicatedDifference:
        both = set.intersection(*({outcomes.procedure(a) for a in outcomes.applicable(r, eps)} for r in first + second))
        read = lambda recs: _stack([outcomes.worst_case(r, eps, procedures=both) for r in recs])  # the same attacks
        return replicated_difference(read(first), read(second), level)

    parts = {
        f"clean, {one} - {ref}": (replicated_difference(clean(composite), clean(single), level), 0.0),
        f"robust at eps={eps:g}, {one} - {ref}": (robust(composite, single), -margin),
        f"robust at eps={eps:g}, {two} - {ref}": (robust(pair, single), -margin),
    }
    verdicts, texts = [], []
    for name, (d, bound) in parts.items():
        v, text = above(d, bound)
        verdicts.append(v)
        texts.append(f"{name}: {text}, must be above {100 * bound:+g} points")
    auc = lambda recs: _stack([per_point_auc(r, auc_eps) for r in recs])
    aucs = {name: replicated_difference(auc(recs), auc(single), level) for name, recs in ((one, composite), (two, pair))}
    auc_text = "; ".join(f"AUC({auc_eps:g}) {name} - {ref}: {d.text()}" for name, d in aucs.items())
    detail = (f"{'. '.join(texts)}. {auc_text} (reported, not judged). Non-inferiority margin {100 * margin:g} points; "
              f"{100 * level:g}% intervals; a claim holds only if every part holds.")
    return Verdict(f"(5) {one} is more accurate on clean data than {ref} and about as robust at eps={eps:g}; "
                   f"{two} are at least as robust", combine(*verdicts), detail,
                   {"parts": {k: d.to_dict() for k, (d, _) in parts.items()}, "auc": {k: d.to_dict() for k, d in aucs.items()},
                    "margin": margin, "eps": eps})
