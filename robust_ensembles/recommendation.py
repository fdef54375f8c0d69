"""Recommend alpha for a target eps on the store: the search of `alpha_search` with training as Hydra
multiruns (any launcher) and evaluation as store records, then one evaluation of the choice on the
test set, and its report (Markdown, JSON, PNG under reports/<experiment>/, and wandb).

* Validation records are the tables' own (`conf/tables.yaml` settings, grid [0, eps_t], split val):
  Table 1's choice of alpha and this search share them, as they share every trained model.
* Only after the choice: the recommended K-ensemble and the single model at eps_t are evaluated on
  the test split (the tables' grid, so their test records are the tables' rows), and compared paired.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robust_ensembles import outcomes, store
from robust_ensembles.alpha_search import VAL, AlphaSearch, Backend, Result, Settings, accuracies
from robust_ensembles.errors import ConfigError
from robust_ensembles.identity import members_query, training_run, with_radius
from robust_ensembles.paired import paired_difference
from robust_ensembles.paper_tables import driver
from robust_ensembles.robustness import evaluate

log = logging.getLogger(__name__)
CONFIG = "recommend"
TEST = "test"
OWN_KEYS = ("target_eps", "K", "search")  # this command's keys: never passed to training


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


class StoreBackend:
    """`alpha_search.Backend` on the store: the user's overrides reach every training multirun (those the
    training config knows) and every evaluation; `launcher` overrides reach the multiruns."""

    def __init__(self, target_eps: float, overrides: list[str], launcher: list[str] | None = None):
        self.target_eps = target_eps
        self.overrides = [o for o in overrides if _key(o).split(".")[0] not in OWN_KEYS]
        self.train_base = driver.training_overrides([], self.overrides)
        self.launcher = list(launcher or [])
        self.train_cfg = driver.compose_config("train", self.train_base)
        self.evaluated: list[tuple[float, int, str]] = []  # in order: what was evaluated where

    def missing(self, alpha: float, K: int) -> list[int]:
        return [s for s in range(K) if not training_run(with_radius(self.train_cfg, alpha, s)).complete]

    def train(self, alpha: float, seeds: list[int]) -> None:
        driver.multirun("robust_ensembles.train", [*self.train_base, *self.launcher, f"alpha={alpha}",
                                                   "seed=" + ",".join(map(str, seeds))])

    def config(self, alpha: float, K: int, split: str) -> DictConfig:
        target_eps = self.target_eps
        if split == VAL:  # the search: the evaluation attack alone, on the two radii it reads
            extra = [f"evaluation.eps_grid=[0,{target_eps}]", "evaluation.autoattack.eps=null"]
        else:
            extra = []
        cfg = driver.compose_config(CONFIG, [*self.overrides, f"target_eps={target_eps}", f"alpha={alpha}", f"K={K}", "members=seeds",
                                             f"evaluation.split={split}", *extra])
        if split != VAL and not any(abs(e - target_eps) < 1e-9 for e in cfg.evaluation.eps_grid):
            cfg.evaluation.eps_grid = sorted([*cfg.evaluation.eps_grid, target_eps])
        return cfg

    def evaluate(self, alpha: float, K: int, split: str) -> dict:
        self.evaluated.append((alpha, K, split))
        return evaluate(self.config(alpha, K, split))

    def stored_alphas(self, K: int) -> list[float]:
        root = self.train_cfg.store.root  # (the attack's radius follows alpha: each alpha is its own query)
        alphas = {float(r.identity["alpha"]) for r in store.query(root, {}) if "alpha" in r.identity}
        return sorted(a for a in alphas
                      if len(store.query(root, members_query(with_radius(self.train_cfg, a, 0)), seeds=range(K))) == K)


def settings(cfg: DictConfig) -> Settings:
    s = cfg.search
    return Settings(cfg.target_eps, tuple(s.bracket), float(s.resolution), s.budget, float(s.margin), float(s.level),
                    float(s.min_gain), str(s.strategy))


def recommend(cfg: DictConfig, overrides: list[str], launcher: list[str] | None = None,
              backend: Backend | None = None) -> dict:
    """Run the search (at cfg.K, or the smallest K of search.K_values when K is null), evaluate the
    choice once on the test set, and write the report. Returns the report's content and paths."""
    start = time.perf_counter()
    if OmegaConf.is_missing(cfg, "target_eps"):
        raise ConfigError("target_eps is not set: name the radius to be robust at, e.g. target_eps=0.5.")
    s = settings(cfg)
    b = backend if backend is not None else StoreBackend(s.target_eps, overrides, launcher)
    search = AlphaSearch(s, b, log=lambda m: print(m, flush=True))
    results = search.smallest_K(list(cfg.search.K_values)) if cfg.K is None else [search.search(cfg.K)]
    final = results[-1]
    test = test_comparison(b, final, s) if final.chosen is not None else None
    summary = summarise(cfg, results, test, search.trained, time.perf_counter() - start)
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
            "autoattack_included": outcomes.paired_autoattack(ens, single, t)}


def summarise(cfg: DictConfig, results: list[Result], test: dict | None, trained: int, wall_s: float) -> dict:
    final = results[-1]
    return {
        "target_eps": float(cfg.target_eps), "K": cfg.K, "K_chosen": final.K if final.chosen else None,
        "alpha": final.chosen.alpha if final.chosen else None, "experiment": cfg.name,
        "search": OmegaConf.to_container(cfg.search, resolve=True),
        "results": [{"K": r.K, "stop": r.stop, "trained": r.trained, "gain_ok": r.gain_ok, "notes": r.notes,
                     "single": vars(r.single), "chosen": r.chosen.alpha if r.chosen else None,
                     "trials": [t.to_dict() for t in r.trials]} for r in results],
        "models_trained": trained, "wall_s": wall_s, "test": test,
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
        head = f"**No recommendation**: {final['stop']}."
    else:
        head = (f"**Recommended: alpha = {summary['alpha']:g} with K = {K}** (validation: the {K}-ensemble at this alpha "
                f"is non-inferior at eps={t:g} to the single model trained at eps={t:g}, margin "
                f"{100 * summary['search']['margin']:g} point(s), with the highest natural accuracy of the alphas that are).")
    lines = [f"# Recommend alpha for eps_t = {t:g}, K = {summary['K'] if summary['K'] is not None else 'smallest'} "
             f"({summary['experiment']})", "", head, "",
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
                  f"Attacks: the evaluation attack on the tables' radius grid"
                  f"{' and AutoAttack on its points' if test['autoattack_included'] else ''}, worst case per point.", ""]
    lines += ["The search: `robust_ensembles/alpha_search.py` (bracket, safeguarded regula falsi on the slack of the "
              "paired non-inferiority test; docs/recommend.md).", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Natural vs robust accuracy at eps_t for every alpha tried (validation), the single model beside them,
    and the test pair after the choice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["target_eps"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
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
                   label=f"chosen ensemble (test)")
        ax.scatter([s["robust"]], [s["natural"]], marker="*", facecolors="none", edgecolors="k", s=150, zorder=4,
                   label=f"single alpha={t:g} (test)")
    ax.set_xlabel(f"robust accuracy at eps={t:g}")
    ax.set_ylabel("natural accuracy")
    ax.set_title(f"alpha tried for eps_t={t:g} ({summary['experiment']}); labels: alpha, * = chosen", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg: DictConfig, summary: dict) -> dict[str, Path]:
    out = Path(cfg.paths.root_dir) / "reports" / cfg.name
    stem = f"recommend-eps{summary['target_eps']:g}-K{summary['K'] if summary['K'] is not None else 'min'}"
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    out.mkdir(parents=True, exist_ok=True)
    store.write_atomic(paths["json"], json.dumps(summary, indent=1) + "\n")
    store.write_atomic(paths["md"], markdown(summary))
    plot(summary, paths["png"])
    log_wandb(cfg, summary, paths)
    return paths


def log_wandb(cfg: DictConfig, summary: dict, paths: dict[str, Path]) -> None:
    if not cfg.get("logger") or "Wandb" not in cfg.logger._target_:
        return
    import wandb
    run = wandb.init(project=cfg.logger.project, group="recommend", job_type="recommend",
                     name=paths["md"].stem + f"-{cfg.name}", dir=cfg.logger.save_dir, mode=cfg.logger.mode,
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
