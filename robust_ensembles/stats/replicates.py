"""Differences of accuracy that survive retraining: training replicates (seeds) and test points, together.

`paired.paired_difference` covers the choice of test points for one trained model per side. A claim
about a recipe (the paper's rho-bar: the mean over trained models) also has to cover retraining: two
builds of one recipe differ by about as much as that interval. Here each side has R >= 1 replicates
(single models of different seeds, or K-ensembles of disjoint seed blocks), each with its per-point
outcomes on the same n test points: `first` is (R1, n), `second` (R2, n).

The estimate is the mean accuracy over replicates, first minus second. Its variance has two parts
(variance components, as in Bouthillier et al. 2021, "Accounting for variance in machine learning
benchmarks"):

* retraining: the variance of the replicates' accuracies on these points, s1^2 / R1 + s2^2 / R2, each
  less the part that the points' own replicate-to-replicate noise puts into it (`seed_component`), so
  that this noise counts once, in the test-point part (for `paired_replicates`, replicate r of both
  sides comes from the same training runs, e.g. an ensemble and its own members: the same for the
  per-replicate differences);
* test points: var(d) / n, d_i the point's replicate-averaged outcome difference (what the paired
  test-point interval covers).

The interval is estimate +- t * sqrt(sum), t with the Welch-Satterthwaite degrees of freedom of the
sum: with 2 replicates a side the retraining part has 1 degree of freedom and the interval is wide,
as it should be. A side with one replicate has no retraining variance to
estimate: the result says so (`seed_se` None) and keeps only the test-point interval, never a seed
variance of zero. `tests/test_replicates.py` checks coverage near the level on generated outcomes
with known seed and point variance.

`needed` says what would decide an undecided comparison: the test points (at these replicates) or
replicate sets (at these points) at which the observed difference, with the observed variances,
would clear the bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from robust_ensembles.stats.paired import Difference, paired_difference, z_of


def t_quantile(level: float, df: float) -> float:
    """Two-sided Student t quantile at `level` with `df` degrees of freedom (fractional df allowed)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass
class ReplicatedDifference:
    """Mean accuracy over the first side's replicates minus the second's, on the same n test points."""
    estimate: float
    low: float | None          # None when a side's retraining variance is unknown (one replicate)
    high: float | None
    level: float
    n: int
    replicates: tuple[int, int]
    seed_sd: tuple[float | None, float | None]   # replicates' accuracy SD per side (None: one replicate)
    seed_se: float | None                         # retraining part of the standard error (None: unknown)
    point_se: float                               # test-point part
    df: float | None
    points_only: Difference                       # the test-point-only interval (retraining not covered)
    paired_replicates: bool

    @property
    def known(self) -> bool:
        return self.seed_se is not None

    def text(self, unit: float = 100.0) -> str:
        r1, r2 = self.replicates
        pts = self.points_only
        points = f"test points only ({pts.method}): [{unit * pts.low:+.2f}, {unit * pts.high:+.2f}]"
        if not self.known:
            return (f"{unit * self.estimate:+.2f} points; seeds and points: unknown (seed variance unknown with one "
                    f"replicate on a side, {r1} vs {r2}); {points}, n={self.n}")
        return (f"{unit * self.estimate:+.2f} [{unit * self.low:+.2f}, {unit * self.high:+.2f}] points over seeds and "
                f"points ({r1} vs {r2} replicates, df {self.df:.1f}); {points}, n={self.n}")

    def to_dict(self) -> dict:
        return {**asdict(self), "points_only": self.points_only.to_dict()}


def _as_matrix(outcomes, name: str) -> torch.Tensor:
    t = torch.as_tensor(outcomes)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 2:
        raise ValueError(f"{name}: per-point outcomes must be (replicates, points) with at least 2 points")
    return t.float()


def seed_component(outcomes: torch.Tensor) -> float:
    """The retraining variance of accuracy, from (R, n) outcomes of R replicates on the same points: the
    replicates' accuracy variance less what the points' own replicate-to-replicate noise puts into it
    (mean per-point variance / n; method of moments, floored at 0). Without that correction the noise
    would count twice, here and in the test-point part."""
    r, n = outcomes.shape
    spread = float(outcomes.mean(1).var(unbiased=True))
    noise = float(outcomes.var(0, unbiased=True).mean()) / n
    return max(0.0, (spread - noise) / (1 - 1 / n))


def replicated_difference(first, second, level: float = 0.95, paired_replicates: bool = False) -> ReplicatedDifference:
    """first - second: each (R, n) per-point outcomes of R replicates on the same n points (see the module)."""
    a, b = _as_matrix(first, "first"), _as_matrix(second, "second")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired comparison needs outcomes on the same points (got {a.shape[1]} and {b.shape[1]})")
    if paired_replicates and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired replicates need as many on each side (got {a.shape[0]} and {b.shape[0]})")
    (r1, n), r2 = a.shape, b.shape[0]
    acc1, acc2 = a.mean(1), b.mean(1)
    estimate = float(acc1.mean() - acc2.mean())
    d = a.mean(0) - b.mean(0)
    # one pseudo-point each way (as Bonett-Price's pseudo-counts): identical outcomes on every point still
    # leave an interval of nonzero width
    point_var = float(torch.cat([d, torch.tensor([1.0, -1.0])]).var(unbiased=True)) / (n + 2)
    binary = bool(((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all())
    if r1 == 1 and r2 == 1 and binary:
        points_only = paired_difference(a[0].bool(), b[0].bool(), level)
    else:
        half = z_of(level) * math.sqrt(point_var)
        points_only = Difference(estimate, estimate - half, estimate + half, n, -1, -1, level,
                                 "Wald on the replicate-averaged per-point differences")
    seed_sd = (seed_component(a) ** 0.5 if r1 > 1 else None, seed_component(b) ** 0.5 if r2 > 1 else None)
    if paired_replicates and r1 > 1:
        parts = [(seed_component(a - b) / r1, r1 - 1)]
    elif r1 > 1 and r2 > 1:
        parts = [(seed_sd[0] ** 2 / r1, r1 - 1), (seed_sd[1] ** 2 / r2, r2 - 1)]
    else:
        return ReplicatedDifference(estimate, None, None, level, n, (r1, r2), seed_sd, None, math.sqrt(point_var),
                                    None, points_only, paired_replicates)
    seed_var = sum(v for v, _ in parts)
    total = seed_var + point_var
    parts.append((point_var, n - 1))
    denominator = sum(v ** 2 / df for v, df in parts if df > 0)
    df = total ** 2 / denominator if denominator > 0 else math.inf
    half = t_quantile(level, df) * math.sqrt(total) if math.isfinite(df) else z_of(level) * math.sqrt(total)
    return ReplicatedDifference(estimate, estimate - half, estimate + half, level, n, (r1, r2), seed_sd,
                                math.sqrt(seed_var), math.sqrt(point_var), df, points_only, paired_replicates)


@dataclass
class Needed:
    """What would decide: test points at the current replicates, replicate sets at the current points
    (math.inf: that lever alone cannot, e.g. more points when retraining noise alone is too wide;
    None: unknown, a side has one replicate and its seed variance needs a second to be estimated)."""
    points: float
    replicate_sets: float | None

    def text(self) -> str:
        """'would be decided by about 2,800 test points, or 5 seed sets at this n', or what cannot."""
        pts = None if math.isinf(self.points) else f"about {self.points:,.0f} test points"
        if self.replicate_sets is None:
            return (f"would be decided by {pts} at least" if pts else "more test points alone cannot decide it") + \
                " (the seed variance is unknown until a side has 2 replicates)"
        reps = None if math.isinf(self.replicate_sets) else f"{self.replicate_sets:.0f} seed sets at this n"
        if pts and reps:
            return f"would be decided by {pts}, or {reps}"
        if pts or reps:
            return (f"would be decided by {pts or reps} (more "
                    f"{'seed sets' if pts else 'test points'} alone cannot)")
        return "neither more test points nor more seed sets alone would decide it at this difference"


def needed(d: ReplicatedDifference, bound: float, level: float | None = None) -> Needed:
    """The test points or replicate sets at which an interval of `d`'s observed difference and variances
    would lie wholly on the estimate's side of `bound` (the margin or zero a verdict compares with), with
    the quantile of the interval itself (t at `d`'s degrees of freedom; the normal one when the seed
    variance is unknown). Replicate sets scale both sides' replicates together. For an undecided `d`
    both figures exceed what it has. With one replicate on a side the seed variance is unknown: the points figure
    takes it as zero and is then a lower bound, and no replicate figure is given."""
    level = level or d.level
    q = t_quantile(level, d.df) if d.known and d.df is not None and math.isfinite(d.df) else z_of(level)
    room = (abs(d.estimate - bound) / q) ** 2  # the variance the interval may have
    if room == 0:
        return Needed(math.inf, math.inf if d.known else None)
    point_var_per_point = d.point_se ** 2 * (d.n + 2)   # var(d_i), as the interval computes it
    seed_var = d.seed_se ** 2 if d.known else 0.0
    points = math.inf if seed_var >= room else math.ceil(point_var_per_point / (room - seed_var))
    if not d.known:
        return Needed(points, None)
    reps = math.inf
    if d.point_se ** 2 < room:
        k = seed_var / (room - d.point_se ** 2)   # the factor the replicates must grow by
        reps = max(2, math.ceil(k * max(d.replicates)))
    return Needed(points, reps)
