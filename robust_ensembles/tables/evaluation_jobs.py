"""The tables' missing records computed as Hydra jobs (`evaluate_in=jobs`): one job per missing curve
(with its AutoAttack record), `python -m robust_ensembles.tables.evaluate_row -m`, through the tables'
launcher, before the tables are filled from the store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from robust_ensembles import store
from robust_ensembles.core import atomic_files
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.records import evaluate
from robust_ensembles.evaluation.request import from_config
from robust_ensembles.tables import estimate
from robust_ensembles.tables.estimate import SPLITS, evaluation_job_list
from robust_ensembles.tables.launch import multirun
from robust_ensembles.tables.table_run import ROW_CONFIG

if TYPE_CHECKING:
    from robust_ensembles.tables.table_run import TableRun

log = logging.getLogger(__name__)


def missing_rows(runs: list[TableRun], split: str,
                 plan_of: Callable[[TableRun], list[dict]] | None = None) -> list[list[str]]:
    """The override lists of the evaluation jobs these tables lack on `split`, in launch order."""
    plan_of = plan_of or estimate.evaluation_plan
    return [j["overrides"] for j in evaluation_job_list([p for t in runs for p in plan_of(t)], split)]


def evaluation_jobs(runs: list[TableRun], launch=None, max_rounds: int = 10, before_test=None,
                    plan_of: Callable[[TableRun], list[dict]] | None = None) -> int:
    """Compute the records these tables lack as Hydra jobs (`python -m robust_ensembles.tables.evaluate_row -m`,
    one job per curve with its AutoAttack record, through the tables' launcher), before they are filled
    from the store. Validation records first, in rounds until none is missing (a choice such as Table
    1's alpha reads them, and each round's plan makes the choice with the records the last one stored),
    then (after `before_test`: e.g. training what the choice needs) the test split, planned with the choice
    made; each multirun's jobs the longest first (`evaluation_job_list`). A job that dies leaves no record; the next run launches it again. Returns
    the number of jobs launched."""
    launch = launch or (lambda rows_file, n, t: multirun(
        "robust_ensembles.tables.evaluate_row", [f"rows_file={rows_file}", "row=" + ",".join(map(str, range(n))),
                                          *[o for o in t.user_overrides if o.startswith("paths.")], *t.launcher]))
    launched = 0
    for split in SPLITS:
        if split == "test" and before_test is not None:
            before_test()  # e.g. train what the choices made on validation need (Table 1's chosen replicates)
        for _ in range(max_rounds if split == "val" else 1):
            listed = missing_rows(runs, split, plan_of)  # the longest first
            if not listed:
                break
            root = Path(runs[0].evaluate_cfg.store.root).expanduser().resolve()
            rows_file = root / "jobs" / f"evaluate-{store.key_of({'rows': listed})}.json"
            atomic_files.write_atomic(rows_file, json.dumps(listed, indent=1) + "\n")
            log.info("evaluation jobs (%s split): %d -> %s", split, len(listed), rows_file)
            launch(rows_file, len(listed), runs[0])
            launched += len(listed)
    left = {s: len(missing_rows(runs, s, plan_of)) for s in SPLITS}
    if any(left.values()):
        log.warning("after the evaluation jobs the store still lacks %s records; the tables compute them here", left)
    return launched


def evaluate_listed_row(rows_file: str | Path, row: int) -> dict:
    """One evaluation job: the `row`-th override list of `rows_file` (written by `evaluation_jobs`), composed
    on the tables' row config and evaluated into the store."""
    path = Path(rows_file)
    if not path.is_file():
        raise ConfigError(f"rows_file={path} does not exist; the table driver writes it (evaluate_in=jobs).")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"rows_file={path} is not valid JSON ({e}); rerun the table with evaluate_in=jobs to "
                          f"write it again.") from None
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(rows):
        raise ConfigError(f"row={row!r} must be an index into the {len(rows)} rows of {path}.")
    return evaluate(from_config(compose_config(ROW_CONFIG, rows[row])))
