"""Claims (4) and (5) over seed replicates, on hand-made records: every kind of verdict."""

from __future__ import annotations

import math

import pytest
import torch

from robust_ensembles.claims import FAILS, HOLDS, INCONCLUSIVE, composites_vs_single, ensemble_beats_members, per_point_auc

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
    from robust_ensembles.curves import auc

    g = torch.Generator().manual_seed(3)
    r = draw(g, 500, 0.7, 0.4)
    curve = [sum(f is None or f > e for f in r["per_point"]["min_flip"]) / 500 for e in GRID]
    assert per_point_auc(r, 0.5).mean().item() == pytest.approx(auc(GRID, curve, 0.5))
    assert math.isclose(per_point_auc(r, 0.25).max().item(), 1.0)
