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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the same weights file, no copy (the store replaces files by renaming, never in place)
    except OSError:
        shutil.copy2(src, dst)  # another filesystem


def scratch_store(source: Path, dest: Path, kinds: list[str]) -> int:
    """A store at `dest` holding `source`'s trained models (hard links of their files) and its records of
    `kinds`, and nothing else (no curve record unless asked): what the tables then compute is the evaluation
    alone. Returns the number of model entries."""
    dest.mkdir(parents=True)
    if (source / store.STORE_FILE).is_file():
        shutil.copy2(source / store.STORE_FILE, dest / store.STORE_FILE)
    entries = [e for e in store.entries(source) if (e / store.MARKER).is_file()]
    for entry in entries:
        shutil.copytree(entry, dest / entry.name, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".lock"))
    for kind in kinds:
        if (source / store.RECORDS / kind).is_dir():
            shutil.copytree(source / store.RECORDS / kind, dest / store.RECORDS / kind)
    return len(entries)


def record_seconds(root: Path, kind: str, since: float | None = None) -> tuple[int, float]:
    """How many records of `kind` the store holds (written after `since`, when given) and the sum of their
    own wall_s: the job-seconds that computed them."""
    n, seconds = 0, 0.0
    for path in (root / store.RECORDS / kind).glob("*.json"):
        if since is not None and path.stat().st_mtime < since:
            continue
        rec, _ = store.read_record(path)
        if rec is not None:
            n, seconds = n + 1, seconds + float(rec.get("wall_s") or 0.0)
    return n, seconds


def cell_changes(before: Path, after: Path) -> tuple[list[tuple[float, str]], int]:
    """Every numeric cell of the tables' csv files under `before` against the same cell under `after`: the
    changes, largest first, each with where it is, and how many cells were compared."""
    changes, compared = [], 0
    for path in sorted(before.glob("*.csv")):
        other = after / path.name
        if not other.is_file():
            continue
        rows_a, rows_b = (list(csv.DictReader(p.open())) for p in (path, other))
        for row_a, row_b in zip(rows_a, rows_b):
            label = next(iter(row_a.values()), "")
            for column, cell in row_a.items():
                a, b = NUMBER.match(cell or ""), NUMBER.match(row_b.get(column) or "")
                if a is None or b is None:
                    continue
                compared += 1
                delta = float(b.group(1)) - float(a.group(1))
                if delta:
                    changes.append((delta, f"{path.stem} / {label} / {column}: {a.group(1)} -> {b.group(1)}"))
    return sorted(changes, key=lambda c: -abs(c[0])), compared


def verdicts(reports: Path) -> dict[str, str]:
    """Every claim's verdict in the tables' <table>.claims.json under `reports`."""
    out = {}
    for path in sorted(reports.glob("*.claims.json")):
        for c in json.loads(path.read_text())["claims"]:
            out[f"{path.stem.split('.')[0]}: {c['claim']}"] = c["verdict"]
    return out


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
    from robust_ensembles.tables import driver

    b = cfg.bench.tables_eval
    source = Path(cfg.store.root).expanduser().resolve()
    if not any((e / store.MARKER).is_file() for e in store.entries(source)):
        raise ConfigError(f"bench.tables_eval: the store {source} holds no trained model; fill it first (make tables "
                          f"SCALE={b.scale}) or point paths.store_dir at one.")
    if len(b.settings) < 2:
        raise ConfigError(f"bench.tables_eval.settings has {len(b.settings)} entry; name at least two (the first is "
                          f"the baseline every other is compared with).")
    parent = Path(b.scratch_dir).expanduser() if b.scratch_dir else source.parent
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tables-eval-", dir=parent))
    walls, lines, reports = {}, [], {}
    kept = {kind: record_seconds(source, kind) for kind in b.keep_records}
    try:
        for name, overrides in b.settings.items():
            root, reports[name] = scratch / name / "store", scratch / name / "reports"
            models = scratch_store(source, root, list(b.keep_records))
            over = [*b.overrides, *overrides, f"paths.store_dir={root}", f"reports_dir={reports[name]}"]
            t0 = time.time()
            driver.run(str(b.table), str(b.scale), over, str(b.autoattack_column), sweeps_dir=b.sweeps_dir,
                       launcher=list(b.launcher), evaluate_in=str(b.evaluate_in), train=False)
            walls[name] = time.time() - t0
            curves = record_seconds(root, "curve")
            aa_new = record_seconds(root, "autoattack", since=t0)
            lines.append(f"| {name} | {' '.join(overrides)} | {walls[name]:.0f} | {walls[name] / walls[next(iter(walls))]:.2f} "
                         f"| {curves[0]} | {curves[1]:.0f} | {aa_new[0]} | {aa_new[1]:.0f} | {models} |")
            print(lines[-1], flush=True)
        first = next(iter(b.settings))
        for name in list(b.settings)[1:]:
            speedup = walls[first] / walls[name]
            rep.add(f"tables' evaluation wall time, {first} / {name}", (speedup, speedup, speedup),
                    f">= {b.min_speedup} (one run each, one after the other)", speedup >= b.min_speedup)
            changes, compared = cell_changes(reports[first] / str(b.scale), reports[name] / str(b.scale))
            largest = "; ".join(f"{d:+g} ({where})" for d, where in changes[:3]) or "none"
            rep.note(f"{name} against {first}: {len(changes)} of {compared} numeric table cells changed; the largest: "
                     f"{largest}")
            va, vb = verdicts(reports[first] / str(b.scale)), verdicts(reports[name] / str(b.scale))
            flipped = [f"{claim}: {va[claim]} -> {vb[claim]}" for claim in va if claim in vb and va[claim] != vb[claim]]
            rep.note(f"{name} against {first}: {len(flipped)} of {len(va)} verdicts changed" +
                     (": " + "; ".join(flipped) if flipped else ""))
        kept_text = ", ".join(f"{n} {kind} records ({s:.0f} job-s when computed)" for kind, (n, s) in kept.items())
        rep.note(f"each setting's run, from a store of the same trained models and {kept_text or 'no record'}; "
                 f"job-s: the sum of the records' own wall_s:\n\n"
                 "| setting | overrides | wall s | / first | curve records | their job-s | AutoAttack records computed "
                 "| their job-s | models |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(lines))
    finally:
        if not b.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return rep


def describe(cfg: DictConfig) -> str:
    b = cfg.bench.tables_eval
    return (f"table {b.table}, scale {b.scale}; settings {', '.join(b.settings)}, one after the other; AutoAttack "
            f"column {b.autoattack_column}; evaluate_in {b.evaluate_in}")
