"""The alpha recommender: the search on a stubbed store whose robust gap is a known function of alpha
(finds the crossing, keeps to the budget, a rerun trains nothing, the test set only after the
choice), the one-line errors, and the store-backed run on tiny trained models."""

from __future__ import annotations

import json

import pytest

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.recommend import recommender
from robust_ensembles.recommend.search import VAL, AlphaSearch, Settings, SyntheticBackend
from robust_ensembles.stats.paired import paired_difference
from robust_ensembles.train import train
from tests.conftest import compose_train

T = 0.5          # target eps
N = 1000         # validation / test points


class Stub(SyntheticBackend):
    def __init__(self, **kw):
        super().__init__(T, n=N, **kw)

    def passes(self, alpha, K, margin=0.01, level=0.95):
        """The constraint, computed directly from the known counts (not through the search's code path)."""
        (_, r), (_, r1) = self.counts(alpha, K), self.single
        return paired_difference([i < r for i in range(self.n)], [i < r1 for i in range(self.n)], level).low > -margin


def settings(**kw) -> Settings:
    base = dict(target_eps=T, bracket=(0.25, 1.0), resolution=0.02, budget=40, margin=0.01, level=0.95)
    return Settings(**{**base, **kw})


def smallest_passing(stub: Stub, K: int, **kw) -> float:
    """Brute force over every alpha the search may try: the smallest whose K-ensemble meets the constraint."""
    search = AlphaSearch(settings(**kw), stub, log=lambda m: None)
    return min(a for a in search.candidates() if stub.passes(a, K))


@pytest.mark.parametrize("crossing, slope", [(0.16, 0.4), (0.23, 0.2), (0.3, 0.4), (0.35, 0.2), (0.44, 0.1)])
def test_search_finds_the_known_crossing_within_the_resolution_and_keeps_to_the_budget(crossing, slope):
    stub = Stub(crossing=crossing, slope=slope)
    truth = smallest_passing(stub, 4)
    result = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    assert result.chosen is not None and truth <= result.chosen.alpha <= truth + 0.02 + 1e-9
    assert result.chosen.passes and result.chosen.alpha == min(t.alpha for t in result.trials if t.passes)
    assert all(not t.passes for t in result.trials if t.alpha < result.chosen.alpha)
    trained = sum(len(s) for _, s in stub.train_calls)
    assert trained == result.trained <= 40
    # far fewer alphas than the brute-force grid (20 points from 0.12 to 0.5)
    assert len(result.trials) <= 6, [t.alpha for t in result.trials]


def test_a_rerun_trains_nothing_and_reuses_stored_alphas():
    stub = Stub(crossing=0.3)
    first = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    calls = list(stub.train_calls)
    again = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    assert stub.train_calls == calls and again.trained == 0
    assert again.chosen.alpha == first.chosen.alpha
    # an alpha already in the store near the interpolated point is evaluated instead of training a new one
    stub = Stub(crossing=0.3, stored=[(0.3, s) for s in range(4)])
    result = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    assert 0.3 in [t.alpha for t in result.trials]
    assert all(a != 0.3 for a, _ in stub.train_calls)


def test_the_budget_stops_the_search_and_says_so():
    stub = Stub(crossing=0.3)
    # bracketing costs 8 models at K=4 (alpha 0.125 and 0.5, four seeds each; the single model is seed 0 at 0.5)
    result = AlphaSearch(settings(budget=9), stub, log=lambda m: None).search(4)
    assert sum(len(s) for _, s in stub.train_calls) == 8 and len(result.trials) == 2
    assert "search.budget=9 spent" in result.stop and result.chosen.alpha == 0.5
    with pytest.raises(ConfigError, match=r"search.budget=7 is too small to bracket alpha at K=4.*at least 8"):
        AlphaSearch(settings(budget=7), Stub(), log=lambda m: None).search(4)


def test_no_alpha_meets_the_constraint_and_the_low_end_already_meets_it():
    stub = Stub(crossing=0.7)  # even alpha = eps_t falls short
    result = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    assert result.chosen is None and "misses the constraint" in result.stop and len(result.trials) == 1
    stub = Stub(crossing=0.0)
    result = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    assert result.chosen.alpha == 0.125 and "lower end" in result.stop


def test_the_bracket_ends_are_exact_even_off_the_grid_and_stored_alphas_are_tried_first():
    # eps_t = 0.35 is not on the 0.02 grid: the upper end is still the single model's own radius
    stub = Stub(crossing=0.2)
    stub.t = 0.35  # the single model is the one trained at 0.35
    search = AlphaSearch(settings(target_eps=0.35), stub, log=lambda m: None)
    assert search.bracket() == (0.0875, 0.35) and search.candidates()[-1] == 0.35
    result = search.search(4)
    assert result.trials[0].alpha == 0.35 and (0.35, 1, VAL) in stub.calls
    truth = min(a for a in search.candidates() if stub.passes(a, 4))
    assert truth <= result.chosen.alpha <= truth + 0.02 + 1e-9
    # Table 2 right's alphas already stored: bisected for free, and the lower end is never trained
    stored = [(a, s) for a in (0.22, 0.25, 0.3, 0.4, 0.5) for s in range(4)]
    stub = Stub(crossing=0.28, stored=stored)
    result = AlphaSearch(settings(), stub, log=lambda m: None).search(4)
    tried = [t.alpha for t in result.trials]
    assert tried[:3] == [0.5, 0.3, 0.25] and 0.125 not in tried
    assert all(a not in (0.125, 0.22, 0.25, 0.3, 0.4, 0.5) for a, _ in stub.train_calls)
    assert stub.passes(result.chosen.alpha, 4) and not stub.passes(round(result.chosen.alpha - 0.02, 6), 4)


def test_smallest_k_meeting_the_constraint_with_a_natural_gain():
    stub = Stub(crossing=0.4, per_K=0.02, gain_per_K=0.01)
    s = settings(min_gain=0.05)
    results = AlphaSearch(s, stub, log=lambda m: None).smallest_K([1, 2, 4, 8])
    assert [r.K for r in results][-1] == results[-1].K and results[-1].gain_ok
    assert all(not r.gain_ok for r in results[:-1])
    # brute force: the first K whose smallest passing alpha gains at least 5 points (lower end of the interval)
    def gain(K):
        a = smallest_passing(stub, K)
        (n_e, _), (n_s, _) = stub.counts(a, K), stub.single
        return paired_difference([i < n_e for i in range(N)], [i < n_s for i in range(N)]).low
    expected = next(K for K in (1, 2, 4, 8) if gain(K) >= 0.05)
    assert results[-1].K == expected


def test_no_k_gains_enough_and_the_report_says_so_without_touching_the_test_set(tmp_path):
    stub = Stub(crossing=0.3)
    cfg = recommend_cfg(tmp_path, "K=null", "search.min_gain=0.5", "search.K_values=[1,2]")
    summary = recommender.recommend(cfg, [], backend=stub)
    assert summary["alpha"] is None and summary["test"] is None and "gains search.min_gain=0.5" in summary["no_answer"]
    assert all(split == VAL for _, _, split in stub.calls)
    md = (tmp_path / "reports" / "tiny" / "recommend-eps0.5-Kmin.md").read_text()
    assert "**No recommendation**: no K of search.K_values=[1, 2] gains" in md and "## Test" not in md


@pytest.mark.parametrize("bad, message", [
    (dict(target_eps=0.0), "target_eps=0.0 must be a number > 0"),
    (dict(level=1.5), "search.level=1.5 must be in \\(0, 1\\)"),
    (dict(bracket=(0.25,)), "search.bracket=\\[0.25\\] must be two numbers"),
    (dict(margin=-0.01), "search.margin=-0.01 must be >= 0"),
    (dict(bracket=(0.5, 0.25)), "search.bracket=\\[0.5, 0.25\\] must be two fractions"),
    (dict(budget=-1), "search.budget=-1 must be an integer >= 0"),
])
def test_bad_settings_get_one_clear_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        settings(**bad)


def test_k_below_one_is_refused():
    with pytest.raises(ConfigError, match="K=0 must be an integer >= 1"):
        AlphaSearch(settings(), Stub(), log=lambda m: None).search(0)


def recommend_cfg(tmp_path, *over):
    return compose_train(["scale=tiny", "target_eps=0.5", "logger=none", *over], tmp_path, config_name="recommend")


def test_the_test_set_is_read_only_after_the_choice_and_the_report_is_written(tmp_path):
    stub = Stub(crossing=0.3)
    cfg = recommend_cfg(tmp_path, "K=4")
    summary = recommender.recommend(cfg, [], backend=stub)
    splits = [split for _, _, split in stub.calls]
    first_test = splits.index("test")
    assert all(s == VAL for s in splits[:first_test])
    assert stub.calls[first_test:] == [(summary["alpha"], 4, "test"), (0.5, 1, "test")]
    md = (tmp_path / "reports" / "tiny" / "recommend-eps0.5-K4.md").read_text()
    assert f"Recommended: alpha = {summary['alpha']:g} with K = 4" in md and "## Test (evaluated once, after the choice" in md
    doc = json.loads((tmp_path / "reports" / "tiny" / "recommend-eps0.5-K4.json").read_text())
    assert doc["alpha"] == summary["alpha"] and doc["models_trained"] == sum(len(s) for _, s in stub.train_calls)
    assert (tmp_path / "reports" / "tiny" / "recommend-eps0.5-K4.png").stat().st_size > 0


def test_on_the_store_it_reuses_trained_models_shares_table1_records_and_reads_test_last(tmp_path):
    """Tiny models trained beforehand: a zero budget trains nothing; the upper end, the single model and the
    lower end are read on validation (Table 1's own records), then the choice and the single model once on
    the test set (Table 1's rows)."""
    from robust_ensembles.tables.table_run import TableRun

    for alpha, seed in [(0.5, 0), (0.125, 0)]:
        train(compose_train(["experiment=tiny", f"alpha={alpha}", f"seed={seed}"], tmp_path))
    paths = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store", "logger=none"]
    own = ["scale=tiny", "target_eps=0.5", "K=1", "search.budget=0", "search.margin=1.0"]  # margin 1: every alpha meets it
    cfg = recommend_cfg(tmp_path, *own[2:])
    backend = recommender.StoreBackend(cfg, [*own, *paths])
    assert backend.missing(0.5, 1) == [] and backend.missing(0.5, 2) == [1] and backend.stored_alphas(1) == [0.125, 0.5]
    summary = recommender.recommend(cfg, [*own, *paths], backend=backend)
    assert summary["alpha"] == 0.125 and summary["models_trained"] == 0
    # (at K=1 the upper end is the single model itself: one validation record serves both)
    assert backend.evaluated == [(0.5, 1, "val"), (0.5, 1, "val"), (0.125, 1, "val"), (0.125, 1, "test"), (0.5, 1, "test")]
    assert summary["test"]["single"]["n"] == summary["test"]["ensemble"]["n"] > 0
    records = sorted((tmp_path / "store" / "records" / "curve").glob("*.json"))
    assert len(records) == 4
    splits = [json.loads(p.read_text())["spec"]["test"]["split"] for p in records]
    assert sorted(splits) == ["test", "test", "val", "val"]
    # Table 1 at the same scale reads the very same records: its choice of alpha and its single-model row
    table = TableRun("table1", "tiny", paths, "stored")
    table.evaluate_row(["alpha=0.5", "K=1", "evaluation.eps_grid=[0,0.5]", "evaluation.split=val"], autoattack=False)
    table.evaluate_row(["members=seeds", "alpha=0.5", "K=1"])
    assert sorted((tmp_path / "store" / "records" / "curve").glob("*.json")) == records
    # models the search trains skip their end-of-training test
    asked = []
    backend.table.multirun = lambda module, overrides: asked.append((module, overrides))
    backend.train(0.3, [0, 1])
    assert asked == [("robust_ensembles.train", ["alpha=0.3", "seed=0,1", "run_test=false"])]
