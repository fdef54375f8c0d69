"""The paper's tables, one module each, filled by one generic driver.

A table is `sweeps/<name>.yaml` (caption, target eps, per scale: experiment preset and rows) plus
a module (`module:` in that YAML; default `robust_ensembles.paper_tables.<name>`) with two functions:

    needs(t: driver.TableRun) -> driver.Needs   # seeds per alpha, composites: what the store must hold
    fill(t: driver.TableRun) -> reports.Filled  # rows, curves and footer notes, from t.evaluate_row(...)

`driver.run` trains what the store lacks (Hydra multiruns, so any launcher applies), fills the
table from stored or new evaluation records, and writes `reports/<scale>/<name>.{md,csv,tex,png}`.
"""
