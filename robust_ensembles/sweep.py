"""Fill one paper table: train what the store lacks (a Hydra multirun, so any launcher applies),
fine-tune composites, evaluate every row (reusing stored results), write the reports.

    python -m robust_ensembles.sweep table1 --scale cpu [--estimate] [--autoattack run|stored|off] [-- overrides...]
    python -m robust_ensembles.sweep all --scale cpu      # the three tables: trains their union first

Each table is declared in `sweeps/<table>.yaml`: per scale, the experiment preset and the rows
(which alphas, seeds, composites). Overrides after `--` reach every train, finetune and evaluate
call (`hydra/...` overrides only the multiruns).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import CONFIG_DIR, PROJECT_ROOT, store
from robust_ensembles.errors import ConfigError
from robust_ensembles.evaluate import evaluate
from robust_ensembles.evaluation import plot_curves, standard_error
from robust_ensembles.tables import curve_of, equivalent_eps, fmt_acc, write_table
from robust_ensembles.train import training_identity, training_run

log = logging.getLogger("robust_ensembles.sweep")
SWEEPS_DIR = PROJECT_ROOT / "sweeps"
AUTOATTACK_MODES = ("run", "stored", "off")  # compute missing AutoAttack records | use stored ones only | no column


def cfg_for(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name, overrides=[o for o in overrides if not o.startswith("hydra")])


class Sweep:
    def __init__(self, table: str, scale: str, overrides: list[str], autoattack: str = "run"):
        path = SWEEPS_DIR / f"{table}.yaml"
        if not path.is_file():
            raise ConfigError(f"no sweep {path}; tables: {sorted(p.stem for p in SWEEPS_DIR.glob('*.yaml'))}")
        self.spec = OmegaConf.load(path)
        if scale not in self.spec.scales:
            raise ConfigError(f"--scale {scale} is not declared in {path}; use one of {list(self.spec.scales)}.")
        if autoattack not in AUTOATTACK_MODES:
            raise ConfigError(f"--autoattack {autoattack} is unknown; use one of {AUTOATTACK_MODES}.")
        self.table, self.scale, self.s, self.autoattack = table, scale, self.spec.scales[scale], autoattack
        self.base = [f"experiment={self.s.experiment}", *self.s.get("overrides", []), *overrides]
        self.trained: list[str] = []

    @functools.cached_property
    def evaluate_base(self) -> list[str]:
        """The overrides every evaluation of this table starts from."""
        return [*self.base, *self.spec.get("evaluation", []), *self.s.get("evaluate_overrides", [])]

    @functools.cached_property
    def evaluate_cfg(self) -> DictConfig:
        """The evaluate config every row starts from (its PGD, checks.max_gap, logger), composed once."""
        return cfg_for("evaluate", self.evaluate_base)

    @property
    def max_gap(self) -> float:
        """PGD minus AutoAttack above this is flagged."""
        return float(self.evaluate_cfg.checks.max_gap)

    # ------------------------------------------------------------------ what the table needs
    def seed_needs(self) -> dict[float, int]:
        """alpha -> number of seeds, over every row (and the composites' backbones)."""
        need: dict[float, int] = {}
        for row in self.rows_needing_seeds():
            need[float(row["alpha"])] = max(need.get(float(row["alpha"]), 0), int(row["K"]))
        for option in self.composite_options():
            comp = cfg_for("finetune", [*self.base, f"composite={option}"]).composite
            for part in (comp.robust, comp.natural):
                need[float(part.alpha)] = max(need.get(float(part.alpha), 0), int(part.seed) + 1)
        return need

    def rows_needing_seeds(self) -> list[dict]:
        rows = [dict(r) for r in self.s.get("rows", []) if "alpha" in r]
        for alpha in self.s.get("alphas", []):  # table 2 right: K-ensembles at each alpha, singles on a grid
            rows.append({"alpha": alpha, "K": self.s.K})
        for e in self.s.get("single_grid", []):
            rows.append({"alpha": e, "K": 1})
        for alpha in self.s.get("alpha_candidates", []):
            rows.append({"alpha": alpha, "K": self.s.K})
        if self.s.get("K_values"):  # table 2 left: K-ensembles at the target eps
            rows.append({"alpha": self.spec.target_eps, "K": max(self.s.K_values)})
        return [r for r in rows if r["alpha"] != "chosen"]

    def composite_options(self) -> list[str]:
        return sorted({o for r in self.s.get("rows", []) for o in r.get("composites", [])})

    def missing(self) -> tuple[list[tuple[float, int]], list[str]]:
        jobs = [(a, seed) for a, k in sorted(self.seed_needs().items()) for seed in range(k)
                if not training_run(cfg_for("train", [*self.base, f"alpha={a}", f"seed={seed}"])).complete]
        from robust_ensembles.composites import composite_run
        comps = []
        for option in self.composite_options():
            cfg = cfg_for("finetune", [*self.base, f"composite={option}"])
            try:
                if not composite_run(cfg, cfg.composite)[0].complete:
                    comps.append(option)
            except ConfigError:  # its backbones are not trained yet
                comps.append(option)
        return jobs, comps

    # ------------------------------------------------------------------ running
    def multirun(self, module: str, overrides: list[str]) -> None:
        cmd = [sys.executable, "-m", module, "-m", *self.base, *overrides]
        log.info("running: %s", " ".join(cmd))
        rc = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode
        if rc != 0:
            raise RuntimeError(f"{module} multirun failed (exit {rc}); rerun the target: finished jobs are kept.")

    def train_missing(self) -> None:
        self.trained += self.train(*self.missing())

    def train(self, jobs: list[tuple[float, int]], comps: list[str]) -> list[str]:
        """Train these (alpha, seed) jobs and composites; returns what was trained."""
        trained = []
        by_alpha: dict[float, list[int]] = {}
        for a, seed in jobs:
            by_alpha.setdefault(a, []).append(seed)
        by_seeds: dict[tuple, list[float]] = {}  # one multirun per distinct seed list: alphas x seeds
        for a, seeds in by_alpha.items():
            by_seeds.setdefault(tuple(seeds), []).append(a)
        for seeds, alphas in by_seeds.items():
            self.multirun("robust_ensembles.train", ["alpha=" + ",".join(map(str, alphas)),
                                                     "seed=" + ",".join(map(str, seeds))])
            trained += [f"alpha={a} seed={s}" for a in alphas for s in seeds]
        if comps:
            self.multirun("robust_ensembles.finetune", ["composite=" + ",".join(comps)])
            trained += [f"composite={c}" for c in comps]
        return trained

    def estimate(self) -> str:
        """Missing jobs, and their cost from the throughput measured by stored jobs of the same setup."""
        jobs, comps = self.missing()
        cfg = cfg_for("train", self.base)
        ident = training_identity(cfg)
        done = [r.metrics() for r in store.query(cfg.store.root, {"model": ident["model"], "data": ident["data"]})]
        seconds = [m["n_train"] * (m["last_epoch"] + 1) / m["train_images_per_s"] for m in done
                   if m.get("train_images_per_s")]
        head = f"{len(jobs)} training jobs and {len(comps)} composites missing"
        if not seconds:
            return f"{head}; no job of this setup has run yet, so no measured throughput to estimate from."
        hours = len(jobs) * statistics.median(seconds) / 3600
        return (f"{head}; about {hours:.2f} device-hours of training at the median measured "
                f"{statistics.median(seconds) / 60:.1f} min per job ({len(seconds)} stored jobs of this setup).")

    def evaluate_row(self, overrides: list[str], autoattack: bool = True) -> dict:
        """One evaluation (reused from the store when it exists), with the table's AutoAttack column."""
        aa = ([f"evaluation.autoattack.eps={self.spec.target_eps}", f"evaluation.autoattack.n={self.s.autoattack_n}",
               f"evaluation.autoattack.compute={self.autoattack == 'run'}"]
              if autoattack and self.autoattack != "off" else ["evaluation.autoattack.eps=null"])
        return evaluate(cfg_for("evaluate", [*self.evaluate_base, *aa, *overrides]))


# ---------------------------------------------------------------------- the three tables
@dataclass
class Filled:
    """A filled table: its rows, every row's curve for the plot, footer notes, the AutoAttack
    records its rows show, and reference points to plot beside the curves (label -> [(eps, acc, se)])."""
    rows: list[dict]
    curves: dict
    notes: list[str] = field(default_factory=list)
    autoattack: list[dict] = field(default_factory=list)
    points: dict = field(default_factory=dict)


def seeds_of(result: dict) -> str:
    return ",".join(str(m["seed"]) for m in result["members"])


def autoattack_of(results: list[dict]) -> list[dict]:
    return [r["autoattack"] for r in results if r.get("autoattack")]


def row_cells(sw: Sweep, result: dict, columns_eps: list[float]) -> dict:
    c = curve_of(result)
    cells = {f"eps={e:g}" if e else "natural": fmt_acc(c.at(e), standard_error(c.at(e), c.n)) for e in columns_eps}
    if sw.spec.get("auc_eps"):
        cells[f"AUC({sw.spec.auc_eps:g})"] = f"{c.auc(sw.spec.auc_eps):.3f}"
    if "autoattack" in result:
        aa, eps = result["autoattack"], f"{sw.spec.target_eps:g}"
        if aa is None:  # --autoattack stored, and no stored record yet
            cells[f"AA eps={eps}"] = cells[f"PGD eps={eps} (AA points)"] = "pending"
        else:
            gap = aa["pgd_acc"] - aa["autoattack_acc"]
            cells[f"AA eps={eps}"] = fmt_acc(aa["autoattack_acc"], aa["autoattack_se"]) + (" ⚠" if gap > sw.max_gap else "")
            cells[f"PGD eps={eps} (AA points)"] = fmt_acc(aa["pgd_acc"], aa["pgd_se"])
    return cells


def choose_alpha(sw: Sweep) -> tuple[float, list[str]]:
    """Smallest candidate alpha whose K-ensemble is at least as accurate at the target eps as the
    single model trained at the target, both measured on the validation split (never the test set)."""
    t, notes = sw.spec.target_eps, []
    grid = [f"evaluation.eps_grid=[0,{t}]", "evaluation.split=val"]
    single = sw.evaluate_row([f"alpha={t}", "K=1", *grid], autoattack=False)
    ref = curve_of(single).at(t)
    for alpha in sorted(sw.s.alpha_candidates):
        r = sw.evaluate_row([f"alpha={alpha}", f"K={sw.s.K}", *grid], autoattack=False)
        acc = curve_of(r).at(t)
        notes.append(f"validation ({r['n']} held-out training images): {sw.s.K}x alpha={alpha} {100 * acc:.2f}% vs "
                     f"single alpha={t} {100 * ref:.2f}% at eps={t}")
        if acc >= ref:
            return alpha, notes
    notes.append("no candidate alpha matched the single model on validation; the largest candidate is used")
    return max(sw.s.alpha_candidates), notes


def table1(sw: Sweep) -> Filled:
    alpha, notes = choose_alpha(sw) if sw.s.get("alpha_candidates") else (None, [])
    rows, curves, results = [], {}, []
    for row in sw.s.rows:
        a = alpha if row.get("alpha") == "chosen" else row.get("alpha")
        over = [f"members={row.get('members', 'seeds')}"] + ([f"alpha={a}", f"K={row.K}"] if a is not None else [])
        result = sw.evaluate_row(over)
        results.append(result)
        label = row.label.format(alpha=a, K=row.get("K"))
        rows.append({"model": label, **row_cells(sw, result, list(sw.spec.columns_eps)), "n": result["n"],
                     "seeds": seeds_of(result)})
        curves[label] = curve_of(result)
    return Filled(rows, curves, notes, autoattack_of(results))


def table2_size(sw: Sweep) -> Filled:
    rows, curves, results = [], {}, []
    for k in sw.s.K_values:
        result = sw.evaluate_row([f"alpha={sw.spec.target_eps}", f"K={k}"])
        results.append(result)
        rows.append({"models": k, **row_cells(sw, result, list(sw.spec.columns_eps)), "n": result["n"],
                     "seeds": seeds_of(result)})
        curves[f"K={k}"] = curve_of(result)
    return Filled(rows, curves, autoattack=autoattack_of(results))


def table2_equivalence(sw: Sweep) -> Filled:
    grid = sorted(float(e) for e in sw.s.single_grid)
    t = float(sw.spec.target_eps)
    row_grid = sorted({0.0, *grid, t})  # the grid, and the AUC at the target eps
    eval_grid = f"evaluation.eps_grid=[{','.join(f'{e:g}' for e in row_grid)}]"
    single, singles, reference = [], [], None
    for e in grid:  # each single model at its own training eps only; AutoAttack for the one at the target
        r = sw.evaluate_row([f"alpha={e}", "K=1", f"evaluation.eps_grid=[0,{e:g}]", f"evaluation.auc_eps={e:g}"],
                            autoattack=(e == t))
        singles.append(r)
        single.append(curve_of(r).at(e))
        reference = r.get("autoattack") if e == t else reference
    rows, curves, results = [], {}, []
    for alpha in sw.s.alphas:
        r = sw.evaluate_row([f"alpha={alpha}", f"K={sw.s.K}", eval_grid])
        results.append(r)
        c = curve_of(r)
        value, text = equivalent_eps(grid, [c.at(e) for e in grid], single)
        cells = row_cells(sw, r, [0.0, *grid])
        rows.append({"alpha": alpha, "models": sw.s.K, "single-robust-equivalent eps": text,
                     "ratio to alpha": "-" if math.isnan(value) else f"{value / alpha:.2f}", **cells, "n": r["n"],
                     "seeds": seeds_of(r)})
        curves[f"{sw.s.K}x alpha={alpha}"] = c
    n = singles[-1]["n"]
    notes = [f"single models trained at eps in {grid} (seed {seeds_of(singles[0])}), each evaluated at its own eps "
             f"(n = {n}): " + ", ".join(f"{e:g}: {100 * a:.2f}%" for e, a in zip(grid, single))]
    points = {"single model trained at e, attacked at e": [(e, a, standard_error(a, n)) for e, a in zip(grid, single)]}
    if reference:
        notes.append(f"under AutoAttack at eps={t:g} on the same {reference['n']} points, the single model trained at "
                     f"{t:g} has {100 * reference['autoattack_acc']:.2f}% (PGD {100 * reference['pgd_acc']:.2f}%): a row "
                     f"whose AA column is at least this is single-robust-equivalent at {t:g} or beyond under AutoAttack")
    return Filled(rows, curves, notes, autoattack_of([*results, *singles]), points)


TABLES = {"table1": table1, "table2_size": table2_size, "table2_equivalence": table2_equivalence}


def write_reports(sw: Sweep, filled: Filled, wall_s: float) -> dict:
    out = Path(cfg_for("train", sw.base).paths.root_dir) / "reports" / sw.scale
    rows = filled.rows
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if sw.scale == "paper" and sw.s.get("paper_numbers"):
        for r in rows:
            r["paper"] = sw.s.paper_numbers.get(str(next(iter(r.values()))), "-")
        columns.append("paper")
    footer = [sw.spec.caption_note] if sw.spec.get("caption_note") else []
    footer += [f"scale: {sw.scale} ({sw.s.get('shrunk', 'the paper setup')})", *filled.notes, *autoattack_notes(sw, filled.autoattack),
               "accuracies in %, ± one binomial standard error; each accuracy is under the strongest L2 PGD attack "
               f"found at that radius or below; ⚠ marks AutoAttack more than {100 * sw.max_gap:g} points below PGD "
               "on the same points",
               f"written {time.strftime('%Y-%m-%d %H:%M')} in {wall_s / 60:.1f} min"]
    paths = write_table(rows, columns, out, sw.table, sw.spec.caption, footer)
    png = out / f"{sw.table}.png"
    plot_curves(filled.curves, png, f"{sw.table} ({sw.scale})", points=filled.points)
    paths["png"] = png
    log_wandb(sw, rows, columns, png)
    return paths


def autoattack_notes(sw: Sweep, recs: list[dict]) -> list[str]:
    if sw.autoattack == "off":
        return ["AutoAttack column: not computed (--autoattack off)"]
    if not recs:
        return ["AutoAttack column: pending (no stored record; run the target with AUTOATTACK=run)"]
    seconds: dict[str, float] = {}  # device -> wall time of the records computed there
    for r in recs:
        seconds[r.get("device", "?")] = seconds.get(r.get("device", "?"), 0.0) + r.get("wall_s", 0.0)
    pgd = instantiate(sw.evaluate_cfg.evaluation.attack)  # the records' keys hold its settings
    return [f"AutoAttack column: {recs[0]['autoattack']} AutoAttack (L2) and PGD({pgd.settings()}) on the same first "
            f"{recs[0]['n']} test points at eps={recs[0]['eps']:g}; this table's {len(recs)} records computed on "
            + ", ".join(f"{d} ({t / 60:.1f} min)" for d, t in sorted(seconds.items()))]


def log_wandb(sw: Sweep, rows, columns, png) -> None:
    cfg = sw.evaluate_cfg
    if not cfg.get("logger") or "Wandb" not in cfg.logger._target_:
        return
    import wandb
    run = wandb.init(project=cfg.logger.project, group="tables", job_type="table", name=f"{sw.table}-{sw.scale}",
                     dir=cfg.logger.save_dir, mode=cfg.logger.mode, reinit="finish_previous")
    run.log({sw.table: wandb.Table(columns=columns, data=[[str(r.get(c, "")) for c in columns] for r in rows]),
             f"{sw.table}_curves": wandb.Image(str(png))})
    run.finish()


def train_union(sweeps: list[Sweep]) -> list[str]:
    """Train what any of the tables lacks, each model once (one Hydra multirun per seed list)."""
    jobs, comps = set(), set()
    for sw in sweeps:
        j, c = sw.missing()
        jobs.update(j)
        comps.update(c)
    return sweeps[0].train(sorted(jobs), sorted(comps))


def run_table(sw: Sweep) -> dict:
    start = time.perf_counter()
    sw.train_missing()
    paths = write_reports(sw, TABLES[sw.table](sw), time.perf_counter() - start)
    print(open(paths["md"]).read())
    print(f"{sw.table}: trained this run: {len(sw.trained)} ({', '.join(sw.trained) or 'nothing'}); "
          f"wall {time.perf_counter() - start:.0f} s; reports: {', '.join(str(p) for p in paths.values())}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    p = argparse.ArgumentParser(prog="python -m robust_ensembles.sweep", description=__doc__.split("\n\n")[0],
                                epilog="Hydra overrides for every job go after --")
    p.add_argument("table", choices=[*sorted(TABLES), "all"], help="a table, or all three (their models trained first)")
    p.add_argument("--scale", default="cpu")
    p.add_argument("--estimate", action="store_true", help="print the missing jobs and their estimated cost, run nothing")
    p.add_argument("--autoattack", default="run", choices=AUTOATTACK_MODES,
                   help="run: compute missing AutoAttack records; stored: only use records in the store (e.g. computed "
                        "on a GPU node), others pending; off: no AutoAttack column")
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []  # Hydra overrides for every job
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    names = sorted(TABLES) if a.table == "all" else [a.table]
    sweeps = [Sweep(name, a.scale, overrides, a.autoattack) for name in names]
    if a.estimate:
        for sw in sweeps:
            print(f"{sw.table} ({a.scale}): {sw.estimate()}")
        if len(sweeps) > 1:  # tables share models: the union is what `all` trains
            missing = [sw.missing() for sw in sweeps]
            print(f"all ({a.scale}): {len(set().union(*(set(j) for j, _ in missing)))} distinct training jobs and "
                  f"{len(set().union(*(set(c) for _, c in missing)))} composites missing")
        return 0
    start = time.perf_counter()
    if len(sweeps) > 1:
        trained = train_union(sweeps)
        print(f"all tables: trained this run: {len(trained)} ({', '.join(trained) or 'nothing'}); "
              f"wall {time.perf_counter() - start:.0f} s", flush=True)
    for sw in sweeps:
        run_table(sw)
    print(f"done: {', '.join(names)} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
