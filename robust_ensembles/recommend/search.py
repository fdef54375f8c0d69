"""The paper's objective as a search: for a target radius eps_t and an ensemble size K, the training
radius alpha whose K-ensemble has the highest natural accuracy while being at least as robust at
eps_t as the single model trained at eps_t, decided on the validation split only.

The constraint at one alpha is a paired non-inferiority test (`claims.at_least`): the lower end of
the interval of (ensemble - single) robust accuracy at eps_t, both read on the same validation
points under the same attack procedure, must lie above -margin. Its slack
`low + margin` is close to monotone in alpha (a larger training radius buys robustness and costs
natural accuracy), so the search brackets the smallest alpha that meets it between `bracket[0]`
(expected to fail) and `bracket[1]` (expected to pass: eps_t itself), then narrows the bracket by
safeguarded regula falsi on the slack (interpolation, kept at least a quarter of the bracket from
either end, on a grid of `resolution`), preferring an alpha already in the store when one lies close
to the interpolated point. It stops when the bracket is `resolution` wide or when the next alpha
would train more models than the budget has left. The recommendation is the passing alpha with the
highest validation natural accuracy (the smallest passing alpha when natural accuracy falls with
alpha, as it does).

Everything that trains or evaluates is injected (`Backend`), so the search is tested on stubs and
runs on the store unchanged (`robust_ensembles.recommend.recommender`). The test set is never read here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, Sequence

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import outcomes
from robust_ensembles.stats.paired import Difference, paired_difference
from robust_ensembles.tables.claims import HOLDS, at_least

VAL = "val"
STRATEGIES = ("interpolate", "bisect")


class Backend(Protocol):
    """What the search needs from the store: which seeds are missing, training them, evaluating."""

    def missing(self, alpha: float, K: int) -> list[int]:
        """Seeds of range(K) at alpha not yet trained (the single model at eps_t is alpha=eps_t, K=1)."""

    def train(self, alpha: float, seeds: list[int]) -> None:
        """Train these seeds at alpha (a Hydra multirun), so that `missing` is empty afterwards."""

    def evaluate(self, alpha: float, K: int, split: str) -> dict:
        """The curve record of the K-ensemble at alpha on `split` (per-point outcomes, grid incl. 0 and eps_t)."""

    def stored_alphas(self, K: int) -> list[float]:
        """Alphas whose first K seeds are all trained already (free to evaluate)."""


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


@dataclass
class Settings:
    target_eps: float
    bracket: tuple[float, float]   # alpha range, as fractions of target_eps
    resolution: float              # alpha grid of the search and its stopping width
    budget: int                    # models the search may train (reused models are free)
    margin: float                  # non-inferiority margin (accuracy)
    level: float                   # interval level
    min_gain: float = 0.0          # K=null: natural-accuracy gain (lower end of its interval) to require
    strategy: str = "interpolate"  # interpolate (safeguarded regula falsi) | bisect

    def __post_init__(self):
        t = self.target_eps
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"target_eps={t!r} must be a number > 0 (the L2 radius to be robust at).")
        if len(self.bracket) != 2 or not all(_number(f) for f in self.bracket):
            raise ConfigError(f"search.bracket={list(self.bracket)} must be two numbers, fractions of target_eps, "
                              f"e.g. [0.25, 1.0].")
        for key, value in (("resolution", self.resolution), ("margin", self.margin), ("level", self.level),
                           ("min_gain", self.min_gain)):
            if not _number(value):
                raise ConfigError(f"search.{key}={value!r} must be a number.")
        lo, hi = self.bracket
        if not 0 < lo < hi:
            raise ConfigError(f"search.bracket={list(self.bracket)} must be two fractions of target_eps with "
                              f"0 < low < high, e.g. [0.25, 1.0].")
        if not self.resolution > 0:
            raise ConfigError(f"search.resolution={self.resolution} must be > 0 (e.g. 0.02).")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ConfigError(f"search.budget={self.budget!r} must be an integer >= 0 (models the search may train).")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy={self.strategy!r} is unknown; use one of {list(STRATEGIES)}.")
        if not self.margin >= 0:
            raise ConfigError(f"search.margin={self.margin} must be >= 0 (accuracy, e.g. 0.01 for one point).")
        if not 0 < self.level < 1:
            raise ConfigError(f"search.level={self.level} must be in (0, 1), e.g. 0.95.")
        if not -1 <= self.min_gain <= 1:
            raise ConfigError(f"search.min_gain={self.min_gain} must be an accuracy difference in [-1, 1], e.g. 0.01.")

    def snap(self, alpha: float) -> float:
        return round(round(alpha / self.resolution) * self.resolution, 6)


@dataclass
class Trial:
    """One alpha tried at one K, on validation."""
    alpha: float
    K: int
    natural: float
    robust: float
    robust_diff: Difference   # ensemble - single at eps_t
    clean_diff: Difference    # ensemble - single on clean points
    passes: bool
    slack: float              # robust_diff.low + margin: >= 0 where it passes
    trained: int              # models trained for it
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Single:
    natural: float
    robust: float
    n: int
    trained: int


@dataclass
class Result:
    """A search at one K: every alpha tried (in order), the recommendation (None when no alpha in the
    bracket meets the constraint), why it stopped, and the models it trained."""
    K: int
    trials: list[Trial]
    single: Single
    chosen: Trial | None
    stop: str
    trained: int
    gain_ok: bool | None = None   # K=null: whether the chosen alpha's natural gain meets min_gain
    notes: list[str] = field(default_factory=list)


def accuracies(record: dict, eps: float) -> tuple[float, float]:
    return (outcomes.under_curve(record, 0.0).float().mean().item(),
            outcomes.under_curve(record, eps).float().mean().item())


class AlphaSearch:
    def __init__(self, settings: Settings, backend: Backend, log: Callable[[str], None] = print):
        self.s, self.b, self.log = settings, backend, log
        self.trained = 0          # models trained by this search, over every K
        self._single: tuple[dict, Single] | None = None

    # -------------------------------------------------------------- training within the budget
    def _cost(self, jobs: Sequence[tuple[float, int]]) -> list[tuple[float, int]]:
        need = []
        for alpha, K in jobs:
            need += [(alpha, s) for s in self.b.missing(alpha, K) if (alpha, s) not in need]
        return need

    def _train(self, jobs: Sequence[tuple[float, int]]) -> int:
        need = self._cost(jobs)
        by_alpha: dict[float, list[int]] = {}
        for alpha, seed in need:
            by_alpha.setdefault(alpha, []).append(seed)
        for alpha, seeds in by_alpha.items():
            self.log(f"training alpha={alpha:g} seeds {seeds}")
            self.b.train(alpha, seeds)
        self.trained += len(need)
        return len(need)

    # -------------------------------------------------------------- one alpha
    def single(self) -> tuple[dict, Single]:
        if self._single is None:
            t = self.s.target_eps
            trained = self._train([(t, 1)])
            record = self.b.evaluate(t, 1, VAL)
            natural, robust = accuracies(record, t)
            self._single = record, Single(natural, robust, len(outcomes.under_curve(record, 0.0)), trained)
        return self._single

    def trial(self, alpha: float, K: int) -> Trial:
        t, s = self.s.target_eps, self.s
        single_record, _ = self.single()
        trained = self._train([(alpha, K)])
        record = self.b.evaluate(alpha, K, VAL)
        ens, one = outcomes.paired_worst_case(record, single_record, t)
        robust = paired_difference(ens, one, s.level)
        clean = paired_difference(outcomes.under_curve(record, 0.0), outcomes.under_curve(single_record, 0.0), s.level)
        natural, rob = accuracies(record, t)
        passes = at_least(robust, s.margin) == HOLDS
        trial = Trial(alpha, K, natural, rob, robust, clean, passes, robust.low + s.margin, trained, robust.n)
        self.log(f"K={K} alpha={alpha:g}: natural {100 * natural:.2f}%, robust@{t:g} {100 * rob:.2f}%, "
                 f"ensemble - single {robust.text()}: {'meets' if passes else 'misses'} the constraint")
        return trial

    # -------------------------------------------------------------- the search at one K
    def bracket(self) -> tuple[float, float]:
        """The bracket's two ends, exactly bracket x eps_t (the upper end is eps_t itself by default);
        only the alphas tried inside it lie on the grid of `resolution`."""
        lo, hi = (round(f * self.s.target_eps, 6) for f in self.s.bracket)
        return lo, hi

    def check_budget(self, K: int) -> None:
        """Refuse a budget that cannot bracket: the single model, the K-ensemble at the upper end, and at
        the lower end unless a stored alpha inside the bracket may take its place."""
        lo, hi = self.bracket()
        jobs = [(self.s.target_eps, 1), (hi, K)]
        if not [a for a in self.b.stored_alphas(K) if lo <= a < hi]:
            jobs.append((lo, K))
        need = self._cost(jobs)
        if len(need) > self.s.budget - self.trained:
            raise ConfigError(f"search.budget={self.s.budget} is too small to bracket alpha at K={K}: the single model "
                              f"at eps={self.s.target_eps:g} and the {K}-ensembles at alpha="
                              f"{' and '.join(f'{a:g}' for _, a in sorted({(a, a) for a, _ in jobs[1:]}))} need "
                              f"{len(need)} more trained models ({self.trained} already trained by this search); "
                              f"raise search.budget to at least {len(need) + self.trained}.")

    def candidates(self) -> list[float]:
        """Every alpha the search may try: the bracket's two ends and the grid points strictly between."""
        lo, hi, res = *self.bracket(), self.s.resolution
        inside = [self.s.snap(k * res) for k in range(math.floor(lo / res), math.ceil(hi / res) + 1)]
        return [lo, *sorted({g for g in inside if lo + 1e-9 < g < hi - 1e-9}), hi]

    def propose(self, fail: Trial, ok: Trial, K: int, tried: set[float]) -> float | None:
        """The next alpha strictly inside (fail.alpha, ok.alpha), or None when the grid has none left."""
        a, b = fail.alpha, ok.alpha
        width = b - a
        x = (a + b) / 2
        if self.s.strategy == "interpolate" and ok.slack > fail.slack:
            x = a + width * (-fail.slack) / (ok.slack - fail.slack)
            x = min(max(x, a + width / 4), b - width / 4)  # safeguard: regula falsi must not stall at one end
        free = [f for f in self.b.stored_alphas(K) if a < f < b and f not in tried and abs(f - x) <= width / 4]
        if free:
            return min(free, key=lambda f: abs(f - x))
        inside = [g for g in self.candidates() if a + 1e-9 < g < b - 1e-9 and g not in tried]
        return min(inside, key=lambda g: abs(g - x)) if inside else None

    def search(self, K: int) -> Result:
        """Upper end first (it must meet the constraint); then the alphas already in the store inside the
        bracket, free, by bisection over them; the lower end is trained only if none of those fails; then
        the interpolated steps until the bracket is one grid step wide or the budget is spent."""
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ConfigError(f"K={K!r} must be an integer >= 1 (the ensemble size), or null for the smallest K "
                              f"of search.K_values that meets the constraint.")
        self.check_budget(K)
        start_trained = self.trained
        _, single = self.single()
        lo, hi = self.bracket()
        trials = [self.trial(hi, K)]
        done = lambda stop, chosen=True: Result(K, trials, single, self.choose(trials) if chosen else None, stop,
                                                self.trained - start_trained)
        if not trials[0].passes:
            return done(f"the upper end alpha={hi:g} misses the constraint: no alpha in the bracket meets it at K={K}",
                        chosen=False)

        def ends() -> tuple[Trial | None, Trial]:
            ok = min((t for t in trials if t.passes), key=lambda t: t.alpha)
            fails = [t for t in trials if not t.passes and t.alpha < ok.alpha]
            return (max(fails, key=lambda t: t.alpha) if fails else None), ok

        while True:  # free: stored alphas inside the bracket, bisected
            fail, ok = ends()
            a = fail.alpha if fail else lo
            free = sorted(f for f in self.b.stored_alphas(K) if a - 1e-9 <= f < ok.alpha - 1e-9
                          and f not in {t.alpha for t in trials} and (fail is not None or f >= lo - 1e-9))
            if not free:
                break
            trials.append(self.trial(free[len(free) // 2], K))
        fail, ok = ends()
        if fail is None and ok.alpha > lo + 1e-9:
            cost = len(self._cost([(lo, K)]))
            if self.trained + cost > self.s.budget:
                return done(f"search.budget={self.s.budget} spent before the lower end alpha={lo:g} ({cost} more "
                            f"model(s)) could bracket the crossing: every alpha tried meets the constraint")
            trials.append(self.trial(lo, K))
        fail, ok = ends()
        if fail is None:
            return done(f"the lower end alpha={lo:g} already meets the constraint (lower search.bracket to look below it)")
        while True:
            fail, ok = ends()
            if ok.alpha - fail.alpha <= self.s.resolution + 1e-9:
                return done(f"the bracket [{fail.alpha:g}, {ok.alpha:g}] is within search.resolution={self.s.resolution:g}")
            nxt = self.propose(fail, ok, K, {t.alpha for t in trials})
            if nxt is None:
                return done(f"no grid alpha (search.resolution={self.s.resolution:g}) is left inside "
                            f"[{fail.alpha:g}, {ok.alpha:g}]")
            cost = len(self._cost([(nxt, K)]))
            if self.trained + cost > self.s.budget:
                return done(f"search.budget={self.s.budget} spent: alpha={nxt:g} would train {cost} more model(s); "
                            f"the bracket is [{fail.alpha:g}, {ok.alpha:g}]")
            trials.append(self.trial(nxt, K))

    @staticmethod
    def choose(trials: list[Trial]) -> Trial:
        """The passing alpha with the highest validation natural accuracy (ties: the smaller alpha)."""
        return max((t for t in trials if t.passes), key=lambda t: (t.natural, -t.alpha))

    def smallest_K(self, K_values: Sequence[int]) -> list[Result]:
        """The reverse question: the searches at each K of K_values in increasing order, until one's
        recommendation gains at least min_gain natural accuracy over the single model (the lower end of
        its paired interval); the last result answers, its `gain_ok` says whether it met the gain."""
        if not K_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in K_values):
            raise ConfigError(f"search.K_values={list(K_values)} must list ensemble sizes (integers >= 1) to try for "
                              f"K=null, e.g. [1, 2, 4, 8].")
        results = []
        for K in sorted(K_values):
            try:
                r = self.search(K)
            except ConfigError:
                if not results:  # not even the smallest K can be bracketed: the budget is too small
                    raise
                results[-1].notes.append(f"K={K} not tried: search.budget={self.s.budget} is spent")
                break
            r.gain_ok = r.chosen is not None and r.chosen.clean_diff.low >= self.s.min_gain
            results.append(r)
            if r.gain_ok:
                break
        return results


class SyntheticBackend:
    """A stand-in store for tests and for measuring search strategies (`make bench-alpha-search`): the
    robust accuracy of a K-ensemble at alpha is the single model's plus `slope * (alpha - crossing + per_K * K)`
    (nested sets of robust points, so every discordant point favours one side), its natural accuracy
    `natural0 - natural_slope * alpha + gain_per_K * K`; records carry per-point outcomes on [0, eps_t]."""

    def __init__(self, target_eps: float, crossing: float = 0.3, slope: float = 0.4, n: int = 1000,
                 single: tuple[int, int] = (600, 400), per_K: float = 0.0, gain_per_K: float = 0.0,
                 natural0: float = 0.75, natural_slope: float = 0.3, stored: Sequence[tuple[float, int]] = ()):
        self.t, self.crossing, self.slope, self.n, self.single = target_eps, crossing, slope, n, single
        self.per_K, self.gain_per_K, self.natural0, self.natural_slope = per_K, gain_per_K, natural0, natural_slope
        self.trained = {(round(a, 6), s) for a, s in stored}
        self.train_calls: list[tuple[float, list[int]]] = []
        self.calls: list[tuple[float, int, str]] = []

    def missing(self, alpha: float, K: int) -> list[int]:
        return [s for s in range(K) if (round(alpha, 6), s) not in self.trained]

    def train(self, alpha: float, seeds: list[int]) -> None:
        self.train_calls.append((alpha, list(seeds)))
        self.trained |= {(round(alpha, 6), s) for s in seeds}

    def stored_alphas(self, K: int) -> list[float]:
        return sorted(a for a in {a for a, _ in self.trained} if not self.missing(a, K))

    def counts(self, alpha: float, K: int) -> tuple[int, int]:
        """(natural, robust) correct points of the K-ensemble at alpha (the single model: alpha=eps_t, K=1)."""
        if K == 1 and abs(alpha - self.t) < 1e-9:
            return self.single
        robust = self.single[1] + round(self.slope * (alpha - self.crossing + self.per_K * K) * self.n)
        robust = min(max(robust, 0), self.n)
        natural = round((self.natural0 - self.natural_slope * alpha + self.gain_per_K * K) * self.n)
        return min(max(natural, robust), self.n), robust

    def record(self, natural: int, robust: int) -> dict:
        min_flip = [None if i < robust else (self.t if i < natural else 0.0) for i in range(self.n)]
        return {"curve": {"eps": [0.0, self.t]}, "per_point": {"min_flip": min_flip}, "n": self.n}

    def evaluate(self, alpha: float, K: int, split: str) -> dict:
        if self.missing(alpha, K):
            raise AssertionError(f"evaluated alpha={alpha} K={K} before training it")
        self.calls.append((round(alpha, 6), K, split))
        return self.record(*self.counts(alpha, K))
