"""Each sanity check of `check=true` passes on a sound evaluation and fails on a case built to
break it (stub attacks on a model whose decision is known)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_ensembles.evaluation.checks import run_checks
from robust_ensembles.evaluation.curves import Curve

N = 40
GRID = [0.0, 0.25, 0.5, 1.0]
CHECK_EPS, LARGE_EPS = 0.25, 4.0
NAMES = ["evaluation attack vs AutoAttack", "accuracy non-increasing in eps", "near-zero accuracy at a very large eps",
         "doubling the attack's steps changes accuracy by < 1 SE",
         "black-box Square no stronger than the white-box evaluation attack",
         "adversarial examples inside the ball and in [0,1]"]


class MeanPixel(nn.Module):
    """Class 1 when the mean pixel is above 0.5: `1 - x` flips any prediction."""
    num_classes = 2

    def forward(self, x):
        s = x.flatten(1).mean(1) - 0.5
        return torch.stack([-s, s], 1)


class Stub:
    """An 'attack' that flips point i (to 1 - x) when flips(i, eps, steps) says so."""
    norm = "l2"
    version = "stub"

    def __init__(self, flips, steps: int = 2):
        self.flips, self.steps = flips, steps

    def name(self) -> str:
        return f"stub-{self.steps}"

    def doubled(self) -> "Stub":
        return Stub(self.flips, 2 * self.steps)

    def __call__(self, model, x, y, eps):
        mask = torch.tensor([bool(self.flips(i, eps, self.steps)) for i in range(len(y))]).view(-1, 1, 1, 1)
        return torch.where(mask, 1 - x, x)


def threshold(i: int) -> float:  # point i falls at radius (i + 1) / N * 2: accuracy falls steadily to 0 by eps 2
    return (i + 1) / N * 2


def sound(i, eps, steps):
    return eps >= threshold(i)


def never(i, eps, steps):
    return False


def data():
    g = torch.Generator().manual_seed(0)
    high = torch.arange(N) % 2 == 1
    x = torch.rand(N, 3, 4, 4, generator=g) * 0.4 + high.view(-1, 1, 1, 1) * 0.6
    return x, high.long()


def checks_of(pgd=sound, autoattack=sound, square=never, max_norm_ratio=1.0):
    x, y = data()
    curve = Curve(GRID, [1.0, 0.9, 0.8, 0.5], None, N, max_norm_ratio, (0.0, 1.0))
    found = run_checks(MeanPixel(), curve, Stub(pgd), Stub(autoattack), Stub(square), x, y, CHECK_EPS, LARGE_EPS,
                       0.05, 0.015, N)
    assert [c.name for c in found] == NAMES
    return {c.name: c.passed for c in found}


def test_every_check_passes_on_a_sound_evaluation():
    assert all(checks_of().values())


@pytest.mark.parametrize("broken,kwargs", [
    ("evaluation attack vs AutoAttack", {"autoattack": lambda i, eps, steps: True}),                     # AutoAttack finds far more
    ("accuracy non-increasing in eps", {"pgd": lambda i, eps, steps: sound(i, eps, steps) and eps != 0.5}),
    ("near-zero accuracy at a very large eps", {"pgd": lambda i, eps, steps: sound(i, eps, steps) and eps < 3}),
    ("doubling the attack's steps changes accuracy by < 1 SE", {"pgd": lambda i, eps, steps: sound(i, eps, steps) or steps > 2}),
    ("black-box Square no stronger than the white-box evaluation attack", {"square": lambda i, eps, steps: True}),
    ("adversarial examples inside the ball and in [0,1]", {"max_norm_ratio": 1.5}),
])
def test_each_check_fails_on_the_case_built_to_break_it(broken, kwargs):
    passed = checks_of(**kwargs)
    assert passed[broken] is False
    assert all(ok for name, ok in passed.items() if name != broken), passed
