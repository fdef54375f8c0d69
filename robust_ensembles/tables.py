"""Paper tables from evaluation results: the single-robust-equivalent epsilon, and the writers
(Markdown, CSV, LaTeX, a PNG of every row's curve).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from robust_ensembles.evaluation import Curve


def equivalent_eps(grid: Sequence[float], ensemble_acc: Sequence[float], single_acc: Sequence[float]) -> tuple[float, str]:
    """The largest grid epsilon e at which the ensemble is at least as accurate at e as the single
    model trained at e (both evaluated at e), linearly interpolated where the sign of the
    difference changes. Returns (value, text): text is "> max" when the ensemble is never worse
    on the grid (value = the grid's max), "< min" when it is worse everywhere (value = nan).
    """
    if not (len(grid) == len(ensemble_acc) == len(single_acc)) or not grid:
        raise ValueError("equivalent_eps needs one ensemble and one single accuracy per grid epsilon")
    if list(grid) != sorted(grid):
        raise ValueError(f"the single-model grid {list(grid)} must be increasing")
    d = [a - b for a, b in zip(ensemble_acc, single_acc)]
    if all(v >= 0 for v in d):
        return float(grid[-1]), f"> {grid[-1]:g}"
    last = max((i for i in range(len(d) - 1) if d[i] >= 0 and d[i + 1] < 0), default=None)
    if last is None:
        return math.nan, f"< {grid[0]:g}"
    e0, e1 = grid[last], grid[last + 1]
    value = e0 + (e1 - e0) * d[last] / (d[last] - d[last + 1])
    return value, f"{value:.3f}"


def fmt_acc(acc: float | None, se: float | None = None) -> str:
    if acc is None:
        return "-"
    return f"{100 * acc:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")


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
    esc = lambda t: str(t).replace("±", r"$\pm$").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&").replace(">", r"$>$").replace("<", r"$<$")
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
           " & ".join(esc(c) for c in columns) + r" \\", r"\midrule"]
    tex += [" & ".join(esc(r.get(c, "")) for c in columns) + r" \\" for r in rows]
    tex += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}"]
    paths = {"md": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv", "tex": out_dir / f"{name}.tex"}
    paths["md"].write_text("\n".join(md) + "\n")
    paths["csv"].write_text(buf.getvalue())
    paths["tex"].write_text("\n".join(tex) + "\n")
    return paths


def curve_of(result: dict) -> Curve:
    c = result["curve"]
    return Curve(c["eps"], c["cumulative"], c["per_eps"], c["n"], c["max_norm_ratio"], tuple(c["pixel_range"]))
