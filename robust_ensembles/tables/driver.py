"""The table driver: read each table's sweep, train what the store lacks (the union of the tables' needs,
each model once), compute the missing records, fill each table and write its reports; or, with
`estimate`, print what is missing and its cost.

    python -m robust_ensembles.tables table=table1 scale=cpu            # the entry point
    python -m robust_ensembles.tables table=all scale=cpu estimate=true  # what is missing, and its cost

Overrides reach every train, finetune and evaluate call; `hydra/launcher=...` and
`hydra.launcher.*` overrides reach the training multiruns.
"""

from __future__ import annotations

import time
from pathlib import Path

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.tables.estimate import (estimate_evaluation, estimate_table, estimate_training, evaluation_plan,
                                              total_text, total_unit)
from robust_ensembles.tables.evaluation_jobs import evaluation_jobs
from robust_ensembles.tables.launch import parallel_jobs
from robust_ensembles.tables.reports import write_reports
from robust_ensembles.tables.table_run import TableRun

EVALUATE_IN = ("process", "jobs")  # every row evaluated in this process | missing records computed as Hydra jobs first


def train_union(runs: list[TableRun]) -> list[str]:
    """Train what any of the tables lacks, each model once (one Hydra multirun per seed list and
    training setup: tables that share a setup share their models)."""
    by_setup: dict[tuple, list[TableRun]] = {}
    for t in runs:
        by_setup.setdefault(tuple(t.base), []).append(t)
    trained = []
    for same in by_setup.values():
        jobs, comps = set(), set()
        for t in same:
            j, c = t.missing()
            jobs.update(j)
            comps.update(c)
        trained += same[0].train(sorted(jobs), sorted(comps), needed_by=", ".join(t.table for t in same))
    return trained


def tables_in(sweeps_dir: str | Path) -> list[str]:
    return sorted(p.stem for p in Path(sweeps_dir).glob("*.yaml"))


def run(table: str, scale: str, overrides: list[str], autoattack: str = "run", estimate: bool = False,
        sweeps_dir: str | Path = PROJECT_ROOT / "sweeps", launcher: list[str] | None = None,
        evaluate_in: str = "process", train: bool = True) -> list[dict]:
    """Fill `table` (or every table in sweeps_dir for `all`); returns the reports' paths per table.
    `evaluate_in=jobs` computes the missing records as Hydra jobs first (`evaluation_jobs`); `train=False`
    trains nothing: a model the tables need and the store lacks is one error."""
    if evaluate_in not in EVALUATE_IN:
        raise ConfigError(f"evaluate_in={evaluate_in} is unknown; use one of {list(EVALUATE_IN)}.")
    names = tables_in(sweeps_dir) if table == "all" else [table]
    runs = [TableRun(name, scale, overrides, autoattack, sweeps_dir, launcher, may_train=train) for name in names]
    parallel = parallel_jobs(runs[0].launcher)  # also checks the launcher composes before anything runs
    if estimate:  # the jobs' sums of seconds, and their wall time with the jobs run at once
        spread = {"train_jobs": parallel, "evaluate_jobs": parallel if evaluate_in == "jobs" else 1}
        missing = [t.missing(with_later=True) for t in runs]
        if not train:  # what the run would refuse (the models the tables need now, not those a later choice may)
            for t in runs:
                t.refuse_training(*t.missing())
        plans = [evaluation_plan(t) for t in runs]  # each computed once: the union below reuses them
        for t, m, plan in zip(runs, missing, plans):
            print(f"{t.table} ({scale}): {estimate_table(t, **spread, missing=m, plan=plan)}")
        if len(runs) > 1:  # tables share models and records: the union is what `all` trains and evaluates
            plan = [p for table_plan in plans for p in table_plan]
            jobs = sorted(set().union(*(set(j) for j, _ in missing)))
            comps = sorted(set().union(*(set(c) for _, c in missing)))
            train, t_s = estimate_training(runs[0], jobs, comps, what="distinct training jobs",
                                                   slots=spread["train_jobs"])
            evaluation, e_s = estimate_evaluation(runs[0], plan, slots=spread["evaluate_jobs"])
            print(f"all ({scale}): {train}; {evaluation}"
                  f"{total_text(t_s, e_s, **spread, unit=total_unit(train, t_s, evaluation, e_s))}")
        return []
    start = time.perf_counter()
    if len(runs) > 1:
        trained = train_union(runs)
        print(f"all tables: trained this run: {len(trained)} ({', '.join(trained) or 'nothing'}); "
              f"wall {time.perf_counter() - start:.0f} s", flush=True)
    if evaluate_in == "jobs":
        for t in runs:
            t.train_missing()
        jobs_start = time.perf_counter()
        n = evaluation_jobs(runs, before_test=lambda: [t.train_missing() for t in runs])
        print(f"evaluation jobs: {n} launched; wall {time.perf_counter() - jobs_start:.0f} s", flush=True)
    written = []
    for t in runs:
        t_start = time.perf_counter()
        t.train_missing()
        paths = write_reports(t, t.fill(), time.perf_counter() - t_start)
        print(paths["md"].read_text())
        print(f"{t.table}: trained this run: {len(t.trained)} ({', '.join(t.trained) or 'nothing'}); "
              f"wall {time.perf_counter() - t_start:.0f} s; reports: {', '.join(str(p) for p in paths.values())}",
              flush=True)
        written.append(paths)
    print(f"done: {', '.join(names)} in {time.perf_counter() - start:.0f} s", flush=True)
    return written
