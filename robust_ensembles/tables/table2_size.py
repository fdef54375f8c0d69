"""Table 2 (left): natural and robust accuracy at the target eps of K-ensembles trained at it, K = 1, 2, ...

Every row is replicated over training: the scale's `seeds` models trained at the target give each K
its disjoint seed blocks (8 seeds: K=1 from each seed, K=2 from four pairs, K=4 from 0-3 and 4-7, K=8
once), and each row is the mean over its blocks."""

from __future__ import annotations

from robust_ensembles.tables.claims import ensemble_beats_members, growth_with_k
from robust_ensembles.tables.reports import Filled, autoattack_of, row_cells, seeds_of
from robust_ensembles.tables.seed_blocks import evaluate_blocks, mean_curve, member_records, seed_blocks
from robust_ensembles.tables.table_run import Needs, TableRun


def seeds(t: TableRun) -> int:
    """The models trained at the target that the rows' seed blocks are drawn from (at least the largest K)."""
    return max(int(t.s.get("seeds", 0)), max(int(k) for k in t.s.K_values))


def needs(t: TableRun) -> Needs:
    return Needs().add_seeds(t.spec.target_eps, seeds(t))


def fill(t: TableRun) -> Filled:
    rows, curves, records, by_k = [], {}, [], {}
    target, c = float(t.spec.target_eps), t.claims
    for k in t.s.K_values:
        replicates = evaluate_blocks(t, target, int(k), seeds(t) // int(k))
        records += replicates
        by_k[int(k)] = replicates
        rows.append({"models": k, **row_cells(t, replicates, list(t.spec.columns_eps)), "n": replicates[0]["n"],
                     "replicates": len(replicates), "seeds": seeds_of(replicates)})
        curves[f"K={k}"] = mean_curve(replicates)
    verdicts = ([growth_with_k(by_k, target, float(c.margin), float(c.level))]
                if len(by_k) >= 3 and 1 in by_k else [])
    for k, replicates in by_k.items():  # claim (4): every ensemble against the mean of its members
        if k > 1:
            blocks = seed_blocks(k, len(replicates))
            verdicts.append(ensemble_beats_members(replicates, member_records(t, target, blocks), float(c.level),
                                                   f"{k}x alpha={target:g}"))
    return Filled(rows, curves, autoattack=autoattack_of(records), claims=verdicts)
