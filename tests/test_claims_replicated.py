"""Claims (4) and (5) over seed replicates, on hand-made records: every kind of verdict."""

from __future__ import annotations

import math

import pytest
import torch

from robust_ensembles.tables.claims import (FAILS, HOLDS, INCONCLUSIVE, composites_vs_single, ensemble_beats_members,
                                            per_point_auc)

GRID = [0.0, 0.25, 0.5]


def record(clean: torch.Tensor, robust: torch.Tensor, seed: int = 0) -> dict:
    """A curve record: points wrong on clean flip at 0, those right but not robust at 0.25, the rest never."""
    flips = [0.0 if not c else (None if r else 0.25) for c, r in zip(clean.tolist(), robust.tolist())]
    return {"curve": {"eps": GRID}, "per_point": {"min_flip": flips}, "members": [{"seed": seed}]}


def draw(g: torch.Generator, n: int, clean: float, robust: float, seed: int = 0) -> dict:
    c = torch.rand(n, generator=g) < clean
    return record(c, c & (torch.rand(n, generator=g) < robust / clean), seed)


def blocks(g, n, ens_clean, member_clean, replicates=2, k=4):
    ens = [draw(g, n, ens_clean, 0.3, seed=b) for b in range(replicates)]
    members = [[draw(g, n, member_clean, 0.3, seed=b * k + i) for i in range(k)] for b in range(replicates)]
    return ens, members


@pytest.mark.parametrize("ens_clean,member_clean,n,want", [
    (0.75, 0.60, 2000, HOLDS), (0.55, 0.70, 2000, FAILS), (0.61, 0.60, 300, INCONCLUSIVE)])
def test_claim_4_ensemble_against_the_mean_of_its_members(ens_clean, member_clean, n, want):
    g = torch.Generator().manual_seed(0)
    v = ensemble_beats_members(*blocks(g, n, ens_clean, member_clean), level=0.95, label="4x alpha=0.3")
    assert v.verdict == want, v.detail
    assert v.claim.startswith("(4) 4x alpha=0.3 is more accurate on clean data than its members on average")
    assert "over seeds and test points" in v.detail and v.numbers["blocks"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    if want == INCONCLUSIVE:
        assert "would be decided by" in v.detail and ("test points" in v.detail or "seed sets" in v.detail)


def test_claim_4_with_one_block_says_the_seed_variance_is_unknown():
    g = torch.Generator().manual_seed(1)
    v = ensemble_beats_members(*blocks(g, 2000, 0.75, 0.60, replicates=1), level=0.95, label="4x")
    assert v.verdict == HOLDS and "test points only: seed variance unknown" in v.detail


@pytest.mark.parametrize("comp,pair,single,want", [
    ((0.70, 0.44), (0.70, 0.45), (0.60, 0.41), HOLDS),      # more accurate, as robust, the pair too
    ((0.55, 0.40), (0.70, 0.45), (0.60, 0.41), FAILS),      # less accurate on clean data
    ((0.70, 0.30), (0.70, 0.45), (0.60, 0.41), FAILS),      # far less robust
    ((0.70, 0.405), (0.70, 0.40), (0.60, 0.41), INCONCLUSIVE),  # robust within noise of the margin
])
def test_claim_5_composites_against_the_single_model(comp, pair, single, want):
    g = torch.Generator().manual_seed(2)
    make = lambda acc: [draw(g, 3000, *acc, seed=s) for s in range(2)]
    v = composites_vs_single(make(comp), make(pair), make(single), eps=0.5, margin=0.01, level=0.95, auc_eps=0.5,
                             labels=("1-composite", "2 composites", "single 0.4"))
    assert v.verdict == want, v.detail
    assert "AUC(0.5) 1-composite - single 0.4" in v.detail and "AUC(0.5) 2 composites - single 0.4" in v.detail
    assert set(v.numbers["parts"]) == {"clean, 1-composite - single 0.4", "robust at eps=0.5, 1-composite - single 0.4",
                                       "robust at eps=0.5, 2 composites - single 0.4"}


def test_per_point_auc_averages_to_the_curve_auc():
    from robust_ensembles.evaluation.curves import auc

    g = torch.Generator().manual_seed(3)
    r = draw(g, 500, 0.7, 0.4)
    curve = [sum(f is None or f > e for f in r["per_point"]["min_flip"]) / 500 for e in GRID]
    assert per_point_auc(r, 0.5).mean().item() == pytest.approx(auc(GRID, curve, 0.5))
    assert math.isclose(per_point_auc(r, 0.25).max().item(), 1.0)


from robust_ensembles.stats.replicates import replicated_difference  # noqa: E402
# ----------------------------------------------------------------------------- claims (1)-(3) over replicates
from robust_ensembles.tables import claims


def ensemble_record(rec: dict, seeds: list[int]) -> dict:
    return {**rec, "members": [{"seed": s} for s in seeds]}


def test_claim_1_over_seed_blocks_covers_retraining_and_gives_each_block_alone():
    g = torch.Generator().manual_seed(3)
    # the two builds differ (seeds 4-7 train weaker models): each block is 2 points ahead of its own seeds'
    # singles in robust accuracy, and 22 points off the other block's, so comparing with the wrong singles shows
    robust = [0.45, 0.25]
    ens = [ensemble_record(draw(g, 3000, 0.70, robust[b] + 0.02), list(range(4 * b, 4 * b + 4))) for b in range(2)]
    singles = [draw(g, 3000, 0.62, robust[s // 4], seed=s) for s in range(8)]
    v = claims.ensemble_vs_single(ens, singles, 0.5, 0.01, 0.95, "4x alpha=0.3", "single 0.5")
    # over both builds the difference is the same +2 points, but retraining (22 points between builds) makes
    # its interval wide: inconclusive, where the test-point interval alone would call it
    robust_d = v.numbers["robust"]
    assert robust_d["estimate"] == pytest.approx(0.02, abs=0.015) and robust_d["low"] < -0.01
    assert robust_d["points_only"]["low"] > -0.01 and v.verdict == INCONCLUSIVE, v.detail
    assert "over seeds and test points" in v.detail and "(2 vs 8 replicates" in v.detail
    for block in v.numbers["by_block"]:  # each block against its own seeds' singles: about +2 each
        assert block["robust"]["estimate"] == pytest.approx(0.02, abs=0.035)  # sampling noise ~1.3 points
    assert "Seeds: 4x alpha=0.3 0-3; 4-7; single 0.5 0-7, one model each" in v.detail
    # each block against the single models of its own seeds: what two separate builds would have said
    assert [b["seeds"] for b in v.numbers["by_block"]] == ["0-3", "4-7"]
    assert "seeds 0-3: robust +" in v.detail and "seeds 4-7: robust +" in v.detail
    # one ensemble a side: the interval is the test points' only, and says the seed variance is unknown
    one = claims.ensemble_vs_single(ens[0], singles[0], 0.5, 0.01, 0.95, "4x", "single")
    assert "seed variance unknown" in one.detail and one.numbers["by_block"] == []


def test_growth_holds_and_fails_regions_never_overlap():
    """Growth holds on intervals wholly above 0 and fails on intervals wholly below: regions (and the truths
    behind them: a gain, a loss) that cannot meet. [+0.23, +0.77] points is a gain and nothing else; an interval
    reaching 0 is undecided, however small the gain the margin would call negligible."""
    assert claims.growth_verdict(0.0023, 0.0077) == HOLDS
    assert claims.growth_verdict(-0.0077, -0.0023) == FAILS
    assert claims.growth_verdict(-0.001, 0.004) == INCONCLUSIVE
    ends = [x / 1000 for x in range(-30, 31)]
    for lo in ends:
        for hi in (h for h in ends if h >= lo):
            v = claims.growth_verdict(lo, hi)
            assert (v == HOLDS) == (lo > 0) and (v == FAILS) == (hi < 0)
    margin = 0.01
    g = torch.Generator().manual_seed(4)
    base = [draw(g, 4000, 0.6, 0.40, seed=s) for s in range(4)]
    k2 = [ensemble_record(draw(g, 4000, 0.6, 0.425), [2 * b, 2 * b + 1]) for b in range(2)]
    k4 = [ensemble_record(draw(g, 4000, 0.6, 0.43), [0, 1, 2, 3])]
    v = claims.growth_with_k({1: base, 2: k2, 4: k4}, 0.5, margin, 0.95)
    growth = v.numbers["growth"]
    low = growth["points_only"]["low"]  # K=4 has one block: the test-point interval decides, and says so
    assert (low > 0) == ("Growth, K=4 - K=1:" in v.detail and "(holds, over test points only" in v.detail)
    assert [s["from"] for s in v.numbers["steps"]] == [1, 2] and v.numbers["replicates"] == {1: 4, 2: 2, 4: 1}
    assert "step K=1 -> 2:" in v.detail and "step K=2 -> 4:" in v.detail and "90% (TOST)" in v.detail


def test_growth_fails_when_a_step_drops_by_more_than_the_margin():
    robust_on = lambda lo, hi: record(torch.ones(2000, dtype=torch.bool),
                                      torch.tensor([lo <= i < hi for i in range(2000)]))
    drops = {1: robust_on(0, 800), 2: robust_on(0, 1000), 4: robust_on(0, 850), 8: robust_on(0, 1000)}
    v = claims.growth_with_k(drops, 0.5, 0.01, 0.95)
    assert [s["verdict"] for s in v.numbers["steps"]] == [HOLDS, FAILS, HOLDS] and v.verdict == FAILS


def test_saturation_uses_the_90_percent_tost_interval():
    """An equivalence verdict reads the two one-sided tests' 90 % interval: a last step whose 95 % interval
    reaches past the margin while its 90 % one lies inside it is saturated."""
    n, g = 4000, torch.Generator().manual_seed(5)
    same = torch.rand(n, generator=g) < 0.5
    flip = torch.zeros(n, dtype=torch.bool)
    flip[:30] = True  # points gained from K=4 to K=8, and a few lost
    lose = torch.zeros(n, dtype=torch.bool)
    lose[30:40] = True
    k4 = record(torch.ones(n, dtype=torch.bool), same & ~flip)
    k8 = record(torch.ones(n, dtype=torch.bool), (same | flip) & ~lose)
    read = lambda r: claims.worst_case_replicates([[r]], 0.5)[0][0]
    d95, d90 = (replicated_difference(read(k8), read(k4), level) for level in (0.95, 0.90))
    margin = (d95.points_only.high + d90.points_only.high) / 2
    assert d95.points_only.high > margin > d90.points_only.high > d90.points_only.low > -margin  # TOST decides
    k1 = record(torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    v = claims.growth_with_k({1: k1, 4: k4, 8: k8}, 0.5, margin, 0.95)
    assert "saturation, K=8 - K=4" in v.detail and f"must lie within +-{100 * margin:g} (holds" in v.detail
    assert v.numbers["last_step"]["level"] == pytest.approx(0.90)


def test_a_single_model_added_to_the_equivalence_grid_replaces_the_straight_line():
    """With single models only at 0.25 and 0.75 the equivalent eps is read off the straight line between them;
    adding the one trained at 0.5 (behind the ensemble there) moves the estimate to where the ensemble really
    falls behind, and the interval's share of interpolated values is reported."""
    n, grid = 2000, [0.0, 0.25, 0.5, 0.75]
    curve = lambda flips: {"curve": {"eps": grid}, "members": [{"seed": 0}], "per_point": {"min_flip": flips}}
    single = lambda acc: curve([None] * int(n * acc) + [0.0] * (n - int(n * acc)))  # acc at every radius
    ens = curve([None] * 700 + [0.75] * 300 + [0.0] * 1000)  # 50 % up to 0.5, 35 % at 0.75
    singles = {0.25: single(0.45), 0.75: single(0.40)}
    two, _ = claims.equivalent_eps_bootstrap(ens, singles, 200, 0)
    with_half = {**singles, 0.5: single(0.30)}
    three, _ = claims.equivalent_eps_bootstrap(ens, with_half, 200, 0)
    # ensemble - single: 0.25: +5, 0.75: -5 -> 0.5 on the line; with 0.5 (+20 there): 0.5 + 0.25 * 20/25 = 0.70
    assert two == pytest.approx(0.5) and three == pytest.approx(0.70)
    v = claims.equivalent_eps_about_2alpha(ens, with_half, 0.35, 0.2, 200, 0, 0.95, "4x")
    assert "grid [0.25, 0.5, 0.75]" in v.detail and v.verdict == HOLDS
    assert v.numbers["cells"] == [[0.5, 0.75]] and "spans the cells [0.5, 0.75] (widest 0.25)" in v.detail


def test_the_cells_an_equivalent_eps_interval_spans():
    grid = [0.22, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0]
    assert claims.cells_spanned(0.33, 0.45, grid) == [(0.3, 0.4), (0.4, 0.5)]
    assert claims.cells_spanned(0.6, 0.7, grid) == [(0.5, 0.75)]
    assert claims.cells_spanned(math.nan, 0.24, grid) == [(0.22, 0.25)]    # censored below the grid
    assert claims.cells_spanned(math.nan, math.nan, grid) == [(0.22, 0.25)]  # wholly below it
    assert claims.cells_spanned(0.8, 1.0, grid) == [(0.75, 1.0)]           # at or beyond the grid's end
    assert claims.cells_spanned(0.4, 0.4, grid) == [(0.3, 0.4)]            # on a grid radius
    assert claims.cells_spanned(0.3, 0.5, [0.5]) == []


def test_claim_3_says_how_many_test_points_would_decide_it():
    # an estimate inside the band whose 90 % interval pokes out on one side by a factor 2 of the room: 4x the n
    assert claims.points_to_decide(1000, 0.50, 0.30, 0.60, (0.40, 0.60)) == 4000
    assert claims.points_to_decide(1000, 0.70, 0.55, 0.85, (0.40, 0.60)) == 2250  # outside: (0.15 / 0.10)^2
    assert claims.points_to_decide(1000, math.nan, 0.3, 0.5, (0.4, 0.6)) is None
    # above the band, only the lower end decides: an upper end censored beyond the grid does not matter
    assert claims.points_to_decide(1000, 0.70, 0.55, math.inf, (0.40, 0.60)) == 2250
    assert claims.points_to_decide(1000, 0.50, 0.30, math.inf, (0.40, 0.60)) is None
