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

from robust_ensembles.evaluation import outcomes
from robust_ensembles.stats.paired import Difference, bootstrap_accuracies, percentile_interval
from robust_ensembles.stats.replicates import Needed, ReplicatedDifference, needed, replicated_difference

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
    return (f"AutoAttack {s.get('version')}" + (f" [{', '.join(s['attacks'])}]" if s.get("attacks") else "")
            + (f", APGD-CE {s['apgd_restarts']} restart(s)" if s.get("apgd_restarts") else ""))


def at_least(d: Difference, margin: float) -> str:
    """first >= second - margin: holds when the whole interval is above -margin, fails when below."""
    return HOLDS if d.low > -margin else FAILS if d.high < -margin else INCONCLUSIVE


def equivalence_level(level: float) -> float:
    """The two one-sided tests' interval level for an equivalence verdict at `level` (TOST: each side tested
    at 1 - level, so the interval is 1 - 2 (1 - level): 90 % for the 95 % of the other verdicts)."""
    return 1 - 2 * (1 - level)


def as_replicates(records) -> list[dict]:
    """One record or a list of replicate records (single models of different seeds, or K-ensembles of
    disjoint seed blocks), as a list."""
    return [records] if isinstance(records, dict) else list(records)


def worst_case_replicates(sides: list[list[dict]], eps: float) -> tuple[list[torch.Tensor], set]:
    """Each side's (R, n) per-point outcomes at eps, every record read under the same attacks: the curve, and
    a per-point attack record only where every record of every side has one of that procedure (else one
    replicate would face an attack another did not). Returns the matrices and the procedures used."""
    records = [r for side in sides for r in side]
    both = set.intersection(*({outcomes.procedure(a) for a in outcomes.applicable(r, eps)} for r in records))
    return [_stack([outcomes.worst_case(r, eps, procedures=both) for r in side]) for side in sides], both


def clean_replicates(side: list[dict]) -> torch.Tensor:
    return _stack([outcomes.under_curve(r, 0.0) for r in side])


def interval_of(d: ReplicatedDifference) -> tuple[float, float, str]:
    """(low, high, what it covers): the interval over seeds and test points, or the test-point interval where
    a side has one replicate (the seed variance is then unknown, and the text says so)."""
    if d.known:
        return d.low, d.high, "seeds and test points"
    return d.points_only.low, d.points_only.high, "test points only: seed variance unknown"


def interval_text(d: dict) -> str:
    """'+1.50 [-0.22, +3.21]' of a ReplicatedDifference's dict: over seeds and points where known, else points."""
    low, high = (d["low"], d["high"]) if d["low"] is not None else (d["points_only"]["low"], d["points_only"]["high"])
    return f"{100 * d['estimate']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def seeds_text(side: list[dict]) -> str:
    """The seeds of each replicate: '0-3; 4-7' (a seed block per replicate), '0,2,5' where not contiguous."""
    run = lambda seeds: len(seeds) > 2 and all(isinstance(s, int) for s in seeds) and \
        seeds == list(range(seeds[0], seeds[0] + len(seeds)))  # three or more consecutive seeds: 'a-b'

    def block(r: dict) -> str:
        seeds = [m.get("seed") for m in r.get("members", [])]
        return f"{seeds[0]}-{seeds[-1]}" if run(seeds) else ",".join(str(s) for s in seeds)
    singles = [r["members"][0].get("seed") for r in side if len(r.get("members", [])) == 1]
    if len(singles) == len(side) and run(singles):
        return f"{singles[0]}-{singles[-1]}, one model each"
    return "; ".join(block(r) for r in side)


def ensemble_vs_single(ensemble, single, eps: float, margin: float, level: float,
                       ensemble_label: str, single_label: str) -> Verdict:
    """(1) over seed replicates: `ensemble` the K-ensembles of disjoint seed blocks (or one record), `single`
    the single models of their seeds (or one), all on the same points. Robust accuracy at eps non-inferior
    within the margin and clean accuracy higher, each from the interval over seeds and points (the
    test-point interval where a side has one replicate, said so). With one ensemble per seed block whose
    seeds are also single models, each block is also compared with the single models of its own seeds
    (`numbers["by_block"]`): what two separate builds of the recipe would each have concluded."""
    ens, one = as_replicates(ensemble), as_replicates(single)
    (a, b), both = worst_case_replicates([ens, one], eps)
    robust = replicated_difference(a, b, level)
    clean = replicated_difference(clean_replicates(ens), clean_replicates(one), level)
    r_v, r_text = above(robust, -margin)
    c_v, c_text = above(clean, 0.0)
    detail = (f"Robust at eps={eps:g}, {ensemble_label} - {single_label}: {r_text}, non-inferiority margin "
              f"{100 * margin:g} points. Clean: {c_text}, must be above 0. Seeds: {ensemble_label} {seeds_text(ens)}; "
              f"{single_label} {seeds_text(one)}. {100 * level:g}% intervals; {attacks_text(both)}.")
    by_block, unmatched = [], []
    seed_of = {r["members"][0].get("seed"): i for i, r in enumerate(one) if len(r.get("members", [])) == 1}
    if len(ens) > 1:
        for i, e in enumerate(ens):
            rows = [seed_of[m.get("seed")] for m in e.get("members", []) if m.get("seed") in seed_of]
            if len(rows) != len(e.get("members", [])):
                unmatched.append(seeds_text([e]))
                continue
            block_robust = replicated_difference(a[i:i + 1], b[rows], level)
            block_clean = replicated_difference(clean_replicates([e]), clean_replicates([one[j] for j in rows]), level)
            by_block.append({"seeds": seeds_text([e]), "robust": block_robust.to_dict(), "clean": block_clean.to_dict(),
                             "verdict": combine(above(block_robust, -margin)[0], above(block_clean, 0.0)[0])})
        if by_block:
            detail += " Each seed block alone (its ensemble against the single models of its own seeds; test-point " \
                      "intervals, one ensemble a side): " + "; ".join(
                f"seeds {blk['seeds']}: robust {interval_text(blk['robust'])}, clean {interval_text(blk['clean'])} "
                f"({blk['verdict']})" for blk in by_block) + "."
        if unmatched:
            detail += (f" Not compared alone (no single model of each of their seeds in {single_label}): seeds "
                       f"{', '.join(unmatched)}.")
    return Verdict(f"(1) {ensemble_label} is at least as robust at eps={eps:g} as {single_label}, and more accurate "
                   f"on clean data", combine(r_v, c_v), detail,
                   {"robust": robust.to_dict(), "clean": clean.to_dict(), "margin": margin, "eps": eps,
                    "autoattack_included": bool(both), "by_block": by_block})


def growth_verdict(low: float, high: float) -> str:
    """Growth (largest K - K=1) from its interval: holds when it lies wholly above 0 (a gain), fails when wholly
    below 0 (a loss). The truths behind the two (gain > 0, gain < 0) cannot both hold; a gain too small to tell
    from none stays inconclusive, with what would decide it."""
    return HOLDS if low > 0 else FAILS if high < 0 else INCONCLUSIVE


def merged_needed(*ns: Needed) -> Needed:
    """What decides every one of several bounds at once: the most points, the most seed sets."""
    reps = None if any(n.replicate_sets is None for n in ns) else max(n.replicate_sets for n in ns)
    return Needed(max(n.points for n in ns), reps)


def growth_with_k(records: dict, eps: float, margin: float, level: float) -> Verdict:
    """(2) over seed replicates: `records[K]` the K-ensembles of disjoint seed blocks (or one record), on the
    same points. Three parts, each with regions that cannot overlap:
    - growth, largest K - K=1 (`growth_verdict`): holds wholly above 0, fails wholly below;
    - every step K_i -> K_i+1: non-inferior (holds when the lower end is above -margin, fails when the upper
      end is below it): robust accuracy does not drop by a margin's size anywhere along K;
    - saturation, the last step: an equivalence test (TOST) holds when its 90 % interval lies inside
      +-margin, fails when the 95 % interval lies wholly outside it.
    The claim holds only if every part holds. Sides of different K share seeds (K=8 is the union of the
    K=4 blocks) but are treated as independent, which only widens the intervals."""
    ks = sorted(records)
    if len(ks) < 3 or ks[0] != 1:
        raise ValueError(f"the growth claim needs K=1 and at least two larger K (got {ks})")
    sides = {k: as_replicates(records[k]) for k in ks}
    mats, both = worst_case_replicates([sides[k] for k in ks], eps)
    mat = dict(zip(ks, mats))
    best = ks[-1]
    growth = replicated_difference(mat[best], mat[1], level)
    low, high, covers = interval_of(growth)
    g_v = growth_verdict(low, high)
    texts = [f"Growth, K={best} - K=1: {growth.text()} ({g_v}, over {covers}; holds wholly above 0, fails wholly "
             f"below)" + (f"; {needed(growth, 0.0).text()}" if g_v == INCONCLUSIVE else "")]
    steps, step_vs = [], []
    for k0, k1 in zip(ks, ks[1:]):
        d = replicated_difference(mat[k1], mat[k0], level)
        v, text = above(d, -margin)
        steps.append({"from": k0, "to": k1, "difference": d.to_dict(), "verdict": v})
        step_vs.append(v)
        texts.append(f"step K={k0} -> {k1}: {text}, must be above -{100 * margin:g}")
    tost = equivalence_level(level)
    last = replicated_difference(mat[best], mat[ks[-2]], tost)
    wide = replicated_difference(mat[best], mat[ks[-2]], level)
    lo90, hi90, covers = interval_of(last)
    lo95, hi95, _ = interval_of(wide)
    s_v = HOLDS if -margin < lo90 and hi90 < margin else FAILS if lo95 > margin or hi95 < -margin else INCONCLUSIVE
    decide = ""
    if s_v == INCONCLUSIVE:  # inside the band: both ends must come in; outside: the 95 % interval must leave it
        want = (merged_needed(needed(last, margin), needed(last, -margin)) if abs(last.estimate) < margin
                else needed(wide, margin if last.estimate > 0 else -margin))
        decide = f"; {want.text()}"
    texts.append(f"saturation, K={best} - K={ks[-2]}: {last.text()} at {100 * tost:g}% (TOST), must lie within "
                 f"+-{100 * margin:g} ({s_v}, over {covers}; fails when the {100 * level:g}% interval "
                 f"[{100 * lo95:+.2f}, {100 * hi95:+.2f}] lies wholly outside){decide}")
    detail = (f"At eps={eps:g}: " + "; ".join(texts) + ". Seeds: " + "; ".join(
        f"K={k} {seeds_text(sides[k])}" for k in ks) + f". {100 * level:g}% intervals unless said; "
              f"{attacks_text(both)}; the claim holds only if every part holds.")
    return Verdict(f"(2) robust accuracy at eps={eps:g} is higher at K={best} than at K=1, drops by no more than the "
                   f"margin at any step of K, and saturates (K in {ks})",
                   combine(g_v, *step_vs, s_v), detail,
                   {"growth": growth.to_dict(), "steps": steps, "last_step": last.to_dict(), "margin": margin,
                    "eps": eps, "K": ks, "replicates": {k: len(sides[k]) for k in ks},
                    "autoattack_included": bool(both)})


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


def equivalent_eps_bootstrap(ensemble: dict, singles: dict[float, dict], samples: int,
                             seed: int) -> tuple[float, list[float]]:
    """(estimate, the bootstrap values) of the equivalent eps: a paired bootstrap over points, every model
    read on the same draw (nan: below the grid; the grid's last eps: at or beyond it)."""
    grid = sorted(singles)
    pairs = [outcomes.paired_worst_case(ensemble, singles[e], e) for e in grid]
    rows = [p[0] for p in pairs] + [p[1] for p in pairs]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"the ensemble and the single models at eps {grid} must be evaluated on the same points "
                         f"(per-point outcome lengths {[len(r) for r in rows]})")
    table = torch.stack(rows)
    point, _ = equivalent_eps(grid, table[:len(grid)].float().mean(1).tolist(), table[len(grid):].float().mean(1).tolist())
    accs = bootstrap_accuracies(table, samples, seed)
    return point, [equivalent_eps(grid, a[:len(grid)].tolist(), a[len(grid):].tolist())[0] for a in accs]


def equivalent_eps_interval(ensemble: dict, singles: dict[float, dict], samples: int, seed: int,
                            level: float) -> tuple[float, float, float]:
    """(estimate, low, high) of the equivalent eps, the interval from a paired bootstrap over points."""
    point, values = equivalent_eps_bootstrap(ensemble, singles, samples, seed)
    low, high = percentile_interval(values, level)
    return point, low, high


def cells_spanned(low: float, high: float, grid: Sequence[float]) -> list[tuple[float, float]]:
    """The cells [e_i, e_i+1] of the single-model grid that the interval [low, high] reaches into: inside a
    cell the equivalent eps is read off the straight line between two trained single models, so a wide cell
    is interpolation, not measurement (an end censored below the grid counts as the grid's first eps, one
    at or beyond its end as the last)."""
    if len(grid) < 2:
        return []
    lo = grid[0] if math.isnan(low) else min(max(low, grid[0]), grid[-1])
    hi = grid[0] if math.isnan(high) else min(max(high, grid[0]), grid[-1])
    cells = list(zip(grid, grid[1:]))
    return [(a, b) for a, b in cells if b > lo and a < hi] or [next((a, b) for a, b in cells if a <= lo <= b)]


def points_to_decide(n: int, point: float, low: float, high: float, band: tuple[float, float]) -> float | None:
    """Test points at which an interval of this width, shrinking as 1/sqrt(n) around the same estimate,
    would decide the band test (the estimate inside the band: both ends inside, holds; outside: the end
    towards the band outside it, fails); None where the estimate or an end it needs is censored by the grid."""
    finite = lambda *v: not any(math.isnan(x) or math.isinf(x) for x in v)
    if not finite(point):
        return None
    if band[0] <= point <= band[1]:
        if not finite(low, high):
            return None
        ratios = [(point - low) / (point - band[0]) if point > band[0] else math.inf,
                  (high - point) / (band[1] - point) if point < band[1] else math.inf]
    elif point < band[0]:
        if not finite(high):
            return None
        ratios = [(high - point) / (band[0] - point)]
    else:
        if not finite(low):
            return None
        ratios = [(point - low) / (point - band[1])]
    ratio = max(ratios)
    return math.inf if math.isinf(ratio) else max(n + 1, math.ceil(n * ratio ** 2 - 1e-6))


def equivalent_eps_about_2alpha(ensemble: dict, singles: dict[float, dict], alpha: float, tolerance: float,
                                samples: int, seed: int, level: float, label: str) -> Verdict:
    """(3) an equivalence test: holds when the TOST interval (90 % for a 95 % level) of the equivalent eps lies
    inside the band 2*alpha*(1 +- tolerance), fails when the `level` interval lies wholly outside it (regions
    that cannot overlap). One ensemble and one single model per grid eps: the interval covers the test
    points, not retraining (the seed variance is unknown and the text says so)."""
    target = 2 * alpha
    band = (target * (1 - tolerance), target * (1 + tolerance))
    tost = equivalence_level(level)
    point, values = equivalent_eps_bootstrap(ensemble, singles, samples, seed)
    low, high = percentile_interval(values, tost)
    wide_low, wide_high = percentile_interval(values, level)
    grid = sorted(singles)
    fmt = lambda v: f"< {grid[0]:g}" if math.isnan(v) else (f">= {grid[-1]:g}" if v >= grid[-1] else f"{v:.3f}")

    def bounds(lo: float, hi: float) -> tuple[float, float]:
        # censoring: nan = below the grid (only known to be < grid[0]); grid[-1] = at or beyond the grid's end
        return (-math.inf if math.isnan(lo) else lo), (grid[0] if math.isnan(hi) else (math.inf if hi >= grid[-1] else hi))

    lower, upper = bounds(low, high)
    w_lower, w_upper = bounds(wide_low, wide_high)
    below = w_upper <= band[0] if math.isnan(wide_high) else w_upper < band[0]
    if band[0] <= lower and upper <= band[1]:
        v = HOLDS
    elif below or w_lower > band[1]:
        v = FAILS
    else:
        v = INCONCLUSIVE
    cells = cells_spanned(low, high, grid)
    n = len(outcomes.under_curve(ensemble, 0.0))
    detail = (f"{label}: equivalent eps {fmt(point)}, {100 * tost:g}% TOST interval [{fmt(low)}, {fmt(high)}], "
              f"{100 * level:g}% [{fmt(wide_low)}, {fmt(wide_high)}] (paired bootstrap, {samples} resamples of the "
              f"{n} test points; test points only: one ensemble and one single model per eps, so the seed variance "
              f"is unknown); 2*alpha = {target:g}, band +-{100 * tolerance:g}% = [{band[0]:.3f}, {band[1]:.3f}]; "
              f"holds when the {100 * tost:g}% interval lies inside the band, fails when the {100 * level:g}% one lies "
              f"wholly outside. Single-model grid {grid} (seed 0 at each eps)" + (
                  f": the {100 * tost:g}% interval spans the cells " + ", ".join(f"[{a:g}, {b:g}]" for a, b in cells)
                  + f" (widest {max(b - a for a, b in cells):.2f}), where the reading is a straight line between two "
                  f"trained single models" if cells else ""))
    inside = band[0] <= point <= band[1]  # inside: the TOST interval must come in; outside: the 95 % one must leave
    needed_n = (points_to_decide(n, point, *((lower, upper) if inside else (w_lower, w_upper)), band)
                if v == INCONCLUSIVE else None)
    if v == INCONCLUSIVE:
        detail += (f"; would be decided by about {needed_n:,.0f} test points at this ensemble and these single models "
                   f"(the interval taken to shrink as 1/sqrt(n))" if needed_n and math.isfinite(needed_n) else
                   "; more test points alone would not decide it (an end of the interval is censored by the grid)")
    return Verdict(f"(3) the single-robust-equivalent eps of {label} is about 2*alpha = {target:g}", v, detail,
                   {"alpha": alpha, "estimate": point, "low": low, "high": high, "level": tost,
                    "low_wide": wide_low, "high_wide": wide_high, "band": list(band), "tolerance": tolerance,
                    "grid": grid, "samples": samples, "cells": [list(c) for c in cells], "points_needed": needed_n})


# ----------------------------------------------------------------------------- over seed replicates
def above(d: ReplicatedDifference, bound: float) -> tuple[str, str]:
    """(verdict, text) of `first - second > bound` from the interval over seeds and test points: holds when
    it lies wholly above the bound, fails when wholly below. With one replicate on a side the seed variance
    is unknown: the verdict is then read from the test-point interval and says it covers only those. An
    undecided one says what would decide it (`replicates.needed`)."""
    low, high, covers = interval_of(d)
    v = HOLDS if low > bound else FAILS if high < bound else INCONCLUSIVE
    text = f"{d.text()} ({v}, over {covers})"
    if v == INCONCLUSIVE:
        text += f"; {needed(d, bound).text()}"
    return v, text


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([r.float() for r in rows])


def ensemble_beats_members(ensembles: list[dict], members: list[list[dict]], level: float, label: str,
                           weights: Sequence[float] | None = None) -> Verdict:
    """(4) an ensemble's clean accuracy exceeds the mean of its members' (the paper's rho(theta-bar, 0) >
    rho-bar(theta, 0)). `ensembles[b]` is the curve record of the ensemble of seed block b, `members[b]`
    its members' own records: the replicates are paired (block b's ensemble against block b's members).
    `weights`: the ensemble's member weights (a weighted ensemble against the weighted mean of its members)."""
    if len(ensembles) != len(members) or not ensembles:
        raise ValueError("claim (4) needs one list of member records per ensemble record")
    w = None if weights is None else torch.tensor([float(x) for x in weights])[:, None]
    first = _stack([outcomes.under_curve(e, 0.0) for e in ensembles])
    second = _stack([clean_replicates(block).mean(0) if w is None else (clean_replicates(block) * w / w.sum()).sum(0)
                     for block in members])
    d = replicated_difference(first, second, level, paired_replicates=True)
    v, text = above(d, 0.0)
    seeds = [[m.get("members", [{}])[0].get("seed") for m in block] for block in members]
    mean = "weighted mean" if w is not None else "mean"
    shown = "" if w is None else f", weights [{', '.join(f'{float(x):.6g}' for x in weights)}]"  # not float32's digits
    detail = (f"Clean, {label} {100 * first.mean():.2f}% - the {mean} of its members {100 * second.mean():.2f}%: "
              f"{text}. Seed blocks {seeds}" + shown
              + f"; {100 * level:g}% intervals.")
    return Verdict(f"(4) {label} is more accurate on clean data than its members on average", v, detail,
                   {"clean": d.to_dict(), "blocks": seeds, "ensemble": float(first.mean()),
                    "members_mean": float(second.mean())})


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
