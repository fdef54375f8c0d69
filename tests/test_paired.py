"""Paired statistics, per-point combination of attacks, and the claims' verdicts on hand-made records."""

from __future__ import annotations

import math

import pytest
import torch

from robust_ensembles.evaluation import outcomes
from robust_ensembles.stats.paired import bootstrap_accuracies, paired_difference, percentile_interval
from robust_ensembles.tables import claims


def outcomes_from_counts(n11: int, n10: int, n01: int, n00: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=torch.bool)
    b = torch.tensor([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=torch.bool)
    return a, b


def test_paired_interval_matches_the_hand_computed_bonett_price_case():
    # 2x2 disagreement table: both right 600, only first 60, only second 40, both wrong 300 (n = 1000)
    a, b = outcomes_from_counts(600, 60, 40, 300)
    d = paired_difference(a, b, 0.95)
    # by hand: p10 = 61/1002, p01 = 41/1002, half = 1.959964 * sqrt((p10 + p01 - (p10 - p01)^2) / 1002)
    p10, p01 = 61 / 1002, 41 / 1002
    half = 1.959964 * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / 1002)
    assert (d.first_only, d.second_only, d.n) == (60, 40, 1000)
    assert d.estimate == pytest.approx(0.02)
    assert d.low == pytest.approx(p10 - p01 - half, abs=1e-6) and d.high == pytest.approx(p10 - p01 + half, abs=1e-6)
    assert d.low == pytest.approx(0.00024, abs=1e-4) and d.high == pytest.approx(0.03968, abs=1e-4)
    # two separate binomial errors would give a far wider interval: the pairing is what narrows it
    unpaired = 1.96 * math.sqrt(0.66 * 0.34 / 1000 + 0.64 * 0.36 / 1000)
    assert d.high - d.low < 2 * unpaired * 0.5


def test_paired_interval_agrees_with_a_brute_force_paired_bootstrap():
    g = torch.Generator().manual_seed(3)
    n = 2000
    shared = torch.rand(n, generator=g) < 0.6
    a = shared ^ (torch.rand(n, generator=g) < 0.08)
    b = shared ^ (torch.rand(n, generator=g) < 0.06)
    d = paired_difference(a, b)
    # brute force: resample points, read both models on the same draw, one at a time
    diffs = []
    for _ in range(1500):
        idx = torch.randint(0, n, (n,), generator=g)
        diffs.append((a[idx].float().mean() - b[idx].float().mean()).item())
    lo, hi = percentile_interval(diffs, 0.95)
    assert d.low == pytest.approx(lo, abs=0.004) and d.high == pytest.approx(hi, abs=0.004)
    # and the vectorised bootstrap the claims use reads the same distribution
    accs = bootstrap_accuracies(torch.stack([a, b]), 1500, seed=0)
    lo2, hi2 = percentile_interval((accs[:, 0] - accs[:, 1]).tolist(), 0.95)
    assert lo2 == pytest.approx(lo, abs=0.004) and hi2 == pytest.approx(hi, abs=0.004)


def record(min_flip: list, autoattack: dict | None = None, grid=(0, 0.25, 0.5, 0.75, 1.0)) -> dict:
    """A hand-made curve record: per point the smallest radius that flipped it (None = never)."""
    r = {"curve": {"eps": list(grid)}, "per_point": {"min_flip": list(min_flip)}}
    if autoattack:
        r["autoattack"] = autoattack
    return r


def aa_record(eps: float, autoattack: list[int]) -> dict:
    return {"eps": eps, "n": len(autoattack), "autoattack_correct": autoattack}


def test_worst_case_equals_the_accuracy_of_the_union_of_flipped_points():
    # curve: point 0 flipped at 0.25, point 1 clean-wrong, point 3 flipped at 0.5, others never; AutoAttack at
    # 0.5 on the first 4 points flips 0, 1 and 2 (point 2 by AutoAttack only, point 3 by the curve only)
    r = record([0.25, 0.0, None, 0.5, None, None], aa_record(0.5, [0, 0, 0, 1]))
    flipped_by = {"curve@<=0.5": {0, 1, 3}, "autoattack": {0, 1, 2}}
    union = set().union(*flipped_by.values())
    robust = outcomes.worst_case(r, 0.5)
    assert robust.tolist() == [i not in union for i in range(6)]
    assert robust.float().mean().item() == pytest.approx(1 - len(union) / 6)
    # below AutoAttack's radius only the curve counts
    assert outcomes.worst_case(r, 0.25).tolist() == [False, False, True, True, True, True]
    # the table's AutoAttack columns on AutoAttack's 4 points: each attack's own accuracy and their worst case
    cols = outcomes.autoattack_columns(r)
    assert (cols["autoattack"], cols["attack"], cols["worst"]) == (0.25, 0.25, 0.0)
    assert outcomes.worst_case(r, 0.0).tolist() == [True, False, True, True, True, True]


@pytest.mark.parametrize("aa, flagged", [([1, 1, 0, 1], False),   # AutoAttack 75 %, attack 75 %: no gap
                                          ([1, 0, 0, 1], True),    # AutoAttack 50 %: 25 points below the attack
                                          ([0, 1, 0, 1], True)])   # as low, on other points
def test_a_row_flags_autoattack_more_than_flag_gap_below_the_evaluation_attack(aa, flagged):
    from types import SimpleNamespace

    from robust_ensembles.tables.reports import row_cells
    t = SimpleNamespace(spec=SimpleNamespace(get=lambda k: None, target_eps=0.5), flag_gap=0.01)
    r = record([None, None, 0.25, None], aa_record(0.5, aa))   # the attack flips point 2 only: 75 %
    cells = row_cells(t, r, [0, 0.5])
    assert cells["AA eps=0.5"].endswith(" ⚠") == flagged
    assert cells["attack - AA"] == f"{100 * (0.75 - sum(aa) / 4):+.2f}"
    assert cells["attack eps=0.5 (AA points)"].startswith("75.00")


def test_paired_worst_case_drops_autoattack_unless_both_sides_have_it():
    with_aa = record([None] * 4, aa_record(0.5, [0, 1, 1, 1]))
    without = record([None] * 4)
    a, b = outcomes.paired_worst_case(with_aa, without, 0.5)
    assert a.all() and b.all()  # the same attacks on both sides: the curve only
    a, b = outcomes.paired_worst_case(with_aa, with_aa, 0.5)
    assert a.tolist() == [False, True, True, True]


def model_at(flip_eps: list) -> dict:
    return record(flip_eps)


def test_claim1_verdicts_of_each_kind():
    n = 2000
    single = record([None] * 1000 + [0.25] * 500 + [0.0] * 500)             # clean 75 %, robust at 0.5: 50 %
    better = record([None] * 1100 + [0.25] * 500 + [0.0] * 400)             # +5 points robust, +5 clean
    worse = record([None] * 900 + [0.25] * 700 + [0.0] * 400)              # -5 robust, +5 clean
    close = record([None] * 995 + [0.25] * 500 + [0.0] * 505)             # -0.25 robust, -0.25 clean
    v = claims.ensemble_vs_single(better, single, 0.5, 0.01, 0.95, "4x", "single")
    assert v.verdict == claims.HOLDS and v.numbers["robust"]["estimate"] == pytest.approx(100 / n)
    assert claims.ensemble_vs_single(worse, single, 0.5, 0.01, 0.95, "4x", "single").verdict == claims.FAILS
    assert claims.ensemble_vs_single(close, single, 0.5, 0.01, 0.95, "4x", "single").verdict == claims.INCONCLUSIVE
    assert "non-inferiority margin 1 points" in v.detail and "Bonett-Price" in v.detail


def test_claim2_verdicts_of_each_kind():
    base = [None] * 500 + [0.25] * 500
    grows_and_saturates = {1: record(base), 2: record([None] * 600 + [0.25] * 400),
                           4: record([None] * 650 + [0.25] * 350), 8: record([None] * 650 + [0.25] * 350)}
    assert claims.growth_with_k(grows_and_saturates, 0.5, 0.05, 0.95).verdict == claims.HOLDS
    still_growing = {1: record(base), 2: record([None] * 600 + [0.25] * 400), 4: record([None] * 700 + [0.25] * 300),
                     8: record([None] * 900 + [0.25] * 100)}
    assert claims.growth_with_k(still_growing, 0.5, 0.05, 0.95).verdict == claims.FAILS
    flat = {k: record(base) for k in (1, 2, 4, 8)}   # no gain and no loss: growth undecided, never "fails"
    assert claims.growth_with_k(flat, 0.5, 0.05, 0.95).verdict == claims.INCONCLUSIVE
    shrinks = {1: record(base), 2: record([None] * 480 + [0.25] * 520), 4: record([None] * 460 + [0.25] * 540),
               8: record([None] * 440 + [0.25] * 560)}  # a loss of 6 points: growth fails
    v = claims.growth_with_k(shrinks, 0.5, 0.05, 0.95)
    assert v.verdict == claims.FAILS and "Growth, K=8 - K=1" in v.detail and "(fails" in v.detail
    robust_on = lambda lo, hi: record([None if lo <= i < hi else 0.25 for i in range(1000)])
    # +0.5 points from K=1 to K=8 with 45 discordant points: neither a gain nor its absence is established
    noisy = {1: robust_on(0, 500), 2: robust_on(0, 500), 4: robust_on(10, 515), 8: robust_on(20, 525)}
    assert claims.growth_with_k(noisy, 0.5, 0.01, 0.95).verdict == claims.INCONCLUSIVE


def test_equivalent_eps_interval_on_hand_made_curves():
    n = 1000
    # singles trained at e, read at e: 60 % at 0.25, 50 % at 0.5, 40 % at 0.75, 30 % at 1.0
    singles = {e: record([None] * int(n * a) + [0.0] * (n - int(n * a))) for e, a in
               [(0.25, 0.6), (0.5, 0.5), (0.75, 0.4), (1.0, 0.3)]}
    # the ensemble: 55 % up to 0.5, 35 % at 0.75, 25 % at 1.0 -> ahead at 0.5 (+5), behind from 0.75 (-5): eq eps 0.625
    ens = record([None] * 250 + [1.0] * 100 + [0.75] * 200 + [0.0] * 450)
    point, lo, hi = claims.equivalent_eps_interval(ens, singles, samples=400, seed=0, level=0.95)
    assert point == pytest.approx(0.625)
    assert 0.5 < lo < point < hi < 0.75
    v = claims.equivalent_eps_about_2alpha(ens, singles, alpha=0.3, tolerance=0.2, samples=400, seed=0, level=0.95,
                                           label="4x alpha=0.3")
    assert v.verdict == claims.HOLDS  # band [0.48, 0.72] holds the interval
    assert claims.equivalent_eps_about_2alpha(ens, singles, 0.45, 0.1, 400, 0, 0.95, "x").verdict == claims.FAILS
    assert claims.equivalent_eps_about_2alpha(ens, singles, 0.34, 0.05, 400, 0, 0.95, "x").verdict == claims.INCONCLUSIVE


def test_equivalent_eps_verdict_when_the_interval_is_censored_by_the_grid():
    n = 400
    singles = {e: record([None] * int(n * a) + [0.0] * (n - int(n * a))) for e, a in
               [(0.25, 0.6), (0.5, 0.5), (0.75, 0.4), (1.0, 0.3)]}
    behind = record([None] * 80 + [0.0] * 320)            # 20 %: behind every single model ("< 0.25")
    ahead = record([None] * 300 + [0.0] * 100)            # 75 %: ahead at every eps ("> 1.0")
    v = claims.equivalent_eps_about_2alpha(behind, singles, 0.25, 0.2, 200, 0, 0.95, "x")
    assert v.verdict == claims.FAILS  # band [0.4, 0.6] lies above the grid's start, the value below it
    assert claims.equivalent_eps_about_2alpha(behind, singles, 0.125, 0.2, 200, 0, 0.95, "x").verdict == \
        claims.INCONCLUSIVE  # band [0.2, 0.3] reaches below the grid: "< 0.25" may lie inside it
    assert claims.equivalent_eps_about_2alpha(ahead, singles, 0.25, 0.2, 200, 0, 0.95, "x").verdict == claims.FAILS
    assert claims.equivalent_eps_about_2alpha(ahead, singles, 0.5, 0.2, 200, 0, 0.95, "x").verdict == \
        claims.INCONCLUSIVE  # "> 1.0" may lie inside [0.8, 1.2]


def later(eps: float, correct: list[int], version: str = "standard", attacks=None, key: str = "later") -> dict:
    """A later per-point attack record, as the store keeps it (settings in its spec)."""
    return {**aa_record(eps, correct), "key": key, "autoattack": version,
            "spec": {"autoattack": {"version": version, "attacks": attacks, "norm": "l2"}}}


def test_a_later_attack_record_joins_the_worst_case_per_point_and_shows_its_own_number():
    from types import SimpleNamespace

    from robust_ensembles.tables.reports import row_cells
    column = {**aa_record(0.5, [1, 1, 0, 1]), "key": "column", "autoattack": "custom",
              "spec": {"autoattack": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "norm": "l2"}}}
    # the curve flips point 5; the column flips point 2; a later standard AutoAttack at 0.35 on the first 5 points
    # flips points 0 and 2; a later one at 0.75 (larger than 0.5) flips point 1 and must not count at 0.5
    r = record([None, None, None, None, None, 0.25], column)
    r["attacks"] = [column, later(0.35, [0, 1, 0, 1, 1], key="l1"), later(0.75, [1, 0, 1, 1, 1], key="l2")]
    union = {5} | {2} | {0, 2}
    assert outcomes.worst_case(r, 0.5).tolist() == [i not in union for i in range(6)]
    assert outcomes.worst_case(r, 1.0).tolist() == [i not in union | {1} for i in range(6)]
    assert outcomes.worst_case(r, 0.25).tolist() == [True] * 5 + [False]  # no attack record at <= 0.25
    assert len(outcomes.point_attacks(r)) == 3  # the column counted once though listed twice
    t = SimpleNamespace(spec=SimpleNamespace(get=lambda k: None, target_eps=0.5), flag_gap=0.01)
    cells = row_cells(t, r, [0, 0.5])
    assert cells["eps=0.5"].startswith(f"{100 * 3 / 6:.2f}")
    assert cells["other attacks (own accuracy)"] == ("AutoAttack standard at eps=0.35 on 5 points: 60.00; "
                                                     "AutoAttack standard at eps=0.75 on 5 points: 80.00")


def test_paired_worst_case_counts_a_later_attack_only_when_both_sides_ran_the_same_one():
    a = record([None] * 4)
    b = record([None] * 4)
    a["attacks"] = [later(0.5, [0, 1, 1, 1])]
    b["attacks"] = [later(0.5, [1, 1, 0, 1], version="custom", attacks=["square"])]  # another procedure
    x, y = outcomes.paired_worst_case(a, b, 0.5)
    assert x.all() and y.all()
    b["attacks"].append(later(0.5, [1, 0, 1, 1], key="b-standard"))  # now both ran standard AutoAttack at 0.5
    x, y = outcomes.paired_worst_case(a, b, 0.5)
    assert x.tolist() == [False, True, True, True] and y.tolist() == [True, False, True, True]  # Square not on a
    v = claims.ensemble_vs_single(a, b, 0.5, 0.01, 0.95, "ens", "single")
    assert "run on both models: AutoAttack standard at eps=0.5 on the first 4 points" in v.detail
    assert "square" not in v.detail


def test_a_replicated_row_reads_its_replicates_under_their_common_attacks_and_names_the_rest():
    from types import SimpleNamespace

    from robust_ensembles.tables.reports import row_cells
    a, b = record([None] * 4), record([None] * 4)
    a["members"], b["members"] = [{"seed": 0}], [{"seed": 1}]
    a["attacks"] = [later(0.5, [0, 0, 1, 1], key="only-a")]  # run later on replicate a alone
    t = SimpleNamespace(spec=SimpleNamespace(get=lambda k: None, target_eps=0.5), flag_gap=0.01)
    cells = row_cells(t, [a, b], [0, 0.5])
    assert cells["eps=0.5"].startswith("100.00")  # both read under the curve alone, the same attacks
    assert cells["attacks not run on every replicate (left out of the cells)"] == \
        "AutoAttack standard at eps=0.5 on 4 points"
    assert "other attacks (own accuracy)" not in cells
    assert row_cells(t, a, [0, 0.5])["eps=0.5"].startswith("50.00")  # alone, its own attacks count
