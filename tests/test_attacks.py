"""PGD stays in the ball and the image box, gets stronger with eps, and touches no weight gradient."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.data import make_synthetic
from robust_ensembles.models.architectures import small_cnn

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def pgd(**kw):
    args = dict(eps=0.5, norm="l2", steps=5, rel_step_size=2.5, random_start=True, keep_best=False)
    return PGD(**{**args, **kw})


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained (naturally) on generated data to high clean accuracy."""
    torch.manual_seed(0)
    data = make_synthetic(n_train=256, n_test=128, num_classes=4, image_size=16, noise=0.15, seed=0)
    model = small_cnn(num_classes=4, normalization=NORM, width=8, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data["train_x"].float() / 255, data["train_y"]
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, data["test_x"].float() / 255, data["test_y"]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adversarial_examples_stay_in_ball_and_box(trained, norm):
    model, x, y = trained
    eps = 0.5 if norm == "l2" else 8 / 255
    x_adv = pgd(norm=norm, eps=eps, keep_best=True)(model, x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert size.max().item() <= eps * (1 + 1e-5)
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert (size > 0).all()  # the attack moved every image


def test_accuracy_falls_monotonically_with_eps(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean > 0.9
    attack = pgd(steps=10, keep_best=True)
    accs = [accuracy(model, attack(model, x, y, eps=e), y) for e in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert accs[0] == clean
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < clean - 0.3, accs  # a large radius breaks a naturally trained model


def test_attack_leaves_no_weight_gradient_and_restores_mode(trained):
    model, x, y = trained
    model.train()
    for p in model.parameters():
        p.grad = None
    pgd()(model, x[:16], y[:16])
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored
    model.eval()


def test_attack_runs_model_in_eval_mode(trained):
    model, x, y = trained
    seen = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    model.train()
    try:
        pgd(steps=2)(model, x[:8], y[:8])
    finally:
        hook.remove()
        model.eval()
    assert seen and not any(seen)


def test_keep_best_is_never_weaker_than_last_iterate(trained):
    model, x, y = trained
    torch.manual_seed(1)
    last = pgd(steps=3, keep_best=False)(model, x, y, eps=0.3)
    torch.manual_seed(1)
    best = pgd(steps=3, keep_best=True)(model, x, y, eps=0.3)
    loss = lambda xa: F.cross_entropy(model(xa), y, reduction="none")
    with torch.no_grad():
        assert (loss(best) >= loss(last) - 1e-5).all()


def test_step_size_follows_robustness_convention():
    attack = pgd(steps=7)
    assert attack.step_size_for(0.5) == pytest.approx(2.5 * 0.5 / 7)
    assert pgd(step_size=0.1).step_size_for(0.5) == 0.1


def test_zero_eps_returns_clean_input(trained):
    model, x, y = trained
    assert torch.equal(pgd(eps=0.0)(model, x[:4], y[:4]), x[:4])


@pytest.mark.parametrize("kw,message", [
    ({"eps": -0.1}, "attack.eps=-0.1 is negative"),
    ({"steps": 0}, "attack.steps=0 must be an integer >= 1"),
    ({"norm": "l3"}, "attack.norm='l3' is not a known norm"),
    ({"rel_step_size": -1.0}, "attack.rel_step_size=-1.0 must be > 0"),
    ({"rel_step_size": None}, "give step_size or rel_step_size"),
])
def test_bad_attack_config_is_refused_with_its_key(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pgd(**kw)


def test_negative_eps_at_call_time_is_refused(trained):
    model, x, y = trained
    with pytest.raises(ConfigError, match="negative"):
        pgd()(model, x[:2], y[:2], eps=-1.0)


@pytest.mark.parametrize("attack", ["pgd", "autoattack"])
def test_attacks_restore_each_members_own_mode(trained, attack):
    """A freshly built Ensemble is in train mode while its loaded members are in eval mode: after an
    attack the members must still be in eval mode (BatchNorm on running statistics). Restoring only
    the wrapper's flag flipped them to train mode, and a CPU AutoAttack record then read 38.4 %
    for a model AutoAttack itself had measured at 31.0 %."""
    from robust_ensembles.attacks.autoattack import AutoAttack
    from robust_ensembles.models.ensembles import Ensemble
    model, x, y = trained
    ens = Ensemble([model, model])
    assert ens.training and not model.training
    clean = accuracy(ens, x[:32], y[:32])
    if attack == "pgd":
        pgd()(ens, x[:32], y[:32])
    else:
        AutoAttack(eps=0.5, norm="l2", version="custom", attacks=["apgd-ce"], seed=0, batch_size=32)(ens, x[:32], y[:32])
    assert ens.training and not any(m.training for m in model.modules())
    assert accuracy(ens, x[:32], y[:32]) == clean


# ---------------------------------------------------------------- APGD: the strong evaluation attack
def apgd(**kw):
    from robust_ensembles.attacks.autoattack import APGD
    args = dict(eps=0.5, norm="l2", steps=20, restarts=1, target_classes=3, targeted_steps=20, rho=0.75, seed=0)
    return APGD(**{**args, **kw})


def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


@pytest.mark.parametrize("eps", [0.25, 0.5, 1.0])
def test_apgd_is_never_weaker_than_pgd_per_point(trained, eps):
    """Every point the former evaluation PGD (20 steps, keep-best) flips, the default evaluation attack
    (conf/attack/apgd_eval.yaml, as configured) flips too."""
    from omegaconf import OmegaConf

    from robust_ensembles import CONFIG_DIR
    from robust_ensembles.attacks.autoattack import APGD
    model, x, y = trained
    torch.manual_seed(0)
    default = OmegaConf.load(CONFIG_DIR / "attack" / "apgd_eval.yaml")
    default.seed = 0
    assert default._target_ == "robust_ensembles.attacks.autoattack.APGD"
    by_pgd = correct(model, pgd(steps=20, keep_best=True)(model, x, y, eps=eps), y)
    by_apgd = correct(model, APGD(**{k: v for k, v in default.items() if k != "_target_"})(model, x, y, eps=eps), y)
    assert not (by_apgd & ~by_pgd).any(), f"points APGD left standing that PGD flipped: {(by_apgd & ~by_pgd).sum()}"
    assert by_apgd.float().mean() <= by_pgd.float().mean()


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 8 / 255)])
def test_apgd_examples_stay_in_ball_and_box(trained, norm, eps):
    model, x, y = trained
    x_adv = apgd(norm=norm)(model, x, y, eps=eps)
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert size.max().item() <= eps * (1 + 1e-5)
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1


def test_apgd_runs_in_eval_mode_leaves_no_weight_gradient_and_restores_modes(trained):
    model, x, y = trained
    seen = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    model.train()
    for p in model.parameters():
        p.grad = None
    try:
        apgd(steps=3, targeted_steps=3)(model, x[:16], y[:16])
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    model.eval()


def test_apgd_targeted_part_only_adds_flips(trained):
    model, x, y = trained
    ce_only = correct(model, apgd(target_classes=0)(model, x, y, eps=0.5), y)
    both = correct(model, apgd()(model, x, y, eps=0.5), y)
    assert not (both & ~ce_only).any()


def test_apgd_doubled_doubles_both_parts():
    a = apgd(steps=10, targeted_steps=7)
    d = a.doubled()
    assert (d.steps, d.targeted_steps, a.steps) == (20, 14, 10)
    assert "APGD-CE-20+T-14x3" == d.name()


@pytest.mark.parametrize("kw,message", [
    ({"eps": -0.1}, "evaluation.attack.eps=-0.1 is negative"),
    ({"steps": -1}, "evaluation.attack.steps=-1 must be an integer >= 0"),
    ({"steps": 0, "target_classes": 0}, "evaluation.attack: steps=0 and target_classes=0 attack nothing"),
    ({"target_classes": -1}, "evaluation.attack.target_classes=-1 must be an integer >= 0"),
    ({"norm": "l3"}, "evaluation.attack.norm='l3' is not a known norm"),
    ({"rho": 1.5}, "evaluation.attack.rho=1.5 must be in"),
])
def test_bad_apgd_config_is_refused_with_its_key(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apgd(**kw)


def test_autoattack_custom_subset_runs_apgd_ce_with_the_restarts_asked_and_keys_them_only_when_set(monkeypatch):
    """pyautoattack runs a custom subset with its constructor's settings: APGD-CE with 5 restarts, where the
    standard version runs 1 (L2). `apgd_restarts` sets them; a record's settings name it only when set, so
    records made before the option keep their keys."""
    from pyautoattack import AutoAttack as PyAutoAttack

    from robust_ensembles.attacks.autoattack import AutoAttack
    from robust_ensembles.evaluation.records import autoattack_settings
    from robust_ensembles.tables.claims import settings_name

    seen = []
    monkeypatch.setattr(PyAutoAttack, "run_standard_evaluation", lambda self, x, y, **kw: (
        seen.append((self.attacks_to_run, self.apgd.n_restarts, self.apgd_targeted.n_target_classes)), (x, None))[1])
    model, x, y = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10)), torch.rand(2, 3, 2, 2), torch.tensor([0, 1])
    subset = dict(eps=0.5, norm="l2", version="custom", attacks=["apgd-ce", "apgd-t"], seed=0, batch_size=2)
    default, one = AutoAttack(**subset), AutoAttack(**subset, apgd_restarts=1)
    default(model, x, y)
    one(model, x, y)
    AutoAttack(eps=0.5, norm="l2", version="standard", attacks=None, seed=0, batch_size=2)(model, x, y)
    assert [s[1:] for s in seen] == [(5, 9), (1, 9), (1, 9)]
    assert "apgd_restarts" not in autoattack_settings(default) and autoattack_settings(one)["apgd_restarts"] == 1
    # the claims name the two apart where a model has records of both
    names = [settings_name(json.dumps(autoattack_settings(a))) for a in (default, one)]
    assert names == ["AutoAttack custom [apgd-ce, apgd-t]", "AutoAttack custom [apgd-ce, apgd-t], APGD-CE 1 restart(s)"]
    for bad in ({"version": "standard", "attacks": None, "apgd_restarts": 1}, {"apgd_restarts": 0}):
        with pytest.raises(ConfigError, match=r"autoattack.apgd_restarts=\d must be null \(AutoAttack's 1 in the "
                                              r"standard version, 5 in a custom one\) or, with autoattack.version=custom"):
            AutoAttack(**{**subset, **bad})
    with pytest.raises(ConfigError, match=r"autoattack.apgd_restarts=1 sets APGD-CE's restarts, but autoattack.attacks="
                                          r"\['apgd-t'\] runs no apgd-ce; add it"):
        AutoAttack(**{**subset, "attacks": ["apgd-t"], "apgd_restarts": 1})
