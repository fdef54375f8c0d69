"""Ensembles average members correctly and are attacked as one model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.models.architectures import small_cnn
from robust_ensembles.models.ensembles import Ensemble
from robust_ensembles.models.members import seed_ensemble

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def cnn(seed: int, num_classes: int = 5, norm=NORM):
    torch.manual_seed(seed)
    return small_cnn(num_classes=num_classes, normalization=norm, width=4, depth=2).eval()


@pytest.fixture
def x():
    return torch.rand(6, 3, 16, 16)


def test_ensemble_of_identical_members_equals_the_member(x):
    m = cnn(0)
    with torch.no_grad():
        assert torch.allclose(Ensemble([m, m, m])(x), m(x), atol=1e-6)
        probs = Ensemble([m, m], combine="probs")(x)
        assert torch.allclose(probs, torch.log_softmax(m(x), 1), atol=1e-6)
        assert torch.equal(probs.argmax(1), m(x).argmax(1))


@pytest.mark.parametrize("impl", ["loop", "vmap"])
def test_logits_and_probs_match_a_direct_computation(x, impl):
    members, w = [cnn(s) for s in range(3)], [0.5, 0.3, 0.2]
    with torch.no_grad():
        outs = [m(x) for m in members]
        direct_logits = sum(wi * o for wi, o in zip(w, outs))
        direct_probs = torch.log(sum(wi * torch.softmax(o, 1) for wi, o in zip(w, outs)))
        assert torch.allclose(Ensemble(members, w, impl=impl)(x), direct_logits, atol=1e-5)
        assert torch.allclose(Ensemble(members, w, combine="probs", impl=impl)(x), direct_probs, atol=1e-5)


def test_probs_combination_is_stable_for_extreme_logits():
    class Const(torch.nn.Module):
        num_classes = 3

        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    out = Ensemble([Const([1000.0, 0.0, -1000.0]), Const([-1000.0, 0.0, 1000.0])], combine="probs")(torch.zeros(2, 1))
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_input_gradient_flows_through_every_member(x):
    members = [cnn(0), cnn(1)]
    y = torch.zeros(len(x), dtype=torch.long)
    xe = x.clone().requires_grad_(True)
    (g_ens,) = torch.autograd.grad(F.cross_entropy(Ensemble(members)(xe), y, reduction="sum"), xe)
    # the same gradient computed by hand from both members' logits
    xm = x.clone().requires_grad_(True)
    logits = 0.5 * members[0](xm) + 0.5 * members[1](xm)
    (g_hand,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xm)
    assert torch.allclose(g_ens, g_hand, atol=1e-6)
    xa = x.clone().requires_grad_(True)
    (g_one,) = torch.autograd.grad(F.cross_entropy(members[0](xa), y, reduction="sum"), xa)
    assert not torch.allclose(g_ens, g_one, atol=1e-4)  # not one member's gradient


def test_ensemble_attack_follows_every_member_not_one():
    """Two members that disagree on where the boundary is: PGD on the ensemble must cross both."""
    class Linear(torch.nn.Module):
        num_classes = 2

        def __init__(self, w):
            super().__init__()
            self.w = torch.tensor(w)

        def forward(self, x):
            s = x.flatten(1) @ self.w
            return torch.stack([s, -s], 1)

    from robust_ensembles.attacks.pgd import PGD
    a, b = Linear([1.0, 0.0]), Linear([0.0, 1.0])
    x, y = torch.tensor([[0.6, 0.6]]), torch.tensor([0])
    ens = Ensemble([a, b])
    attack = PGD(eps=0.2, norm="l2", steps=20, rel_step_size=2.5, random_start=False)
    xa_single = attack(a, x, y)  # fools a alone? moving x1 by 0.2 does not cross 0 here: margin check below
    xa_ens = attack(ens, x, y)
    # the ensemble attack moves along (-1,-1)/sqrt(2): the direction that lowers both members
    d = (xa_ens - x).squeeze()
    assert d[0] < 0 and d[1] < 0 and torch.allclose(d[0], d[1], atol=1e-4)
    assert (xa_single - x).squeeze()[1].abs() < 1e-6  # the single-member attack ignores member b


def test_weights_off_the_simplex_are_refused():
    ms = [cnn(0), cnn(1)]
    with pytest.raises(ConfigError, match="must be non-negative and sum to 1"):
        Ensemble(ms, [0.7, 0.7])
    with pytest.raises(ConfigError, match="must be non-negative"):
        Ensemble(ms, [1.5, -0.5])
    with pytest.raises(ConfigError, match="one weight per member"):
        Ensemble(ms, [1.0])


def test_incompatible_members_are_refused():
    with pytest.raises(ConfigError, match="different numbers of classes"):
        Ensemble([cnn(0, num_classes=5), cnn(1, num_classes=3)])
    other = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    with pytest.raises(ConfigError, match="different input normalizations"):
        Ensemble([cnn(0), cnn(1, norm=other)])
    with pytest.raises(ConfigError, match="ensemble.combine"):
        Ensemble([cnn(0)], combine="vote")


def test_k_larger_than_the_trained_seeds_names_the_train_command(tmp_path):
    with pytest.raises(ConfigError) as e:
        seed_ensemble(tmp_path, {"alpha": 0.25}, K=4, train_hint="python -m robust_ensembles.train -m alpha=0.25")
    msg = str(e.value)
    assert "K=4 needs 4 trained members" in msg and "found 0" in msg and "'seed=range(4)'" in msg
