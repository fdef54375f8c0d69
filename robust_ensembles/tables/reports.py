"""A filled table's reports: Markdown, CSV, LaTeX, a PNG of every row's curve, the footer notes,
and the same table in wandb."""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.evaluation import outcomes
from robust_ensembles.evaluation.curves import curve_of, describe_search, plot_curves, standard_error
from robust_ensembles.tables.claims import Verdict, seeds_text, settings_name

if TYPE_CHECKING:
    from robust_ensembles.tables.table_run import TableRun


@dataclass
class Filled:
    """A filled table: its rows, every row's curve for the plot, footer notes, the AutoAttack
    records its rows show, reference points to plot beside the curves (label -> [(eps, acc, se)]), and
    the verdicts of the paper's claims this table tests."""
    rows: list[dict]
    curves: dict
    notes: list[str] = field(default_factory=list)
    autoattack: list[dict] = field(default_factory=list)
    points: dict = field(default_factory=dict)
    claims: list[Verdict] = field(default_factory=list)


def fmt_acc(acc: float | None, se: float | None = None) -> str:
    if acc is None:
        return "-"
    return f"{100 * acc:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")


def seeds_of(record: dict | list[dict]) -> str:
    """The seeds a row used: '0,1,2,3' for one record; each replicate's seed block ('0-3; 4-7') for several."""
    if isinstance(record, dict):
        return ",".join(str(m["seed"]) for m in record["members"])
    return seeds_text(record) if len(record) > 1 else seeds_of(record[0])


def autoattack_of(records: list[dict]) -> list[dict]:
    return [r["autoattack"] for r in records if r.get("autoattack")]


def worst_case_acc(record: dict, eps: float, procedures: set | None = None) -> tuple[float, int]:
    """Accuracy at eps under the worst case per point over every attack run on it (or those of `procedures`),
    and n."""
    robust = outcomes.worst_case(record, eps, procedures)
    return robust.float().mean().item(), len(robust)


def row_numbers(t: TableRun, record: dict, columns_eps: list[float],
                procedures: dict[float, set] | None = None) -> dict[str, tuple[float | None, int | None, str]]:
    """A row's numbers, name -> (value, n of its standard error or None, kind: acc | auc | gap | flagged acc):
    accuracy at each column eps (per point the worst case over every attack run on it), the AUC (the
    evaluation attack's curve), and the AutoAttack columns: AutoAttack and the evaluation attack each on
    their own on the same points, their worst case, and the gap (value None: pending)."""
    numbers = {}
    for e in columns_eps:
        acc, n = worst_case_acc(record, e, None if procedures is None else procedures[e])
        numbers[f"eps={e:g}" if e else "natural"] = (acc, n, "acc")
    if t.spec.get("auc_eps"):
        numbers[f"AUC({t.spec.auc_eps:g})"] = (curve_of(record).auc(t.spec.auc_eps), None, "auc")
    if "autoattack" in record:
        eps = f"{t.spec.target_eps:g}"
        names = [f"AA eps={eps}", f"attack eps={eps} (AA points)", f"worst case eps={eps} (AA points)", "attack - AA"]
        a = outcomes.autoattack_columns(record) if record["autoattack"] is not None else None
        if a is None:  # autoattack_column=stored, and no stored record yet
            numbers.update({name: (None, None, "acc") for name in names})
        else:
            numbers[names[0]] = (a["autoattack"], a["n"], "aa")
            numbers[names[1]] = (a["attack"], a["n"], "acc")
            numbers[names[2]] = (a["worst"], a["n"], "acc")
            numbers[names[3]] = (a["attack"] - a["autoattack"], None, "gap")
    return numbers


def format_numbers(t: TableRun, replicates: list[dict]) -> dict[str, str]:
    """Cells from one row's numbers per replicate (`row_numbers` of each): the mean over replicates, ± one
    binomial standard error of a cell, and with several replicates the standard deviation of the replicates'
    values ('sd'); 'pending' where a replicate has no value yet."""
    cells = {}
    for name, (_, n, kind) in replicates[0].items():
        values = [r[name][0] for r in replicates]
        if any(v is None for v in values):
            cells[name] = "pending"
            continue
        mean = statistics.fmean(values)
        if kind == "auc":
            text = f"{mean:.3f}"
        elif kind == "gap":
            text = f"{100 * mean:+.2f}"
        else:
            text = fmt_acc(mean, standard_error(mean, n))
        if len(values) > 1:
            sd = statistics.stdev(values)
            text += f" (sd {sd:.3f})" if kind == "auc" else f" (sd {100 * sd:.2f})"
        if kind == "aa":
            gaps = [r["attack - AA"][0] for r in replicates]
            text += " ⚠" if statistics.fmean(gaps) > t.flag_gap else ""
        cells[name] = text
    return cells


def row_cells(t: TableRun, record: dict | list[dict], columns_eps: list[float]) -> dict:
    """A row's cells (`row_numbers` formatted): of one record, or the mean over replicate records (single
    models of several seeds, K-ensembles of disjoint seed blocks) with the seeds' standard deviation
    beside the test-point standard error; and the attacks run on its first record later."""
    records = [record] if isinstance(record, dict) else list(record)
    # replicates read under the same attacks: a per-point attack record counts only where every replicate has
    # one of that procedure (a block shared with another table may carry attacks run on it later)
    on_each = lambda e: [{outcomes.procedure(a) for a in outcomes.applicable(r, e)} for r in records]
    common = None if len(records) == 1 else {e: set.intersection(*on_each(e)) for e in columns_eps}
    cells = format_numbers(t, [row_numbers(t, r, columns_eps, common) for r in records])
    if common is not None:  # say what the cells leave out, rather than drop it silently
        left = sorted({p for e in columns_eps for p in set.union(*on_each(e)) - common[e]})
        if left:
            cells["attacks not run on every replicate (left out of the cells)"] = "; ".join(
                f"{settings_name(p[2])} at eps={p[0]:g} on {p[1]} points" for p in left)
    first = records[0]
    column = first.get("autoattack")
    kept = set().union(*common.values()) if common is not None else None
    others = [a for a in outcomes.point_attacks(first) if a is not column  # point_attacks lists the column once
              and (kept is None or outcomes.procedure(a) in kept)]
    if others:  # attacks run on this model later: in the worst case above, and each one's own number here
        cells["other attacks (own accuracy)"] = "; ".join(
            f"{settings_name(outcomes.procedure(a)[2])} at eps={a['eps']:g} on {a['n']} points: "
            f"{100 * sum(a['autoattack_correct']) / a['n']:.2f}" for a in sorted(others, key=outcomes.procedure))
    return cells


def write_table(rows: list[dict], columns: list[str], out_dir: Path, name: str, caption: str,
                footer: list[str]) -> dict[str, Path]:
    """rows: dicts with the `columns` keys (strings already formatted). Writes .md, .csv and .tex."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"**{caption}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    md += [""] + [f"- {line}" for line in footer]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    esc = lambda s: (str(s).replace("±", r"$\pm$").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")
                     .replace(">", r"$>$").replace("<", r"$<$"))
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
           " & ".join(esc(c) for c in columns) + r" \\", r"\midrule"]
    tex += [" & ".join(esc(r.get(c, "")) for c in columns) + r" \\" for r in rows]
    tex += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}"]
    paths = {"md": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv", "tex": out_dir / f"{name}.tex"}
    paths["md"].write_text("\n".join(md) + "\n")
    paths["csv"].write_text(buf.getvalue())
    paths["tex"].write_text("\n".join(tex) + "\n")
    return paths


def write_reports(t: TableRun, filled: Filled, wall_s: float) -> dict:
    out = Path(t.evaluate_cfg.reports_dir) / t.scale
    rows = filled.rows
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if t.scale == "paper" and t.s.get("paper_numbers"):
        for r in rows:
            r["paper"] = t.s.paper_numbers.get(str(next(iter(r.values()))), "-")
        columns.append("paper")
    footer = [t.spec.caption_note] if t.spec.get("caption_note") else []
    footer += [f"scale: {t.scale} ({t.s.get('shrunk', 'the paper setup')})", *filled.notes,
               *autoattack_notes(t, filled.autoattack),
               f"accuracies in %, ± one binomial standard error (for one cell; comparisons of two rows use the paired "
               f"intervals of the claims below); a point counts as robust at eps only if no attack run on it at a radius "
               f"<= eps flipped it: the evaluation attack ({instantiate(t.evaluate_cfg.evaluation.attack)!r}) "
               f"{describe_search(t.evaluate_cfg.evaluation.search, t.evaluate_cfg.evaluation.first_order_step)}, and AutoAttack (and any attack run on the model later, 'other attacks') on its "
               f"points at eps >= its radius; 'attack - AA' is the "
               f"evaluation attack's accuracy minus AutoAttack's on the same points, ⚠ where it exceeds "
               f"{100 * t.flag_gap:g} point(s)",
               *[f"claim {v.line()}" for v in filled.claims],
               f"written {time.strftime('%Y-%m-%d %H:%M')}{provenance(written_by())} in {wall_s / 60:.1f} min"]
    paths = write_table(rows, columns, out, t.table, t.spec.caption, footer)
    paths.update(write_claims(t, filled.claims, out))
    png = out / f"{t.table}.png"
    plot_curves(filled.curves, png, f"{t.table} ({t.scale})", points=filled.points)
    paths["png"] = png
    log_wandb(t, rows, columns, png, filled.claims)
    return paths


def autoattack_notes(t: TableRun, recs: list[dict]) -> list[str]:
    if t.autoattack == "off":
        return ["AutoAttack column: not computed (autoattack_column=off)"]
    if not recs:
        return ["AutoAttack column: pending (no stored record; run the target with AUTOATTACK=run)"]
    seconds: dict[str, float] = {}  # device -> wall time of the records computed there
    for r in recs:
        seconds[r.get("device", "?")] = seconds.get(r.get("device", "?"), 0.0) + r.get("wall_s", 0.0)
    attack = instantiate(t.evaluate_cfg.evaluation.attack)  # its outcome on AutoAttack's points comes from the curves
    return [f"AutoAttack column: {settings_name(outcomes.procedure(recs[0])[2])} (L2) and {attack!r} on the same first "
            f"{recs[0]['n']} test points at eps={recs[0]['eps']:g}; this table's {len(recs)} records computed on "
            + ", ".join(f"{d} ({s / 60:.1f} min)" for d, s in sorted(seconds.items()))]


CODE_PATHS = ("robust_ensembles", "conf", "sweeps", "scripts", "pyproject.toml", "Makefile")  # what a report's numbers are made by


def written_by() -> dict:
    """The commit the reports are written from and whether the code was as committed ("clean": no change and no
    new file among what makes the numbers, CODE_PATHS; ignored files aside, and docs/ and reports/, which writing
    measurements changes, not counted); commit None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS],
                                 cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "clean": None}
    if head.returncode != 0 or changed.returncode != 0:
        return {"commit": None, "clean": None}
    return {"commit": head.stdout.strip(), "clean": not changed.stdout.strip()}


def provenance(doc: dict) -> str:
    """'at commit 0123abcd4567 (clean tree)' of a claims document, or nothing where it names no commit."""
    if not doc.get("commit"):
        return ""
    return f" at commit {doc['commit']} ({'clean tree' if doc.get('clean') else 'with uncommitted changes to the code'})"


def write_claims(t: TableRun, verdicts: list[Verdict], out: Path) -> dict[str, Path]:
    """This table's verdicts as <table>.claims.json, and claims.md regenerated from every table's json
    in reports/<scale>/ (each with the command that produced it)."""
    path = out / f"{t.table}.claims.json"
    if not verdicts:
        path.unlink(missing_ok=True)  # a table that no longer tests a claim leaves none behind in claims.md
    else:
        doc = {"table": t.table, "scale": t.scale, "command": t.command(), "written": time.strftime("%Y-%m-%d %H:%M"),
               **written_by(), "claims": [v.to_dict() for v in verdicts]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return {"claims": write_claims_md(out, t.scale), **({"claims_json": path} if verdicts else {})}


def write_claims_md(out: Path, scale: str) -> Path:
    """claims.md of reports/<scale>/ (`out`) from every table's <table>.claims.json there."""
    lines = [f"# The paper's claims at scale {scale}: verdicts written by the code", "",
             "Each verdict compares two models on the same test points (paired), each point's outcome the worst "
             "case over every attack run on it; `holds`, `fails` or `inconclusive at this n` as defined in "
             "`robust_ensembles/tables/claims.py`. Regenerated whenever a table is written. A test-point interval covers "
             "the choice of test points for the models that were trained, not their training: the same recipe "
             "retrained (other seeds, threads or machine) moves the differences as well.", "",
             "Where a row has several seed replicates (single models of several seeds, ensembles of disjoint seed "
             "blocks), an interval 'over seeds and points' covers retraining too (`robust_ensembles/stats/replicates.py`, "
             "docs/statistics.md); the test-point interval is given beside it. A side with one replicate leaves the "
             "seed variance unknown, and the verdict says that its interval covers the test points only. "
             "Equivalence verdicts (saturation, the 2*alpha band) read the two one-sided tests' 90 % interval. A claim "
             "with several parts holds only if every part holds and fails if any part fails (an intersection-union "
             "test: its chance of a wrong 'holds' stays at most 5 %, while a wrong 'fails' can grow up to the sum "
             "over its parts). Claim (3) is judged per alpha: over five alphas whose true equivalent eps all lay "
             "just outside the band, the chance that at least one would wrongly read 'holds' is at most 5 x 5 % = "
             "25 % (the verdicts share models and points, so not 1 - 0.95^5); read the five verdicts as five "
             "separate findings, not as one.", ""]
    for p in sorted(out.glob("*.claims.json")):
        d = json.loads(p.read_text())
        lines += [f"## {d['table']}", "", f"`{d['command']}` (written {d['written']}{provenance(d)})", ""]
        lines += [f"- **{c['verdict']}**: {c['claim']}. {c['detail']}" for c in d["claims"]] + [""]
    md = out / "claims.md"
    md.write_text("\n".join(lines))
    return md


def log_wandb(t: TableRun, rows, columns, png, verdicts: list[Verdict] = ()) -> None:
    cfg = t.evaluate_cfg
    if not cfg.get("logger") or "Wandb" not in cfg.logger._target_:
        return
    import wandb
    run = wandb.init(project=cfg.logger.project, group="tables", job_type="table", name=f"{t.table}-{t.scale}",
                     dir=cfg.logger.save_dir, mode=cfg.logger.mode, reinit="finish_previous")
    run.log({t.table: wandb.Table(columns=columns, data=[[str(r.get(c, "")) for c in columns] for r in rows]),
             f"{t.table}_curves": wandb.Image(str(png))})
    if verdicts:
        run.log({f"{t.table}_claims": wandb.Table(columns=["claim", "verdict", "detail"],
                                                  data=[[v.claim, v.verdict, v.detail] for v in verdicts])})
        run.summary.update({f"claims/{t.table}/{i}": v.verdict for i, v in enumerate(verdicts)})
    run.finish()
