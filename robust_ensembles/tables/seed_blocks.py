"""Rows replicated over training: a row of K-model ensembles is read from R disjoint seed blocks
(K=4 from seeds 0-3 and 4-7; K=1 from each seed), every block its own trained models, all on the same
test points. The tables show the mean over the blocks with the seeds' standard deviation, and the
claims compare blocks with `replicates.replicated_difference`, whose interval covers retraining.
"""

from __future__ import annotations

from robust_ensembles.evaluation.curves import Curve, curve_of
from robust_ensembles.tables.table_run import TableRun


def seed_blocks(K: int, replicates: int) -> list[list[int]]:
    """`replicates` disjoint blocks of K consecutive seeds: block b is seeds b*K .. b*K + K - 1."""
    if isinstance(K, bool) or int(K) < 1 or int(replicates) < 1:
        raise ValueError(f"seed blocks need K >= 1 and replicates >= 1 (got K={K}, replicates={replicates})")
    return [list(range(b * int(K), (b + 1) * int(K))) for b in range(int(replicates))]


def members_overrides(K: int, block: list[int]) -> list[str]:
    """The evaluate overrides that select this block: `K=` and, except for the first K seeds (the
    default, so the first block's records are the ones every table shares), `seeds=`."""
    return [f"K={K}"] + ([] if block == list(range(K)) else [f"seeds=[{','.join(map(str, block))}]"])


def ensure_seeds(t: TableRun, alpha: float, n: int) -> None:
    """Train the first n seeds at alpha that the store lacks (a choice made while the table fills, e.g.
    Table 1's alpha, can need replicates its `needs` could not name). Estimate mode trains nothing."""
    if t.planning:
        return
    jobs = t.untrained({float(alpha): int(n)})
    if jobs:
        t.trained += t.train(jobs, [])


def evaluate_blocks(t: TableRun, alpha: float, K: int, replicates: int, extra: list[str] | None = None,
                    autoattack: bool = True) -> list[dict]:
    """The records of the K-ensembles at alpha of `replicates` disjoint seed blocks (trained first where
    missing), each evaluated as the table's rows are."""
    ensure_seeds(t, alpha, int(K) * int(replicates))
    return [t.evaluate_row([f"alpha={alpha}", *members_overrides(int(K), block), *(extra or [])], autoattack=autoattack)
            for block in seed_blocks(K, replicates)]


CLEAN = ["evaluation.eps_grid=[0]", "evaluation.auc_eps=null"]  # a member's clean accuracy alone: no attack, seconds


def member_records(t: TableRun, alpha: float, blocks: list[list[int]]) -> list[list[dict]]:
    """Each block's members as single models, read on clean data only (claim 4 compares an ensemble with
    the mean of its members' clean accuracy): one record per seed, on the table's test points."""
    return [[t.evaluate_row([f"alpha={alpha}", *members_overrides(1, [s]), *CLEAN], autoattack=False) for s in block]
            for block in blocks]


def mean_curve(replicates: list[dict]):
    """The curve of a replicated row: each radius' accuracy averaged over its replicates (one: its own)."""
    if len(replicates) == 1:
        return curve_of(replicates[0])
    curves = [curve_of(r) for r in replicates]
    first = curves[0]
    return Curve(first.eps, [sum(c.cumulative[i] for c in curves) / len(curves) for i in range(len(first.eps))],
                 None, first.n)
