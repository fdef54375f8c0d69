"""Accuracy curves, AUC, results on disk, and the evaluate entry point end to end."""

from __future__ import annotations

import json

import pytest
import torch

from robust_ensembles import store
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation import outcomes
from robust_ensembles.evaluation.curves import Curve, auc, curve_from_min_flip
from robust_ensembles.evaluate import evaluate
from robust_ensembles.evaluation.records import VERSIONS
from robust_ensembles.train import train
from tests.conftest import TINY, compose_train


def test_auc_of_a_linear_curve_equals_its_closed_form():
    eps = [i * 0.05 for i in range(11)]
    acc = [1 - e for e in eps]  # (1/0.5) * integral_0^0.5 (1 - e) de = 0.75
    assert auc(eps, acc, 0.5) == pytest.approx(0.75)
    assert auc(eps, acc, 0.25) == pytest.approx((0.25 - 0.25**2 / 2) / 0.25)
    step = [1.0] * 5 + [0.0] * 6  # 1 up to 0.2, then 0 from 0.25: area = 0.2 + 0.05/2
    assert auc(eps, step, 0.5) == pytest.approx((0.2 + 0.025) / 0.5)
    with pytest.raises(ConfigError, match="not on the grid"):
        auc(eps, acc, 0.33)


def test_cumulative_accuracy_is_monotone_and_counts_the_smallest_flip():
    torch.manual_seed(0)
    eps = [0.0, 0.1, 0.2, 0.3]
    min_flip = torch.tensor([0.0, 0.1, 0.2, 0.3, float("inf"), float("inf"), 0.1, 0.3])
    c = curve_from_min_flip(min_flip, eps, per_eps_correct=None)
    assert c.cumulative == pytest.approx([7 / 8, 5 / 8, 4 / 8, 2 / 8])
    assert all(a >= b for a, b in zip(c.cumulative, c.cumulative[1:]))
    assert c.stderr[0] == pytest.approx(((7 / 8) * (1 / 8) / 8) ** 0.5)


def test_record_round_trips_and_a_stale_one_is_recomputed(tmp_path, caplog):
    c = curve_from_min_flip(torch.tensor([0.0, 0.2, float("inf")]), [0.0, 0.1, 0.2], torch.tensor([2, 2, 1]))
    spec = {"members": ["abc"], "eps_grid": [0, 0.1, 0.2]}
    put = store.put_record(tmp_path, "curve", spec, 1, {"curve": c.to_dict(), "auc": {"0.2": c.auc(0.2)}})
    back = store.get_record(tmp_path, "curve", spec, 1)
    assert back == json.loads(json.dumps(put)) and back["version"] == 1 and back["spec"] == spec
    assert store.get_record(tmp_path, "curve", {**spec, "members": ["xyz"]}, 1) is None  # another spec: absent
    assert store.get_record(tmp_path, "curve", spec, 2) is None  # written by code of another semantics version
    assert "stale curve record" in caplog.text and "recomputing" in caplog.text
    c2 = Curve(**{k: v for k, v in back["curve"].items() if k != "stderr"})
    assert c2.cumulative == c.cumulative and c2.stderr == pytest.approx(c.stderr) and c2.per_eps == c.per_eps


@pytest.fixture
def trained_store(tmp_path):
    over = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=4", "alpha=0.1"]
    for seed in (0, 1):
        train(compose_train([*over, f"seed={seed}"], tmp_path))
    return over


def eval_cfg(tmp_path, over, *extra):
    return compose_train([*over, "evaluation.eps_grid=[0,0.1,0.25,0.5]", "evaluation.attack.steps=3",
                          "evaluation.attack.target_classes=1", "evaluation.attack.targeted_steps=3", *extra],
                         tmp_path, config_name="evaluate")


def test_evaluate_writes_result_and_plot_reuses_it_and_is_reproducible(trained_store, tmp_path, caplog):
    r = evaluate(eval_cfg(tmp_path, trained_store, "K=2"))
    (path,) = (tmp_path / "store" / "records" / "curve").glob("*.json")
    assert path.with_suffix(".png").is_file()
    c = r["curve"]
    assert r["K"] == 2 and len(r["members"]) == 2 and c["n"] == 64 and c["eps"] == [0.0, 0.1, 0.25, 0.5]
    assert all(a >= b for a, b in zip(c["cumulative"], c["cumulative"][1:]))
    assert all(cu <= pe + 1e-9 for cu, pe in zip(c["cumulative"], c["per_eps"]))
    assert c["max_norm_ratio"] <= 1 + 1e-5 and c["pixel_range"][0] >= 0 and c["pixel_range"][1] <= 1
    assert r["auc"]["0.5"] == pytest.approx(auc(c["eps"], c["cumulative"], 0.5))
    # per-point outcomes: each point's smallest flipping radius and its outcome at every radius
    pts = r["per_point"]
    assert len(pts["min_flip"]) == len(pts["correct_at"]) == 64
    for i, e in enumerate(c["eps"]):
        assert sum(f is None or f > e for f in pts["min_flip"]) == round(c["cumulative"][i] * 64)
        assert sum(row[i] == "1" for row in pts["correct_at"]) == round(c["per_eps"][i] * 64)
    assert r["device"] == "cpu" and r["precision"] == "32-true" and r["version"] == VERSIONS["curve"]
    assert r["threads"] == torch.get_num_threads()
    reused = evaluate(eval_cfg(tmp_path, trained_store, "K=2"))
    assert reused.pop("attacks") == [] and reused == json.loads(path.read_text())  # reused
    again = evaluate(eval_cfg(tmp_path, trained_store, "K=2", "evaluation.force=true"))
    assert again["curve"] == r["curve"]  # same seed, same numbers
    # a record of an older evaluation semantics (a number computed another way) is said stale and recomputed
    stale = json.loads(path.read_text())
    stale["version"], stale["curve"]["cumulative"] = VERSIONS["curve"] - 1, [0.0] * 4
    stale[store.DIGEST] = store.sha256_json({k: v for k, v in stale.items() if k != store.DIGEST})
    path.write_text(json.dumps(stale))
    redone = evaluate(eval_cfg(tmp_path, trained_store, "K=2"))
    assert redone["version"] == VERSIONS["curve"] and redone["curve"] == r["curve"]
    assert "stale curve record" in caplog.text and "recomputing" in caplog.text
    # a damaged record (a number changed on disk, its digest not) is said damaged and recomputed, never read
    damaged = json.loads(path.read_text())
    damaged["curve"]["cumulative"][1] = 1.0
    path.write_text(json.dumps(damaged))
    assert evaluate(eval_cfg(tmp_path, trained_store, "K=2"))["curve"] == r["curve"]
    assert "damaged curve record" in caplog.text and "does not match its digest" in caplog.text
    # a truncated one (a copy cut short) too
    path.write_text(path.read_text()[:200])
    assert evaluate(eval_cfg(tmp_path, trained_store, "K=2"))["curve"] == r["curve"]
    assert "unreadable" in caplog.text


def test_evaluate_refuses_k_beyond_the_trained_seeds(trained_store, tmp_path):
    with pytest.raises(ConfigError, match="K=3 needs 3 trained members.*found 2.*robust_ensembles.train"):
        evaluate(eval_cfg(tmp_path, trained_store, "K=3"))


def test_evaluate_refuses_weights_off_the_simplex(trained_store, tmp_path):
    with pytest.raises(ConfigError, match="sum to 1"):
        evaluate(eval_cfg(tmp_path, trained_store, "K=2", "ensemble.weights=[0.9,0.2]"))


CHEAP_AUTOATTACK = ["checks.autoattack.version=custom", "checks.autoattack.attacks=[apgd-ce]",
                    "checks.autoattack.apgd_iterations=10", "checks.square.square_queries=50"]


@pytest.mark.parametrize("autoattack", [
    pytest.param([], marks=pytest.mark.slow, id="standard"),  # standard AutoAttack: about 2 minutes here
    pytest.param(CHEAP_AUTOATTACK, id="apgd-ce"),
])
def test_check_mode_reports_every_check(trained_store, tmp_path, capsys, autoattack):
    r = evaluate(eval_cfg(tmp_path, trained_store, "K=2", "check=true", "checks.n=8", "checks.eps=0.25",
                          "evaluation.autoattack.eps=0.25", "evaluation.autoattack.n=8", *autoattack))
    aa = r["autoattack"]
    assert aa["n"] == 8 and aa["eps"] == 0.25 and aa["autoattack"] == ("custom" if autoattack else "standard")
    assert aa["autoattack_acc"] == sum(aa["autoattack_correct"]) / 8
    # the table's columns on AutoAttack's points: the evaluation attack's from the curve, and per point the worst case
    cols = outcomes.autoattack_columns(r)
    ours = [f is None or f > 0.25 for f in r["per_point"]["min_flip"][:8]]
    assert cols["attack"] == sum(ours) / 8
    assert cols["worst"] == sum(a and b for a, b in zip(ours, aa["autoattack_correct"])) / 8
    names = [c["name"] for c in r["checks"]]
    assert names == ["evaluation attack vs AutoAttack", "accuracy non-increasing in eps",
                     "near-zero accuracy at a very large eps", "doubling the attack's steps changes accuracy by < 1 SE",
                     "black-box Square no stronger than the white-box evaluation attack",
                     "adversarial examples inside the ball and in [0,1]"]
    out = capsys.readouterr().out
    assert out.count("[PASS]") + out.count("[FAIL]") == 6 and "AutoAttack" in out


def test_evaluation_on_the_validation_split(trained_store, tmp_path):
    r = evaluate(eval_cfg(tmp_path, trained_store, "K=1", "evaluation.split=val"))
    assert r["n"] == 32  # data.val_size of the synthetic preset, not the 64 test images
    t = evaluate(eval_cfg(tmp_path, trained_store, "K=1"))
    assert t["n"] == 64


def test_evaluation_attacks_in_fp32_whatever_precision_trained_the_model(tmp_path, monkeypatch):
    """On a GPU `trainer.precision` is bf16-mixed for training; the evaluation runs at
    `evaluation.precision` (fp32 by default) all the same, and records it."""
    from robust_ensembles.evaluation.curves import EnsembleEvaluation

    over = [*TINY, "alpha=0.1", "seed=0", "trainer.precision=bf16-mixed"]
    train(compose_train(over, tmp_path))
    autocast = []
    step = EnsembleEvaluation.test_step
    monkeypatch.setattr(EnsembleEvaluation, "test_step",
                        lambda self, *a: (autocast.append(torch.is_autocast_enabled("cpu")), step(self, *a))[1])
    fp32 = evaluate(compose_train([*over, "K=1", "evaluation.eps_grid=[0,0.5]"], tmp_path, config_name="evaluate"))
    assert fp32["precision"] == "32-true" and fp32["spec"]["evaluation"]["precision"] == "32-true"
    assert autocast and not any(autocast)  # no bf16 autocast while attacking
    autocast.clear()
    bf16 = evaluate(compose_train([*over, "K=1", "evaluation.eps_grid=[0,0.5]", "evaluation.precision=bf16-mixed"],
                                  tmp_path, config_name="evaluate"))
    assert all(autocast) and bf16["key"] != fp32["key"]  # the precision is part of the record's key


def test_evaluation_cost_is_estimated_from_records_of_the_same_device_kind(tmp_path):
    from robust_ensembles.evaluation.records import CURVE
    from robust_ensembles.tables.estimate import seconds_per_member_point

    from robust_ensembles.evaluation.request import evaluation_spec

    cfg = compose_train([*TINY, "evaluation.eps_grid=[0,0.5]"], tmp_path, config_name="evaluate")
    spec = {"evaluation": evaluation_spec(cfg), "check": False}  # as a curve record states it
    for device, wall in (("cpu", 20.0), ("NVIDIA H200", 1.0)):
        store.put_record(cfg.store.root, CURVE, {**spec, "device_for_test": device}, VERSIONS[CURVE],
                         {"K": 2, "n": 10, "wall_s": wall, "device": device, "experiment": cfg.name})
    assert seconds_per_member_point(cfg, CURVE, device="cpu") == pytest.approx(1.0)       # 20 s / (2 x 10)
    assert seconds_per_member_point(cfg, CURVE, device="NVIDIA H200") == pytest.approx(0.05)
    assert seconds_per_member_point(cfg, CURVE, device="NVIDIA H100 80GB HBM3") is None  # no record of that kind
    # a curve computed in the other memory format ran at another speed: it does not cost this one
    other = {**spec, "evaluation": {**spec["evaluation"], "channels_last": not cfg.evaluation.channels_last}}
    store.put_record(cfg.store.root, CURVE, {**other, "device_for_test": "other format"}, VERSIONS[CURVE],
                     {"K": 1, "n": 10, "wall_s": 1000.0, "device": "cpu", "experiment": cfg.name})
    assert seconds_per_member_point(cfg, CURVE, device="cpu") == pytest.approx(1.0)
    # another search of the grid costs differently: the scan's records do not cost a guided curve ...
    guided = compose_train([*TINY, "evaluation.eps_grid=[0,0.5]", "evaluation.search=guided"], tmp_path,
                           config_name="evaluate")
    assert seconds_per_member_point(guided, CURVE, device="cpu") is None
    # ... but clean accuracy alone (a grid of 0) is the same record whatever the search: it costs it
    clean = compose_train([*TINY, "evaluation.eps_grid=[0]"], tmp_path, config_name="evaluate")
    store.put_record(cfg.store.root, CURVE, {"evaluation": evaluation_spec(clean), "check": False}, VERSIONS[CURVE],
                     {"K": 1, "n": 10, "wall_s": 0.5, "device": "cpu", "experiment": cfg.name})
    for search in ("scan", "guided"):
        c = compose_train([*TINY, "evaluation.eps_grid=[0]", f"evaluation.search={search}"], tmp_path,
                          config_name="evaluate")
        assert seconds_per_member_point(c, CURVE, device="cpu") == pytest.approx(0.05)


def test_a_later_attack_on_the_same_model_and_points_is_picked_up_and_no_other_models(trained_store, tmp_path):
    """Any attack record stored later for a model (another radius, other AutoAttack settings) comes back
    with its evaluation, so the tables combine it per point; another model's records do not."""
    column = ["evaluation.autoattack.eps=0.25", "evaluation.autoattack.n=8", *CHEAP_AUTOATTACK]
    first = evaluate(eval_cfg(tmp_path, trained_store, "K=2", *column))
    assert [a["key"] for a in first["attacks"]] == [first["autoattack"]["key"]]
    later = evaluate(eval_cfg(tmp_path, trained_store, "K=2", "evaluation.autoattack.eps=0.5",
                              "evaluation.autoattack.n=16", *CHEAP_AUTOATTACK))
    again = evaluate(eval_cfg(tmp_path, trained_store, "K=2", *column))
    assert sorted(a["key"] for a in again["attacks"]) == sorted([first["autoattack"]["key"], later["autoattack"]["key"]])
    robust = outcomes.worst_case(again, 0.5)
    by_hand = torch.tensor([f is None or f > 0.5 for f in again["per_point"]["min_flip"]])
    for aa in (first["autoattack"], later["autoattack"]):
        by_hand[:aa["n"]] &= torch.tensor(aa["autoattack_correct"], dtype=torch.bool)
    assert robust.tolist() == by_hand.tolist()
    other = evaluate(eval_cfg(tmp_path, trained_store, "K=1"))  # another model: none of K=2's records
    assert other["attacks"] == []
    # the same members with other weights, or the same model on other points, are other evaluations
    weighted = evaluate(eval_cfg(tmp_path, trained_store, "K=2", "ensemble.weights=[0.3,0.7]", *column))
    assert [a["key"] for a in weighted["attacks"]] == [weighted["autoattack"]["key"]]
    on_val = evaluate(eval_cfg(tmp_path, trained_store, "K=2", "evaluation.split=val", *column))
    assert [a["key"] for a in on_val["attacks"]] == [on_val["autoattack"]["key"]]
    assert sorted(a["key"] for a in evaluate(eval_cfg(tmp_path, trained_store, "K=2"))["attacks"]) == sorted(
        a["key"] for a in again["attacks"])  # and none of theirs joins the first model's


class WeightsMovedAtTeardown:
    """A single-device strategy whose teardown moves the module's weights elsewhere ("meta"), as
    Lightning's teardown moves a GPU-evaluated module back to the CPU."""

    def __new__(cls, device: str = "cpu"):
        from pytorch_lightning.strategies import SingleDeviceStrategy

        class Strategy(SingleDeviceStrategy):
            def teardown(self):
                super().teardown()
                self.lightning_module.model.members.to("meta")

        return Strategy(device=device)


def test_the_record_names_the_device_the_attack_ran_on_not_where_teardown_left_the_weights(trained_store, tmp_path):
    target = f"{__name__}.WeightsMovedAtTeardown"
    r = evaluate(eval_cfg(tmp_path, trained_store, "K=1", f"+trainer.strategy._target_={target}"))
    assert r["device"] == "cpu"  # reading the module's parameters after teardown would say "meta"
