"""Table 2 (left): natural and robust accuracy at the target eps of K-ensembles trained at it, K = 1, 2, ..."""

from __future__ import annotations

from robust_ensembles.claims import growth_with_k
from robust_ensembles.curves import curve_of
from robust_ensembles.paper_tables.driver import Needs, TableRun
from robust_ensembles.paper_tables.reports import Filled, autoattack_of, row_cells, seeds_of


def needs(t: TableRun) -> Needs:
    return Needs().add_seeds(t.spec.target_eps, max(t.s.K_values))


def fill(t: TableRun) -> Filled:
    rows, curves, records, by_k = [], {}, [], {}
    for k in t.s.K_values:
        record = t.evaluate_row([f"alpha={t.spec.target_eps}", f"K={k}"])
        records.append(record)
        by_k[int(k)] = record
        rows.append({"models": k, **row_cells(t, record, list(t.spec.columns_eps)), "n": record["n"],
                     "seeds": seeds_of(record)})
        curves[f"K={k}"] = curve_of(record)
    c = t.claims
    verdicts = ([growth_with_k(by_k, float(t.spec.target_eps), float(c.margin), float(c.level))]
                if len(by_k) >= 3 and 1 in by_k else [])
    return Filled(rows, curves, autoattack=autoattack_of(records), claims=verdicts)
