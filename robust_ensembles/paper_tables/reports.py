"""A filled table's reports: Markdown, CSV, LaTeX, a PNG of every row's curve, the footer notes,
and the same table in wandb."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from robust_ensembles import outcomes
from robust_ensembles.claims import Verdict, settings_name
from robust_ensembles.curves import curve_of, plot_curves, standard_error

if TYPE_CHECKING:
    from robust_ensembles.paper_tables.driver import TableRun


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


def seeds_of(record: dict) -> str:
    return ",".join(str(m["seed"]) for m in record["members"])


def autoattack_of(records: list[dict]) -> list[dict]:
    return [r["autoattack"] for r in records if r.get("autoattack")]


def worst_case_acc(record: dict, eps: float) -> tuple[float, int]:
    """Accuracy at eps under the worst case per point over every attack run on it, and n."""
    robust = outcomes.worst_case(record, eps)
    return robust.float().mean().item(), len(robust)


def row_cells(t: TableRun, record: dict, columns_eps: list[float]) -> dict:
    """A row's accuracy cells (± one standard error; per point the worst case over every attack run
    on it), its AUC (the evaluation attack's curve), and its AutoAttack columns: AutoAttack and the
    evaluation attack each on their own on the same points, their worst case, and the gap."""
    cells = {}
    for e in columns_eps:
        acc, n = worst_case_acc(record, e)
        cells[f"eps={e:g}" if e else "natural"] = fmt_acc(acc, standard_error(acc, n))
    if t.spec.get("auc_eps"):
        cells[f"AUC({t.spec.auc_eps:g})"] = f"{curve_of(record).auc(t.spec.auc_eps):.3f}"
    if "autoattack" in record:
        aa, eps = record["autoattack"], f"{t.spec.target_eps:g}"
        names = [f"AA eps={eps}", f"attack eps={eps} (AA points)", f"worst case eps={eps} (AA points)", "attack - AA"]
        if aa is None:  # autoattack_column=stored, and no stored record yet
            cells.update(dict.fromkeys(names, "pending"))
        else:
            a = outcomes.autoattack_columns(record)
            gap = a["attack"] - a["autoattack"]
            se = lambda acc: standard_error(acc, a["n"])
            cells[names[0]] = fmt_acc(a["autoattack"], se(a["autoattack"])) + (" ⚠" if gap > t.flag_gap else "")
            cells[names[1]] = fmt_acc(a["attack"], se(a["attack"]))
            cells[names[2]] = fmt_acc(a["worst"], se(a["worst"]))
            cells[names[3]] = f"{100 * gap:+.2f}"
    column = record.get("autoattack")
    others = [a for a in outcomes.point_attacks(record) if a is not column]  # point_attacks lists the column once
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
    out = Path(t.evaluate_cfg.paths.root_dir) / "reports" / t.scale
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
               f"<= eps flipped it: the evaluation attack ({instantiate(t.evaluate_cfg.evaluation.attack)!r}) at every "
               f"grid radius up to eps, and AutoAttack (and any attack run on the model later, 'other attacks') on its "
               f"points at eps >= its radius; 'attack - AA' is the "
               f"evaluation attack's accuracy minus AutoAttack's on the same points, ⚠ where it exceeds "
               f"{100 * t.flag_gap:g} point(s)",
               *[f"claim {v.line()}" for v in filled.claims],
               f"written {time.strftime('%Y-%m-%d %H:%M')} in {wall_s / 60:.1f} min"]
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


def write_claims(t: TableRun, verdicts: list[Verdict], out: Path) -> dict[str, Path]:
    """This table's verdicts as <table>.claims.json, and claims.md regenerated from every table's json
    in reports/<scale>/ (each with the command that produced it)."""
    path = out / f"{t.table}.claims.json"
    if not verdicts:
        path.unlink(missing_ok=True)  # a table that no longer tests a claim leaves none behind in claims.md
    else:
        doc = {"table": t.table, "scale": t.scale, "command": t.command(), "written": time.strftime("%Y-%m-%d %H:%M"),
               "claims": [v.to_dict() for v in verdicts]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return {"claims": write_claims_md(out, t.scale), **({"claims_json": path} if verdicts else {})}


def write_claims_md(out: Path, scale: str) -> Path:
    """claims.md of reports/<scale>/ (`out`) from every table's <table>.claims.json there."""
    lines = [f"# The paper's claims at scale {scale}: verdicts written by the code", "",
             "Each verdict compares two models on the same test points (paired), each point's outcome the worst "
             "case over every attack run on it; `holds`, `fails` or `inconclusive at this n` as defined in "
             "`robust_ensembles/claims.py`. Regenerated whenever a table is written. The intervals cover the "
             "choice of test points for these trained models, not their training: the same recipe retrained "
             "(other seeds, threads or machine) moves the differences as well.", ""]
    for p in sorted(out.glob("*.claims.json")):
        d = json.loads(p.read_text())
        lines += [f"## {d['table']}", "", f"`{d['command']}` (written {d['written']})", ""]
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
