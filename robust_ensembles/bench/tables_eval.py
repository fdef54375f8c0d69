"""`bench.mode=tables_eval` (`make bench-tables-eval`): the tables' whole evaluation, once per evaluation setting,
one after the other on the same trained models: wall time, job-seconds, and what changed in the tables."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from robust_ensembles import store
from robust_ensembles.bench.harness import Report
from robust_ensembles.core.errors import ConfigError

NUMBER = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)")  # a cell's value: "34.13 ± 1.50 (sd 0.34)" -> 34.13


def scratch_store(source: Path, dest: Path, kinds: list[str]) -> tuple[int, int]:
    """A store at `dest` holding `source`'s trained models (hard links of their files) and its records of
    `kinds`, and nothing else (no curve record unless asked): what the tables then compute is the evaluation
    alone. Returns the number of model entries and of files copied rather than linked (another filesystem)."""
    copied = []

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)  # the same file, no copy (the store replaces files by renaming, never in place)
        except OSError:
            shutil.copy2(src, dst)
            copied.append(dst)

    dest.mkdir(parents=True)
    if (source / store.STORE_FILE).is_file():
        shutil.copy2(source / store.STORE_FILE, dest / store.STORE_FILE)
    entries = [e for e in store.entries(source) if (e / store.MARKER).is_file()]
    for entry in entries:  # a lock file stays behind: a linked one would share its flock with the source's
        shutil.copytree(entry, dest / entry.name, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".lock"))
    for kind in kinds:
        if (source / store.RECORDS / kind).is_dir():
            shutil.copytree(source / store.RECORDS / kind, dest / store.RECORDS / kind)
    return len(entries), len(copied)


def record_seconds(root: Path, kind: str, since: float | None = None) -> tuple[int, float]:
    """How many records of `kind` the store holds (written after `since`, when given; any semantics version)
    and the sum of their own wall_s: the job-seconds that computed them."""
    n, seconds = 0, 0.0
    for path in (root / store.RECORDS / kind).glob("*.json"):
        if since is not None and path.stat().st_mtime < since:
            continue
        rec, _ = store.read_record(path)
        if rec is not None:
            n, seconds = n + 1, seconds + float(rec.get("wall_s") or 0.0)
    return n, seconds


def cell_changes(before: Path, after: Path) -> tuple[list[tuple[float, str, str]], int, list[str]]:
    """Every numeric cell of the tables' csv files under `before` against the same cell (same table, row
    position and column) under `after`: the changes, largest first, each with its column and where it is;
    how many cells were compared; and what could not be paired (tables or rows in one run only, rows whose
    label differs: e.g. a choice made on validation that came out otherwise)."""
    changes, compared, unpaired = [], 0, []

    def rows(path: Path) -> list[dict]:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    for path in sorted(before.glob("*.csv")):
        other = after / path.name
        if not other.is_file():
            unpaired.append(f"{path.stem}: only in the first run")
            continue
        rows_a, rows_b = rows(path), rows(other)
        if len(rows_a) != len(rows_b):
            unpaired.append(f"{path.stem}: {len(rows_a)} rows, then {len(rows_b)}")
        for row_a, row_b in zip(rows_a, rows_b):
            label_a, label_b = next(iter(row_a.values()), ""), next(iter(row_b.values()), "")
            if label_a != label_b:
                unpaired.append(f"{path.stem}: row '{label_a}' is '{label_b}' in the other run")
            for column, cell in row_a.items():
                a, b = NUMBER.match(cell or ""), NUMBER.match(row_b.get(column) or "")
                if a is None or b is None:
                    continue
                compared += 1
                delta = float(b.group(1)) - float(a.group(1))
                if delta:
                    changes.append((delta, column, f"{path.stem} / {label_a} / {column}: {a.group(1)} -> {b.group(1)}"))
    return sorted(changes, key=lambda c: -abs(c[0])), compared, unpaired


def verdicts(reports: Path) -> dict[str, tuple[str, str]]:
    """Every claim's (text, verdict) in the tables' <table>.claims.json under `reports`, keyed by its table and
    its position there: a claim whose text names a choice that came out otherwise is still paired."""
    out = {}
    for path in sorted(reports.glob("*.claims.json")):
        for i, c in enumerate(json.loads(path.read_text())["claims"]):
            out[f"{path.name.split('.')[0]} #{i + 1}"] = (c["claim"], c["verdict"])
    return out


def compare(first: str, name: str, before: Path, after: Path) -> list[str]:
    """The notes that say how the tables under `after` differ from those under `before`: every changed cell
    (accuracies in points, AUC on its own scale), what could not be paired, every verdict that changed."""
    changes, compared, unpaired = cell_changes(before, after)
    auc = lambda column: column.startswith("AUC")
    largest = {kind: next((c for c in changes if auc(c[1]) == (kind == "AUC")), None) for kind in ("accuracy", "AUC")}
    notes = [f"{name} against {first}: {len(changes)} of {compared} numeric table cells changed; the largest "
             + "; ".join(f"{kind} cell {c[0]:+g} ({c[2]})" for kind, c in largest.items() if c) if changes else
             f"{name} against {first}: none of {compared} numeric table cells changed"]
    if changes:
        notes.append(f"every cell that changed ({name} - {first}): " + "; ".join(f"{d:+g} {where}" for d, _, where in changes))
    if unpaired:
        notes.append(f"{name} against {first}, not paired: " + "; ".join(unpaired))
    va, vb = verdicts(before), verdicts(after)
    flipped = [f"{k} {va[k][0]}: {va[k][1]} -> {vb[k][1]}" + (f" (now: {vb[k][0]})" if vb[k][0] != va[k][0] else "")
               for k in va if k in vb and va[k][1] != vb[k][1]]
    alone = sorted(set(va) ^ set(vb))
    notes.append(f"{name} against {first}: {len(flipped)} of {len(va)} verdicts changed"
                 + (": " + "; ".join(flipped) if flipped else "")
                 + (f"; claims in one run only: {', '.join(alone)}" if alone else ""))
    return notes


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """The tables' whole evaluation for each entry of `settings` (`make bench-tables-eval`; docs/evaluation.md).

    For each setting (overrides of every row's evaluation, e.g. `evaluation.search=scan`), one after the
    other: a scratch store holding the trained models of the store (`paths.store_dir`; hard links, nothing
    copied) and its records of `keep_records` (the AutoAttack records: their key holds no evaluation-attack
    setting), on which the tables are filled as `make tables` fills them (`launcher`, `evaluate_in`), training
    nothing (`train=false`: a model missing is one error); its reports go to the scratch folder. Reported: the
    wall time of each run and its ratio to the first setting's, the curve records each computed and their
    job-seconds (each record's own wall_s), the AutoAttack records' job-seconds (computed, or kept with what
    they cost when computed), and every table cell and verdict that differs from the first setting's."""
    from robust_ensembles.evaluation.records import AUTOATTACK, CURVE
    from robust_ensembles.tables import driver

    b = cfg.bench.tables_eval
    source = Path(cfg.store.root).expanduser().resolve()
    if not any((e / store.MARKER).is_file() for e in store.entries(source)):
        raise ConfigError(f"bench.tables_eval: the store {source} holds no trained model; fill it first (make tables "
                          f"SCALE={b.scale}) or point paths.store_dir at one.")
    if len(b.settings) < 2:
        raise ConfigError(f"bench.tables_eval.settings has {len(b.settings)} entry; name at least two (the first is "
                          f"the baseline every other is compared with).")
    parent = (Path(b.scratch_dir).expanduser() if b.scratch_dir else source.parent).resolve()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".tables-eval-", dir=parent))
    except OSError as e:
        raise ConfigError(f"bench.tables_eval.scratch_dir={parent}: cannot make a folder there ({e.strerror}); name "
                          f"a writable one on the store's filesystem.") from None
    # the bench's own folders (data, caches, logs) reach the tables; the store and the reports are the scratch ones
    paths = [f"paths.{k}={cfg.paths[k]}" for k in ("root_dir", "data_dir", "cache_dir", "shared_data", "log_dir")]
    kept = {kind: record_seconds(source, kind) for kind in b.keep_records}
    kept_text = ", ".join(f"{n} {kind} records ({s:.0f} job-s when computed)" for kind, (n, s) in kept.items())
    rep.note(f"each setting's run starts from a store of the same trained models and {kept_text or 'no record'}, "
             f"one after the other (the first also warms the page cache for the rest); job-s: the sum of the "
             f"records' own wall_s")
    walls, reports, failed = {}, {}, True
    try:
        for name, overrides in b.settings.items():
            root, reports[name] = scratch / name / "store", scratch / name / "reports"
            models, copied = scratch_store(source, root, list(b.keep_records))
            over = [*paths, *b.overrides, *overrides, f"paths.store_dir={root}", f"reports_dir={reports[name]}"]
            t0 = time.time()
            driver.run(str(b.table), str(b.scale), over, str(b.autoattack_column), sweeps_dir=b.sweeps_dir,
                       launcher=list(b.launcher), evaluate_in=str(b.evaluate_in), train=False)
            walls[name] = time.time() - t0
            curves, aa_new = record_seconds(root, CURVE), record_seconds(root, AUTOATTACK, since=t0)
            rep.note(f"{name} ({' '.join(overrides)}): wall {walls[name]:.0f} s ({walls[name] / walls[next(iter(walls))]:.2f}"
                     f"x the first); {curves[0]} curve records computed, {curves[1]:.0f} job-s; {aa_new[0]} AutoAttack "
                     f"records computed, {aa_new[1]:.0f} job-s; {models} models" + (f" ({copied} files copied, "
                     f"not linked: another filesystem)" if copied else ""))
        first = next(iter(b.settings))
        for name in list(b.settings)[1:]:
            speedup = walls[first] / walls[name]
            rep.add(f"tables' evaluation wall time, {first} / {name}", (speedup, speedup, speedup),
                    f">= {b.min_speedup} (one run each, one after the other)", speedup >= b.min_speedup)
            for line in compare(first, name, reports[first] / str(b.scale), reports[name] / str(b.scale)):
                rep.note(line)
        failed = False
    finally:
        if failed:  # what the runs before the failure computed stays, to be read or reused
            print(f"bench.tables_eval: stopped; the scratch stores and reports stay in {scratch}", flush=True)
        elif not b.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return rep


def describe(cfg: DictConfig) -> str:
    b = cfg.bench.tables_eval
    return (f"table {b.table}, scale {b.scale}; settings {', '.join(b.settings)}, one after the other; AutoAttack "
            f"column {b.autoattack_column}; evaluate_in {b.evaluate_in}")
