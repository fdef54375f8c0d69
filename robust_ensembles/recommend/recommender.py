"""Recommend alpha for a target eps on the store: the search of `recommend.search` with training as Hydra
multiruns (any launcher) and evaluation as store records, then one evaluation of the choice on the
test set, and its report (Markdown, JSON, PNG under reports/<scale>/, and wandb).

Every evaluation is one that a table makes (`recommend.table`, Table 1, at `scale`: the same
experiment, evaluation overrides and AutoAttack points), so the store shares them both ways:
* validation: the radii [0, eps_t] on the validation split, exactly Table 1's choice of alpha;
* test, only after the choice: the recommended K-ensemble and the single model at eps_t as Table 1
  evaluates its rows (the scale's radius grid, and its AutoAttack column per `autoattack_column`),
  compared paired.
Models the search trains skip their own end-of-training test (`run_test=false`): nothing reads the
test set before the choice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robust_ensembles import store
from robust_ensembles.core import atomic_files
from robust_ensembles.core.cli import override_key
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import outcomes
from robust_ensembles.evaluation.curves import new_figure, save_figure
from robust_ensembles.recommend.search import VAL, AlphaSearch, Backend, Result, Settings, accuracies
from robust_ensembles.stats.paired import paired_difference
from robust_ensembles.store.identity import members_query, training_run, with_radius
from robust_ensembles.tables.claims import attacks_text
from robust_ensembles.tables.table_run import TableRun

TEST = "test"
# this command's own keys: never passed on to the table's training or evaluation configs
OWN_KEYS = ("target_eps", "K", "search", "scale", "table", "autoattack_column", "estimate", "sweeps_dir", "evaluate_in")


class StoreBackend:
    """`search.Backend` on the store, through a table's run (`TableRun`): its training
    multiruns (the user's overrides that the training config knows; `launcher` overrides) and its row
    evaluations (every user override)."""

    def __init__(self, cfg: DictConfig, overrides: list[str], launcher: list[str] | None = None):
        if any(override_key(o) == "seeds" for o in overrides):
            raise ConfigError("seeds=... is not used by recommend: a K-ensemble at each alpha is seeds 0..K-1 "
                              "(trained when missing); drop the override.")
        if cfg.get("evaluate_in", "process") != "process":
            raise ConfigError(f"evaluate_in={cfg.evaluate_in} is not used by recommend: it evaluates one alpha at a "
                              f"time, each choice depending on the last; drop the override.")
        self.target_eps = float(cfg.target_eps)
        user = [o for o in overrides if override_key(o).split(".")[0] not in OWN_KEYS]
        self.table = TableRun(str(cfg.table), str(cfg.scale), user, str(cfg.autoattack_column),
                                     cfg.sweeps_dir, launcher)
        self.train_cfg = compose_config("train", self.table.base)
        self.evaluated: list[tuple[float, int, str]] = []  # in order: what was evaluated on which split

    def missing(self, alpha: float, K: int) -> list[int]:
        return [s for s in range(K) if not training_run(with_radius(self.train_cfg, alpha, s)).complete]

    def train(self, alpha: float, seeds: list[int]) -> None:
        self.table.multirun("robust_ensembles.train", [f"alpha={alpha}", "seed=" + ",".join(map(str, seeds)),
                                                       "run_test=false"])

    def row(self, alpha: float, K: int, split: str) -> list[str]:
        """The row overrides: on validation Table 1's choice of alpha; on test Table 1's rows (the scale's grid,
        with eps_t added when it is not on it)."""
        t = self.target_eps
        over = [f"alpha={alpha}", f"K={K}"]
        if split == VAL:
            return [*over, f"evaluation.eps_grid=[0,{t:g}]", "evaluation.split=val"]
        grid = list(self.table.evaluate_cfg.evaluation.eps_grid)
        extra = [] if any(abs(e - t) < 1e-9 for e in grid) else [f"evaluation.eps_grid=[{','.join(f'{e:g}' for e in sorted([*grid, t]))}]"]
        return ["members=seeds", *over, *extra]

    def evaluate(self, alpha: float, K: int, split: str) -> dict:
        self.evaluated.append((alpha, K, split))
        return self.table.evaluate_row(self.row(alpha, K, split), autoattack=split != VAL)

    def stored_alphas(self, K: int) -> list[float]:
        root = self.train_cfg.store.root  # (the attack's radius follows alpha: each alpha is its own query)
        alphas = {float(r.identity["alpha"]) for r in store.query(root, {}) if "alpha" in r.identity}
        return sorted(a for a in alphas
                      if len(store.query(root, members_query(with_radius(self.train_cfg, a, 0)), seeds=range(K))) == K)


def settings(cfg: DictConfig) -> Settings:
    s = cfg.search
    return Settings(cfg.target_eps, tuple(s.bracket), s.resolution, s.budget, s.margin, s.level, s.min_gain, s.strategy)


def recommend(cfg: DictConfig, overrides: list[str], launcher: list[str] | None = None,
              backend: Backend | None = None) -> dict:
    """Run the search (at cfg.K, or the smallest K of search.K_values when K is null), evaluate the
    choice once on the test set, and write the report. Returns the report's content and paths."""
    start = time.perf_counter()
    if OmegaConf.is_missing(cfg, "target_eps"):
        raise ConfigError("target_eps is not set: name the radius to be robust at, e.g. target_eps=0.5.")
    s = settings(cfg)
    b = backend if backend is not None else StoreBackend(cfg, overrides, launcher)
    search = AlphaSearch(s, b, log=lambda m: print(m, flush=True))
    results = search.smallest_K(list(cfg.search.K_values)) if cfg.K is None else [search.search(cfg.K)]
    final = results[-1]
    answered = final.chosen is not None and final.gain_ok is not False
    test = test_comparison(b, final, s) if answered else None
    summary = summarise(cfg, results, test, search.trained, time.perf_counter() - start, answered)
    summary["paths"] = {k: str(v) for k, v in write_report(cfg, summary).items()}
    print(Path(summary["paths"]["md"]).read_text(), flush=True)
    return summary


def test_comparison(b: Backend, result: Result, s: Settings) -> dict:
    """The chosen K-ensemble and the single model at eps_t on the test set (once, after the choice), paired."""
    t = s.target_eps
    ens = b.evaluate(result.chosen.alpha, result.K, TEST)
    single = b.evaluate(t, 1, TEST)
    robust = paired_difference(*outcomes.paired_worst_case(ens, single, t), s.level)
    clean = paired_difference(outcomes.under_curve(ens, 0.0), outcomes.under_curve(single, 0.0), s.level)
    (e_nat, e_rob), (s_nat, s_rob) = accuracies(ens, t), accuracies(single, t)
    return {"ensemble": {"natural": e_nat, "robust": e_rob, "n": robust.n},
            "single": {"natural": s_nat, "robust": s_rob, "n": robust.n},
            "robust_diff": robust.to_dict(), "clean_diff": clean.to_dict(),
            "robust_text": robust.text(), "clean_text": clean.text(),
            "autoattack_included": bool(outcomes.common_procedures(ens, single, t)),
            "attacks_text": attacks_text(outcomes.common_procedures(ens, single, t))}


def summarise(cfg: DictConfig, results: list[Result], test: dict | None, trained: int, wall_s: float,
              answered: bool) -> dict:
    final = results[-1]
    return {
        "target_eps": float(cfg.target_eps), "K": cfg.K, "K_chosen": final.K if answered else None,
        "alpha": final.chosen.alpha if answered else None, "scale": str(cfg.scale),
        "search": OmegaConf.to_container(cfg.search, resolve=True),
        "results": [{"K": r.K, "stop": r.stop, "trained": r.trained, "gain_ok": r.gain_ok, "notes": r.notes,
                     "single": vars(r.single), "chosen": r.chosen.alpha if r.chosen else None,
                     "trials": [t.to_dict() for t in r.trials]} for r in results],
        "models_trained": trained, "wall_s": wall_s, "test": test,
        "no_answer": None if answered else (final.stop if final.chosen is None else
                                            f"no K of search.K_values={list(cfg.search.K_values)} gains "
                                            f"search.min_gain={cfg.search.min_gain:g} natural accuracy at its best alpha"),
        "command": "python -m robust_ensembles.recommend " + " ".join(_task_overrides()),
        "written": time.strftime("%Y-%m-%d %H:%M"), "git_commit": store.git_commit(),
    }


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(summary: dict) -> str:
    t, final = summary["target_eps"], summary["results"][-1]
    K = final["K"]
    if summary["alpha"] is None:
        head = f"**No recommendation**: {summary['no_answer']}."
    else:
        head = (f"**Recommended: alpha = {summary['alpha']:g} with K = {K}** (validation: the {K}-ensemble at this alpha "
                f"is non-inferior at eps={t:g} to the single model trained at eps={t:g}, margin "
                f"{100 * summary['search']['margin']:g} point(s), with the highest natural accuracy of the alphas that are).")
    lines = [f"# Recommend alpha for eps_t = {t:g}, K = {summary['K'] if summary['K'] is not None else 'smallest'} "
             f"(scale {summary['scale']})", "", head, "",
             f"`{summary['command']}` (written {summary['written']}, commit {summary['git_commit'] or '?'}); "
             f"{summary['models_trained']} model(s) trained, wall {summary['wall_s'] / 60:.1f} min.", ""]
    for r in summary["results"]:
        s = r["single"]
        lines += [f"## Validation, K = {r['K']} (the search: {len(r['trials'])} alpha(s) tried, {r['trained']} model(s) "
                  f"trained; stopped because {r['stop']})", "",
                  f"Single model at eps={t:g}: natural {pct(s['natural'])} %, robust at {t:g} {pct(s['robust'])} % "
                  f"(n = {s['n']} validation points).", "",
                  "| order | alpha | K | models trained | natural % | robust % at eps_t | ensemble - single at eps_t (95 % paired interval) | clean ensemble - single | constraint |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, tr in enumerate(r["trials"], 1):
            rd, cd = tr["robust_diff"], tr["clean_diff"]
            lines.append(f"| {i} | {tr['alpha']:g} | {tr['K']} | {tr['trained']} | {pct(tr['natural'])} | {pct(tr['robust'])} | "
                         f"{100 * rd['estimate']:+.2f} [{100 * rd['low']:+.2f}, {100 * rd['high']:+.2f}] | "
                         f"{100 * cd['estimate']:+.2f} [{100 * cd['low']:+.2f}, {100 * cd['high']:+.2f}] | "
                         f"{'meets' if tr['passes'] else 'misses'}{' (chosen)' if tr['alpha'] == r['chosen'] else ''} |")
        if r["gain_ok"] is not None:
            lines.append(f"\nNatural-accuracy gain of the choice (lower end of its interval) >= "
                         f"{100 * summary['search']['min_gain']:g} point(s): {'yes' if r['gain_ok'] else 'no'}.")
        lines += [f"\n{n}" for n in r["notes"]] + [""]
    test = summary["test"]
    if test:
        e, s = test["ensemble"], test["single"]
        lines += ["## Test (evaluated once, after the choice; the test set played no part in it)", "",
                  "| model | natural % | robust % at eps_t |", "|---|---|---|",
                  f"| {K}x alpha={summary['alpha']:g} | {pct(e['natural'])} | {pct(e['robust'])} |",
                  f"| single alpha={t:g} | {pct(s['natural'])} | {pct(s['robust'])} |", "",
                  f"Ensemble - single on the same {e['n']} test points, 95 % paired intervals "
                  f"({test['robust_diff']['method']}): robust at eps={t:g} {test['robust_text']}; clean {test['clean_text']}. "
                  f"Attacks (the evaluation attack on the scale's radius grid, as in Table 1): {test.get('attacks_text', 'as recorded')}.", ""]
    lines += ["The search: `robust_ensembles/recommend/search.py` (bracket, safeguarded regula falsi on the slack of the "
              "paired non-inferiority test; docs/recommend.md).", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Natural vs robust accuracy at eps_t for every alpha tried (validation), the single model beside them,
    and the test pair after the choice."""
    t = summary["target_eps"]
    fig, ax = new_figure((6, 4.5))
    for r in summary["results"]:
        xs = [tr["robust"] for tr in r["trials"]]
        ys = [tr["natural"] for tr in r["trials"]]
        ax.scatter(xs, ys, label=f"{r['K']}-ensembles (validation)", zorder=3)
        for tr in r["trials"]:
            ax.annotate(f"{tr['alpha']:g}" + (" *" if tr["alpha"] == r["chosen"] else ""), (tr["robust"], tr["natural"]),
                        fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.scatter([r["single"]["robust"]], [r["single"]["natural"]], marker="*", s=150, c="k", zorder=4,
                   label=f"single alpha={t:g} (validation)" if r is summary["results"][0] else None)
    if summary["test"]:
        e, s = summary["test"]["ensemble"], summary["test"]["single"]
        ax.scatter([e["robust"]], [e["natural"]], marker="D", facecolors="none", edgecolors="C3", s=60, zorder=4,
                   label="chosen ensemble (test)")
        ax.scatter([s["robust"]], [s["natural"]], marker="*", facecolors="none", edgecolors="k", s=150, zorder=4,
                   label=f"single alpha={t:g} (test)")
    ax.set_xlabel(f"robust accuracy at eps={t:g}")
    ax.set_ylabel("natural accuracy")
    ax.set_title(f"alpha tried for eps_t={t:g} (scale {summary['scale']}); labels: alpha, * = chosen", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_report(cfg: DictConfig, summary: dict) -> dict[str, Path]:
    out = Path(cfg.paths.root_dir) / "reports" / str(cfg.scale)
    stem = f"recommend-eps{summary['target_eps']:g}-K{summary['K'] if summary['K'] is not None else 'min'}"
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_files.write_atomic(paths["json"], json.dumps(summary, indent=1) + "\n")
    atomic_files.write_atomic(paths["md"], markdown(summary))
    plot(summary, paths["png"])
    log_wandb(cfg, summary, paths)
    return paths


def log_wandb(cfg: DictConfig, summary: dict, paths: dict[str, Path]) -> None:
    if not cfg.get("logger") or "Wandb" not in cfg.logger._target_:
        return
    import wandb
    run = wandb.init(project=cfg.logger.project, group="recommend", job_type="recommend",
                     name=paths["md"].stem + f"-{cfg.scale}", dir=cfg.logger.save_dir, mode=cfg.logger.mode,
                     reinit="finish_previous")
    columns = ["K", "alpha", "models trained", "natural", "robust", "diff", "low", "high", "meets"]
    data = [[r["K"], tr["alpha"], tr["trained"], tr["natural"], tr["robust"], tr["robust_diff"]["estimate"],
             tr["robust_diff"]["low"], tr["robust_diff"]["high"], tr["passes"]] for r in summary["results"] for tr in r["trials"]]
    run.log({"recommend/trials": wandb.Table(columns=columns, data=data), "recommend/plot": wandb.Image(str(paths["png"]))})
    run.summary.update({"recommend/alpha": summary["alpha"], "recommend/K": summary["K_chosen"],
                        "recommend/models_trained": summary["models_trained"], "recommend/wall_s": summary["wall_s"]})
    if summary["test"]:
        run.summary.update({f"recommend/test/{who}/{k}": v for who in ("ensemble", "single")
                            for k, v in summary["test"][who].items()})
    run.finish()
