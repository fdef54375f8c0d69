"""The paper's tables, one module each, filled by one generic driver.

A table is `sweeps/<name>.yaml` (caption, target eps, per scale: rows and replicates) plus a module
(`module:` in that YAML; default `robust_ensembles.tables.<name>`) with two functions:

    needs(t: TableRun) -> Needs      # seeds per alpha, composites: what the store must hold
    fill(t: TableRun) -> Filled      # rows, curves and footer notes, from t.evaluate_row(...)

The rooms of this package:
* `table_run`: the table object (`TableRun`, `Needs`) and the evaluator its rows go to;
* `driver`: `run`, which trains what the store lacks (Hydra multiruns, so any launcher applies), fills
  each table from stored or new evaluation records and writes `reports/<scale>/<name>.{md,csv,tex,png}`;
* `estimate`: what is missing and its cost (`estimate=true`), through the `Planner` evaluator;
* `launch`: the multiruns as subprocesses; `evaluation_jobs` (and its job, `evaluate_row`): the missing
  records as Hydra jobs;
* `claims`, `seed_blocks`, `reports`: the paper's claims as verdicts, replicated rows, the written reports;
* `table1`, `table2_size`, `table2_equivalence`: the three tables.
"""
