"""Table 2 (right): the single-robust-equivalent eps of a K-ensemble trained at alpha.

Single robust models are trained on a grid of eps; for each grid eps e the ensemble's accuracy at
e is compared with that of the single model trained at e, evaluated at e. The equivalent eps is the
largest grid e at which the ensemble is at least as accurate (`equivalent_eps`).
"""

from __future__ import annotations

import math
from typing import Sequence

from robust_ensembles.curves import curve_of, standard_error
from robust_ensembles.paper_tables.driver import Needs, TableRun
from robust_ensembles.paper_tables.reports import Filled, autoattack_of, row_cells, seeds_of


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


def needs(t: TableRun) -> Needs:
    n = Needs()
    for alpha in t.s.alphas:
        n.add_seeds(alpha, t.s.K)
    for e in t.s.single_grid:
        n.add_seeds(e, 1)
    return n


def fill(t: TableRun) -> Filled:
    grid = sorted(float(e) for e in t.s.single_grid)
    target = float(t.spec.target_eps)
    single, singles, reference = [], [], None
    for e in grid:  # each single model read at its own training eps, on the same grid and attacks as the
        # ensembles (every radius up to e attacked); AutoAttack for the one at the target
        r = t.evaluate_row([f"alpha={e}", "K=1"], autoattack=(e == target))
        singles.append(r)
        single.append(curve_of(r).at(e))
        reference = r.get("autoattack") if e == target else reference
    rows, curves, records = [], {}, []
    for alpha in t.s.alphas:
        r = t.evaluate_row([f"alpha={alpha}", f"K={t.s.K}"])
        records.append(r)
        c = curve_of(r)
        value, text = equivalent_eps(grid, [c.at(e) for e in grid], single)
        cells = row_cells(t, r, [0.0, *grid])
        rows.append({"alpha": alpha, "models": t.s.K, "single-robust-equivalent eps": text,
                     "ratio to alpha": "-" if math.isnan(value) else f"{value / alpha:.2f}", **cells, "n": r["n"],
                     "seeds": seeds_of(r)})
        curves[f"{t.s.K}x alpha={alpha}"] = c
    n = singles[-1]["n"]
    notes = [f"single models trained at eps in {grid} (seed {seeds_of(singles[0])}), each attacked on the same grid as "
             f"the ensembles and read at its own eps (n = {n}): " + ", ".join(f"{e:g}: {100 * a:.2f}%" for e, a in zip(grid, single))]
    points = {"single model trained at e, attacked at e": [(e, a, standard_error(a, n)) for e, a in zip(grid, single)]}
    if reference:
        notes.append(f"under AutoAttack at eps={target:g} on the same {reference['n']} points, the single model trained "
                     f"at {target:g} has {100 * reference['autoattack_acc']:.2f}% (PGD {100 * reference['pgd_acc']:.2f}%): "
                     f"a row whose AA column is at least this is single-robust-equivalent at {target:g} or beyond "
                     f"under AutoAttack")
    return Filled(rows, curves, notes, autoattack_of([*records, *singles]), points)
