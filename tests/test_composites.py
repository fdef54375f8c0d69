"""Composites: frozen backbones, a PGD-trained head, and weighted composite ensembles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluate import evaluate
from robust_ensembles.finetune import finetune
from robust_ensembles.models.architectures import small_cnn
from robust_ensembles.models.composites import Composite
from robust_ensembles.models.members import load_model
from robust_ensembles.store import Run
from robust_ensembles.train import train
from robust_ensembles.training.composite_training import CompositeTraining
from tests.conftest import TINY, clean_test_accuracy, compose_train

NORM_A = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
NORM_B = {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}


def backbones(width_natural: int = 4):
    torch.manual_seed(0)
    robust = small_cnn(num_classes=5, normalization=NORM_A, width=4, depth=2).eval()
    natural = small_cnn(num_classes=5, normalization=NORM_B, width=width_natural, depth=3).eval()
    return robust, natural


def test_head_copying_the_robust_head_gives_the_robust_predictions():
    robust, natural = backbones()
    comp = Composite(robust, natural, head_init="robust")
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(comp(x), robust(x), atol=1e-5)
    assert comp.head.weight[:, robust.feature_dim:].abs().sum() == 0


def test_backbones_of_different_widths_compose_and_the_head_width_comes_from_them():
    robust, natural = backbones(width_natural=6)
    comp = Composite(robust, natural)
    assert comp.head.in_features == robust.feature_dim + natural.feature_dim == 8 + 24
    assert comp(torch.rand(2, 3, 16, 16)).shape == (2, 5)


def test_only_the_head_trains_and_backbones_stay_in_eval_mode():
    robust, natural = backbones()
    comp = Composite(robust, natural)
    comp.train()
    assert comp.training and not robust.training and not natural.training
    assert [n for n, p in comp.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    attack = PGD(eps=0.4, norm="l2", steps=2, rel_step_size=2.5)
    module = CompositeTraining(comp, attack=attack, eval_attack=attack, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                               scheduler=None, test_eps=[0.4], train_nat_metrics=False, channels_last=False)
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(comp.head.weight), id(comp.head.bias)}
    with pytest.raises(ConfigError, match="trains a Composite"):
        CompositeTraining(robust, attack=attack, eval_attack=attack, optimizer=None, scheduler=None, test_eps=[],
                          train_nat_metrics=False, channels_last=False)


def test_the_attack_gradient_flows_through_both_backbones():
    robust, natural = backbones()
    comp = Composite(robust, natural)
    seen = {}
    hooks = [m.backbone.register_full_backward_hook(
        lambda mod, gin, gout, name=name: seen.setdefault(name, []).append(gout[0].abs().sum().item()))
        for name, m in (("robust", robust), ("natural", natural))]
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 5, (8,))
    PGD(eps=0.4, norm="l2", steps=2, rel_step_size=2.5)(comp, x, y)
    for h in hooks:
        h.remove()
    assert min(seen["robust"]) > 0 and min(seen["natural"]) > 0
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(comp(xr), y), xr)
    assert g.abs().sum() > 0


@pytest.fixture
def composite_store(tmp_path):
    base = [*TINY, "trainer.limit_train_batches=3"]
    for alpha in (0.4, 0.3, 0.05):
        train(compose_train([*base, f"alpha={alpha}", "seed=0"], tmp_path))
    return base


def test_finetune_freezes_backbones_and_skips_when_done(composite_store, tmp_path):
    cfg = compose_train([*composite_store, "seed=0", "composite.max_epochs=2"], tmp_path, config_name="finetune")
    metrics = finetune(cfg)
    root = tmp_path / "store"
    (entry,) = [p.parent for p in root.glob("*/COMPLETE") if "backbones" in Run.at(p.parent).identity]
    run = Run.at(entry)
    comp = load_model(run)
    for role in ("robust", "natural"):
        stored = load_model(Run.at(root / run.identity["backbones"][role])).state_dict()
        now = getattr(comp, role).state_dict()
        assert all(torch.equal(stored[k], now[k]) for k in stored), role  # bit-identical after fine-tuning
    assert run.identity["composite"]["eps"] == 0.4 and run.identity["attack"]["eps"] == 0.4
    assert metrics["test/nat_acc"] == pytest.approx(clean_test_accuracy(comp, cfg), abs=1e-6)  # the stored composite's
    stamp = (entry / "COMPLETE").stat().st_mtime_ns
    assert finetune(compose_train([*composite_store, "seed=0", "composite.max_epochs=2"], tmp_path,
                                  config_name="finetune")) == metrics
    assert (entry / "COMPLETE").stat().st_mtime_ns == stamp


def test_missing_backbone_names_the_train_command(composite_store, tmp_path):
    cfg = compose_train([*composite_store, "seed=0", "composite.robust.alpha=0.7"], tmp_path, config_name="finetune")
    with pytest.raises(ConfigError, match=r"composite.robust: no trained backbone at alpha=0.7 seed=0.*robust_ensembles.train"):
        finetune(cfg)


def test_weighted_composite_ensemble_evaluates_as_one_model(composite_store, tmp_path):
    for extra in ([], ["composite=paper_b"]):
        finetune(compose_train([*composite_store, "seed=0", "composite.max_epochs=1", *extra], tmp_path,
                               config_name="finetune"))
    common = [*composite_store, "seed=0", "composite.max_epochs=1", "evaluation.eps_grid=[0,0.25,0.5]",
              "evaluation.attack.steps=2", "evaluation.attack.target_classes=1", "evaluation.attack.targeted_steps=2"]
    r = evaluate(compose_train([*common, "members=paper_composites"], tmp_path, config_name="evaluate"))
    assert r["K"] == 2 and r["weights"] == pytest.approx([0.9, 0.1]) and "2x composite" in r["label"]
    assert all(m["backbones"] for m in r["members"])
    one = evaluate(compose_train([*common, "members=composite"], tmp_path, config_name="evaluate"))
    assert one["K"] == 1 and one["label"].startswith("composite (0.4, 0.05)@0.4")
    with pytest.raises(ConfigError, match="sum to 1"):
        evaluate(compose_train([*common, "members=paper_composites", "ensemble.weights=[0.5,0.6]"], tmp_path,
                               config_name="evaluate"))
    with pytest.raises(ConfigError, match="Fine-tune it first: python -m robust_ensembles.finetune"):
        evaluate(compose_train([*common, "members=composite", "composite.max_epochs=3"], tmp_path,
                               config_name="evaluate"))
    with pytest.raises(ConfigError, match="no trained backbone at alpha=0.4 seed=1"):
        evaluate(compose_train([*common, "members=composite", "seed=1"], tmp_path, config_name="evaluate"))
