"""Paired statistics: two models compared on the same test points.

The difference of two accuracies measured on the same n points is (n10 - n01) / n, where n10 counts
the points only the first model gets right and n01 those only the second gets right; the points
where both agree carry no information about the difference. Its 95 % interval therefore comes from
the discordant counts, not from two binomial standard errors (which ignore that the models agree on
most points and overstate the uncertainty several-fold here).

`paired_difference` uses the Bonett-Price adjusted Wald interval for paired proportions: one
pseudo-count added to each discordant cell (n+2 points), then a Wald interval. Fagerland, Lydersen
and Laake (2014, "Recommended tests and confidence intervals for paired binomial proportions",
Stat. Med.) recommend it for its coverage close to nominal down to small n and few discordant
pairs; it is closed-form, so a reader can check a table's interval by hand from n10, n01 and n, and
it agrees with a paired bootstrap (`bootstrap_accuracies`) at our n (tests/test_paired.py).

Statistics that are not a difference of accuracies (the equivalent epsilon, a function of several
models' outcomes) get a paired bootstrap over points: resampling points keeps every model's outcome
on a point together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

import torch

from robust_ensembles.core.errors import ConfigError


@dataclass
class Difference:
    """first - second on the same n points, with its interval at `level`."""
    estimate: float
    low: float
    high: float
    n: int
    first_only: int      # n10: points only the first model gets right
    second_only: int     # n01
    level: float
    method: str

    def text(self, unit: float = 100.0) -> str:
        return (f"{unit * self.estimate:+.2f} [{unit * self.low:+.2f}, {unit * self.high:+.2f}] points "
                f"({self.first_only} vs {self.second_only} discordant of n={self.n})")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ConfigError(f"claims.level={level} must be in (0, 1), e.g. 0.95.")
    return level


def z_of(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2)


def _as_bool(outcomes, name: str) -> torch.Tensor:
    t = torch.as_tensor(outcomes)
    if t.dim() != 1:
        raise ValueError(f"{name}: per-point outcomes must be one flat list")
    return t.bool()


def paired_difference(first: Sequence[bool] | torch.Tensor, second: Sequence[bool] | torch.Tensor,
                      level: float = 0.95) -> Difference:
    """Accuracy of `first` minus accuracy of `second`, both per-point outcomes on the same points."""
    a, b = _as_bool(first, "first"), _as_bool(second, "second")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"a paired comparison needs outcomes on the same points (got {len(a)} and {len(b)})")
    n = len(a)
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p10, p01 = (n10 + 1) / (n + 2), (n01 + 1) / (n + 2)
    half = z_of(level) * math.sqrt(max(p10 + p01 - (p10 - p01) ** 2, 0.0) / (n + 2))
    centre = p10 - p01
    return Difference((n10 - n01) / n, max(centre - half, -1.0), min(centre + half, 1.0), n, n10, n01, level,
                      "Bonett-Price adjusted Wald (paired)")


def bootstrap_accuracies(outcomes: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """Paired bootstrap: (samples, m) accuracies of m models whose per-point outcomes on the same n
    points are the rows of `outcomes` (m, n); every resample draws n points with replacement and
    reads every model on the same draw. Reproducible from `seed`."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"claims.bootstrap_samples={samples!r} must be an integer >= 1 (e.g. 2000).")
    m, n = outcomes.shape
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(samples, m)
    chunk = max(1, 2_000_000 // max(n * m, 1))  # bounded memory: chunk x m x n booleans at a time
    for start in range(0, samples, chunk):
        idx = torch.randint(0, n, (min(chunk, samples - start), n), generator=g)
        out[start:start + len(idx)] = outcomes.float()[:, idx].mean(-1).T
    return out


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values. nan (a statistic undefined on a
    resample, e.g. "below the grid") sorts below every number."""
    ordered = sorted(values, key=lambda v: -math.inf if math.isnan(v) else v)
    tail = (1 - _check_level(level)) / 2
    lo = ordered[max(0, math.floor(tail * len(ordered)))]
    hi = ordered[min(len(ordered) - 1, math.ceil((1 - tail) * len(ordered)) - 1)]
    return lo, hi
