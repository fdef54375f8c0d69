"""`bench.mode=alpha_search` (`make bench-alpha-search`): models each search strategy of the alpha recommender trains, on stand-in stores."""

from __future__ import annotations

import statistics

import torch
from omegaconf import DictConfig

from robust_ensembles.bench.harness import Report
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.recommend.search import STRATEGIES, AlphaSearch, Settings, SyntheticBackend


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """Models trained until the recommendation is settled (within the resolution of the true smallest
    passing alpha, found by brute force on the same grid), per strategy, over stand-in stores: the
    bracketing searches (`search.strategy`), and Optuna's TPE sampler (what the Hydra Optuna sweeper runs)
    on the penalised objective natural - 1[constraint missed], stopped by an oracle as soon as its best
    passing alpha is the right one (a real run could not know when to stop, so this favours it)."""
    a = cfg.bench.alpha_search
    settings = lambda strategy: Settings(a.target_eps, tuple(a.bracket), a.resolution, a.budget,
                                         a.margin, a.level, strategy=strategy)
    cases = [(c, s) for c in a.crossings for s in a.slopes]
    counts: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for crossing, slope in cases:
        oracle = AlphaSearch(settings("bisect"), SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
        truth = min((g for g in oracle.candidates() if oracle.trial(g, a.K).passes), default=None)
        for strategy in STRATEGIES:
            search = AlphaSearch(settings(strategy), SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
            r = search.search(a.K)
            ok = r.chosen is not None and truth is not None and truth - 1e-9 <= r.chosen.alpha <= truth + a.resolution + 1e-9
            counts.setdefault(strategy, []).append(r.trained)
            misses[strategy] = misses.get(strategy, 0) + (not ok)
        if a.optuna:
            trained, ok = optuna_search(settings("bisect"), a, crossing, slope, truth)
            counts.setdefault("optuna_tpe", []).append(trained)
            misses["optuna_tpe"] = misses.get("optuna_tpe", 0) + (not ok)
    for name, c in counts.items():
        rep.add(f"models trained, {name} (K={a.K}, {len(cases)} stand-in stores)",
                (statistics.median(c), min(c), max(c)), f"mean {statistics.mean(c):.1f}; missed the answer "
                f"in {misses[name]} of {len(cases)}")
    rep.note(f"stand-ins: crossing alpha {list(a.crossings)} x slope of the robust gap {list(a.slopes)}; "
              f"n={a.n} validation points, margin {a.margin}, resolution {a.resolution}, bracket "
              f"{list(a.bracket)} x eps_t={a.target_eps}; optuna_tpe capped at {a.optuna_max_trials} alphas")
    return rep


def optuna_search(settings: Settings, a: DictConfig, crossing: float, slope: float, truth: float | None) -> tuple[int, bool]:
    try:
        import optuna
    except ImportError:
        raise ConfigError("bench.alpha_search.optuna=true compares with Optuna's TPE sampler: pip install optuna "
                          "(or bench.alpha_search.optuna=false)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = AlphaSearch(settings, SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
    lo, hi = search.bracket()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=a.seed))
    best = None
    for _ in range(a.optuna_max_trials):
        trial = study.ask()
        alpha = search.s.snap(trial.suggest_float("alpha", lo, hi, step=a.resolution))
        t = search.trial(alpha, a.K)
        study.tell(trial, t.natural - (0.0 if t.passes else 1.0))
        if t.passes and (best is None or alpha < best):
            best = alpha
        if best is not None and truth is not None and truth - 1e-9 <= best <= truth + a.resolution + 1e-9:
            return search.trained, True
    return search.trained, False


def describe(cfg: DictConfig) -> str:
    return "no torch work: stand-in stores (robust_ensembles.recommend.search.SyntheticBackend)"
