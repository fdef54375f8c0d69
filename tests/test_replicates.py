"""Intervals over seeds and test points: coverage on generated outcomes whose seed and point variance are
known, one replicate reported as unknown seed variance, and the n each undecided comparison needs."""

from __future__ import annotations

import math

import pytest
import torch

from robust_ensembles.stats.replicates import needed, replicated_difference, t_quantile


def generate(g: torch.Generator, replicates: int, n: int, shift: float, seed_sd: float, q: torch.Tensor) -> torch.Tensor:
    """(replicates, n) outcomes: point i right with probability q_i + a_r, a_r ~ N(shift, seed_sd) per
    replicate (retraining), q_i the point's difficulty (shared by both sides: the pairing)."""
    a = shift + seed_sd * torch.randn(replicates, 1, generator=g)
    return (torch.rand(replicates, n, generator=g) < (q[None] + a).clamp(0, 1)).float()


def coverage(replicates: int, seed_sd: float, sims: int = 400, n: int = 400, delta: float = 0.02,
             paired: bool = False) -> tuple[float, float]:
    """(share of intervals over seeds and points that cover the true difference, the same for the
    test-point-only intervals), over `sims` generated comparisons; a new point sample each time."""
    g = torch.Generator().manual_seed(0)
    hit = hit_points = 0
    for _ in range(sims):
        q = 0.2 + 0.6 * torch.rand(n, generator=g)
        first = generate(g, replicates, n, delta, seed_sd, q)
        second = generate(g, replicates, n, 0.0, seed_sd, q)
        d = replicated_difference(first, second, paired_replicates=paired)
        hit += d.low <= delta <= d.high
        hit_points += d.points_only.low <= delta <= d.points_only.high
    return hit / sims, hit_points / sims


@pytest.mark.parametrize("replicates,seed_sd", [(4, 0.02), (2, 0.02), (4, 0.0), (4, 0.04)])
def test_the_interval_over_seeds_and_points_covers_near_its_level(replicates, seed_sd):
    both, points = coverage(replicates, seed_sd)
    assert 0.90 <= both <= 0.99, both   # 400 simulations: the share's standard error is about 1.1 points
    if seed_sd >= 0.04:
        assert points < 0.8  # the test-point interval alone misses retraining (why both are reported)


def test_one_replicate_says_the_seed_variance_is_unknown_and_keeps_the_points_interval():
    g = torch.Generator().manual_seed(1)
    q = 0.2 + 0.6 * torch.rand(300, generator=g)
    d = replicated_difference(generate(g, 1, 300, 0.05, 0.02, q), generate(g, 4, 300, 0.0, 0.02, q))
    assert not d.known and d.low is None and d.seed_se is None and d.seed_sd[0] is None and d.seed_sd[1] > 0
    assert "seed variance unknown with one replicate" in d.text() and "test points only (" in d.text()
    single = replicated_difference(generate(g, 1, 300, 0.05, 0.0, q), generate(g, 1, 300, 0.0, 0.0, q))
    assert single.points_only.method.startswith("Bonett-Price")  # one model a side: the paired test-point interval


def test_paired_replicates_take_the_variance_of_their_differences():
    g = torch.Generator().manual_seed(2)
    q = 0.2 + 0.6 * torch.rand(500, generator=g)
    members = generate(g, 4, 500, 0.0, 0.03, q)
    ensembles = (members + (torch.rand(4, 500, generator=g) < 0.05).float()).clamp(max=1)  # each its members', improved
    d = replicated_difference(ensembles, members, paired_replicates=True)
    unpaired = replicated_difference(ensembles, members)
    assert d.seed_se < unpaired.seed_se and d.low > 0  # the shared training runs cancel out
    with pytest.raises(ValueError, match="paired replicates need as many on each side"):
        replicated_difference(ensembles[:3], members, paired_replicates=True)


def test_paired_coverage_near_its_level():
    both, _ = coverage(4, 0.02, paired=True)
    assert 0.90 <= both <= 0.99


def test_points_needed_matches_a_brute_force_simulation():
    """`needed`'s test points for a known case (its difference and variances read off a large sample),
    against generated comparisons at that n: the interval's lower end then sits at the bound, so about
    half of them clear it; at half that n fewer do, at twice more."""
    g = torch.Generator().manual_seed(3)
    delta, replicates = 0.03, 4

    def compare(n: int):
        q = 0.2 + 0.6 * torch.rand(n, generator=g)
        return replicated_difference(generate(g, replicates, n, delta, 0.0, q), generate(g, replicates, n, 0.0, 0.0, q))

    big = compare(20000)
    target = needed(big, bound=0.0, level=0.95).points
    assert 200 < target < 5000, target
    cleared = {f: sum(compare(int(f * target)).low > 0 for _ in range(200)) / 200 for f in (0.5, 1, 2)}
    # about half at that n (fewer: with 4 replicates the seed part, estimated anew on each sample, widens
    # some intervals beyond the plan's), fewer at half of it, more at twice
    assert 0.25 <= cleared[1] <= 0.65 and cleared[0.5] < cleared[1] < cleared[2], cleared


def test_seed_noise_that_points_cannot_beat_is_said_so():
    g = torch.Generator().manual_seed(4)
    q = 0.2 + 0.6 * torch.rand(2000, generator=g)
    d = replicated_difference(generate(g, 4, 2000, 0.01, 0.05, q), generate(g, 4, 2000, 0.0, 0.05, q))
    assert d.seed_se > 0 and d.point_se ** 2 < 0.6 * d.seed_se ** 2
    want = needed(d, d.estimate - 1.96 * math.sqrt(0.6) * d.seed_se)  # room for 60 % of the retraining variance
    assert math.isinf(want.points) and math.isfinite(want.replicate_sets) and want.replicate_sets > 4
    assert "seed sets at this n (more test points alone cannot)" in want.text()


def test_t_quantile():
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=0.001)
    assert t_quantile(0.95, 2) == pytest.approx(4.303, abs=0.001)
    assert t_quantile(0.95, 10) == pytest.approx(2.228, abs=0.01)
    assert t_quantile(0.95, 1e6) == pytest.approx(1.960, abs=0.001)


def test_identical_outcomes_still_give_an_interval_of_some_width():
    same = torch.ones(3, 50)
    d = replicated_difference(same, same.clone())
    assert d.estimate == 0 and d.low < 0 < d.high


def test_with_one_replicate_what_would_decide_is_a_lower_bound_and_names_the_second_replicate():
    g = torch.Generator().manual_seed(5)
    q = 0.2 + 0.6 * torch.rand(300, generator=g)
    d = replicated_difference(generate(g, 1, 300, 0.02, 0.0, q), generate(g, 4, 300, 0.0, 0.0, q))
    want = needed(d, 0.0)
    assert want.replicate_sets is None and "at least" in want.text() and "2 replicates" in want.text()
