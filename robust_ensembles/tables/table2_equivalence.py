"""Table 2 (right): the single-robust-equivalent eps of a K-ensemble trained at alpha.

Single robust models are trained on a grid of eps; for each grid eps e the ensemble's accuracy at
e is compared with that of the single model trained at e, evaluated at e. The equivalent eps is the
largest grid e at which the ensemble is at least as accurate (`claims.equivalent_eps`), every
accuracy the worst case per point over the attacks run on it. The grid holds every single model the
tables train: `single_grid`, and the ensembles' own alphas (their seed-0 member is a single model
trained there), so fewer readings rest on a straight line across a wide cell. Claim (3) gets a
paired-bootstrap interval for each alpha whose 2*alpha lies on the grid's range; claim (4) compares
every ensemble with the mean of its members.
"""

from __future__ import annotations

import math

from robust_ensembles.evaluation import outcomes
from robust_ensembles.evaluation.curves import curve_of, standard_error
from robust_ensembles.tables.claims import ensemble_beats_members, equivalent_eps, equivalent_eps_about_2alpha
from robust_ensembles.tables.reports import Filled, autoattack_of, row_cells, seeds_of
from robust_ensembles.tables.seed_blocks import member_records, seed_blocks
from robust_ensembles.tables.table_run import Needs, TableRun

__all__ = ["equivalent_eps", "needs", "fill"]


def single_grid(t: TableRun) -> list[float]:
    """Every eps a single model is trained at for this table: the scale's `single_grid` and the alphas."""
    return sorted({float(e) for e in t.s.single_grid} | {float(a) for a in t.s.alphas})


def needs(t: TableRun) -> Needs:
    n = Needs()
    for alpha in t.s.alphas:
        n.add_seeds(alpha, t.s.K)
    for e in t.s.single_grid:
        n.add_seeds(e, 1)
    return n


def fill(t: TableRun) -> Filled:
    grid = single_grid(t)
    target = float(t.spec.target_eps)
    single, singles, reference, by_eps = [], [], None, {}
    for e in grid:  # each single model read at its own training eps, on the same grid and attacks as the
        # ensembles; AutoAttack for the one at the target
        r = t.evaluate_row([f"alpha={e}", "K=1"], autoattack=(e == target))
        singles.append(r)
        by_eps[e] = r
        single.append(outcomes.worst_case(r, e).float().mean().item())
        reference = outcomes.autoattack_columns(r) if e == target else reference
    rows, curves, records, verdicts, beats = [], {}, [], [], []
    c = t.claims
    for alpha in t.s.alphas:
        r = t.evaluate_row([f"alpha={alpha}", f"K={t.s.K}"])
        records.append(r)
        pairs = [outcomes.paired_worst_case(r, by_eps[e], e) for e in grid]  # both sides under the same attacks
        value, text = equivalent_eps(grid, [ens.float().mean().item() for ens, _ in pairs],
                                     [one.float().mean().item() for _, one in pairs])
        cells = row_cells(t, r, [0.0, *grid])
        rows.append({"alpha": alpha, "models": t.s.K, "single-robust-equivalent eps": text,
                     "ratio to alpha": "-" if math.isnan(value) else f"{value / alpha:.2f}", **cells, "n": r["n"],
                     "seeds": seeds_of(r)})
        curves[f"{t.s.K}x alpha={alpha}"] = curve_of(r)
        if grid[0] <= 2 * alpha <= grid[-1] and not t.planning:  # (planning discards verdicts: no bootstrap)
            verdicts.append(equivalent_eps_about_2alpha(r, by_eps, float(alpha), float(c.equivalence_tolerance),
                                                        int(c.bootstrap_samples), int(c.seed), float(c.level),
                                                        f"{t.s.K}x alpha={alpha:g}"))
        beats.append(ensemble_beats_members([r], member_records(t, alpha, seed_blocks(t.s.K, 1)), float(c.level),
                                            f"{t.s.K}x alpha={alpha:g}"))
    verdicts += beats  # claim (4) after claim (3)
    n = singles[-1]["n"]
    notes = [f"single models trained at eps in {grid} (seed {seeds_of(singles[0])}), each attacked on the same grid as "
             f"the ensembles and read at its own eps (n = {n}): " + ", ".join(f"{e:g}: {100 * a:.2f}%" for e, a in zip(grid, single))]
    points = {"single model trained at e, attacked at e": [(e, a, standard_error(a, n)) for e, a in zip(grid, single)]}
    if reference:
        notes.append(f"under AutoAttack at eps={target:g} on the same {reference['n']} points, the single model trained "
                     f"at {target:g} has {100 * reference['autoattack']:.2f}% (the evaluation attack "
                     f"{100 * reference['attack']:.2f}%): "
                     f"a row whose AA column is at least this is single-robust-equivalent at {target:g} or beyond "
                     f"under AutoAttack")
    return Filled(rows, curves, notes, autoattack_of([*records, *singles]), points, verdicts)
