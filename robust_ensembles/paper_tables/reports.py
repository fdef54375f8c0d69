"""A filled table's reports: Markdown, CSV, LaTeX, a PNG of every row's curve, the footer notes,
and the same table in wandb."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from robust_ensembles.curves import curve_of, plot_curves, standard_error

if TYPE_CHECKING:
    from robust_ensembles.paper_tables.driver import TableRun


@dataclass
class Filled:
    """A filled table: its rows, every row's curve for the plot, footer notes, the AutoAttack
    records its rows show, and reference points to plot beside the curves (label -> [(eps, acc, se)])."""
    rows: list[dict]
    curves: dict
    notes: list[str] = field(default_factory=list)
    autoattack: list[dict] = field(default_factory=list)
    points: dict = field(default_factory=dict)


def fmt_acc(acc: float | None, se: float | None = None) -> str:
    if acc is None:
        return "-"
    return f"{100 * acc:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")


def seeds_of(record: dict) -> str:
    return ",".join(str(m["seed"]) for m in record["members"])


def autoattack_of(records: list[dict]) -> list[dict]:
    return [r["autoattack"] for r in records if r.get("autoattack")]


def row_cells(t: TableRun, record: dict, columns_eps: list[float]) -> dict:
    """A row's accuracy cells (± one standard error), its AUC, and its AutoAttack column."""
    c = curve_of(record)
    cells = {f"eps={e:g}" if e else "natural": fmt_acc(c.at(e), standard_error(c.at(e), c.n)) for e in columns_eps}
    if t.spec.get("auc_eps"):
        cells[f"AUC({t.spec.auc_eps:g})"] = f"{c.auc(t.spec.auc_eps):.3f}"
    if "autoattack" in record:
        aa, eps = record["autoattack"], f"{t.spec.target_eps:g}"
        if aa is None:  # autoattack_column=stored, and no stored record yet
            cells[f"AA eps={eps}"] = cells[f"PGD eps={eps} (AA points)"] = "pending"
        else:
            gap = aa["pgd_acc"] - aa["autoattack_acc"]
            cells[f"AA eps={eps}"] = fmt_acc(aa["autoattack_acc"], aa["autoattack_se"]) + (" ⚠" if gap > t.max_gap else "")
            cells[f"PGD eps={eps} (AA points)"] = fmt_acc(aa["pgd_acc"], aa["pgd_se"])
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
               "accuracies in %, ± one binomial standard error; each accuracy is under the strongest L2 PGD attack "
               f"found at that radius or below; ⚠ marks AutoAttack more than {100 * t.max_gap:g} points below PGD "
               "on the same points",
               f"written {time.strftime('%Y-%m-%d %H:%M')} in {wall_s / 60:.1f} min"]
    paths = write_table(rows, columns, out, t.table, t.spec.caption, footer)
    png = out / f"{t.table}.png"
    plot_curves(filled.curves, png, f"{t.table} ({t.scale})", points=filled.points)
    paths["png"] = png
    log_wandb(t, rows, columns, png)
    return paths


def autoattack_notes(t: TableRun, recs: list[dict]) -> list[str]:
    if t.autoattack == "off":
        return ["AutoAttack column: not computed (autoattack_column=off)"]
    if not recs:
        return ["AutoAttack column: pending (no stored record; run the target with AUTOATTACK=run)"]
    seconds: dict[str, float] = {}  # device -> wall time of the records computed there
    for r in recs:
        seconds[r.get("device", "?")] = seconds.get(r.get("device", "?"), 0.0) + r.get("wall_s", 0.0)
    pgd = instantiate(t.evaluate_cfg.evaluation.attack)  # the records' keys hold its settings
    return [f"AutoAttack column: {recs[0]['autoattack']} AutoAttack (L2) and PGD({pgd.settings()}) on the same first "
            f"{recs[0]['n']} test points at eps={recs[0]['eps']:g}; this table's {len(recs)} records computed on "
            + ", ".join(f"{d} ({s / 60:.1f} min)" for d, s in sorted(seconds.items()))]


def log_wandb(t: TableRun, rows, columns, png) -> None:
    cfg = t.evaluate_cfg
    if not cfg.get("logger") or "Wandb" not in cfg.logger._target_:
        return
    import wandb
    run = wandb.init(project=cfg.logger.project, group="tables", job_type="table", name=f"{t.table}-{t.scale}",
                     dir=cfg.logger.save_dir, mode=cfg.logger.mode, reinit="finish_previous")
    run.log({t.table: wandb.Table(columns=columns, data=[[str(r.get(c, "")) for c in columns] for r in rows]),
             f"{t.table}_curves": wandb.Image(str(png))})
    run.finish()
