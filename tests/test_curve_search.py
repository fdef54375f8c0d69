"""Each point's smallest flipping radius on the grid, found by scanning the radii upward or by bisection:
on a linear model, where that radius is known in closed form, both find it on every point; bisection
costs about log2(grid) attacks per point; the radii an attack reports flip the point inside the ball."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_ensembles.attacks.autoattack import APGD
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.curves import (attack_grid, boundary_distance, curve_from_min_flip, describe_search,
                                                first_order_estimate)

GRID = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]  # the linear model's flip radii lie around 0.02-0.7


class Linear(nn.Module):
    def __init__(self, d: int = 12, classes: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, d, generator=g) * 0.3)
        self.b = nn.Parameter(torch.randn(classes, generator=g) * 0.3)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def closed_form_radius(model: Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest L2 perturbation that flips each point (no pixel box), and its direction."""
    with torch.no_grad():
        f = model(x)
        w = model.w
        margins = f.gather(1, y[:, None]) - f                      # (n, C): f_y - f_j
        dirs = w[None, :, :] - w[y][:, None, :]                     # (n, C, d): w_j - w_y
        norms = dirs.norm(dim=2).clamp_min(1e-12)
        r = margins / norms
        r[torch.arange(len(y)), y] = math.inf
        j = r.argmin(1)
        best = dirs[torch.arange(len(y)), j] / norms[torch.arange(len(y)), j][:, None]
        return r.min(1).values, best


class ExactLinearAttack:
    """The optimal L2 attack on a linear model: step to the nearest decision boundary if it is within eps."""
    norm = "l2"
    supports_warm_start = True  # (and needs none: it is exact)

    def __init__(self):
        self.calls: list[int] = []
        self.warm: list[bool] = []

    def __call__(self, model, x, y, eps, x_init=None):
        self.calls.append(len(y))
        self.warm.append(x_init is not None)
        r, direction = closed_form_radius(model, x, y)
        step = torch.clamp(r * (1 + 1e-4) + 1e-6, max=eps)
        return (x.flatten(1) + step[:, None] * direction).view_as(x)


def on_grid(r: torch.Tensor) -> torch.Tensor:
    """Each closed-form flip radius as the grid reports it: the smallest grid radius at or above it (0 for a point
    wrong on the clean input, inf beyond the grid)."""
    grid = torch.tensor(GRID)
    return torch.stack([grid[grid >= ri].min() if (ri <= grid.max()) and ri > 0 else
                        (torch.tensor(0.0) if ri <= 0 else torch.tensor(math.inf)) for ri in r])


def _points(model: Linear, n: int = 400, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 12, generator=g)
    return x, model(x).argmax(1)  # every point correct on the clean input ...


def test_scan_and_bisection_find_the_closed_form_flip_radius_of_every_point():
    model = Linear()
    x, y = _points(model)
    y[:20] = (y[:20] + 1) % 4  # ... but 20 wrong ones (flip radius 0)
    expected = on_grid(closed_form_radius(model, x, y)[0])
    scan = attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="scan").min_flip
    bisect = attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="bisect").min_flip
    probed = attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="probe_bisect").min_flip
    assert torch.equal(scan, expected) and torch.equal(bisect, expected) and torch.equal(probed, expected)
    for scale in (0.3, 1.0, 3.0):  # a guess too small, right, too large: the guided search still finds every radius
        guided = attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="guided", guess_scale=scale)
        assert torch.equal(guided.min_flip, expected)
    for scale in (0.3, 1.0, 3.0):  # a first-order step before the first attack: only flips it finds are taken
        stepped = attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="guided", guess_scale=scale,
                              first_order_step=True)
        assert torch.equal(stepped.min_flip, expected)
    for search in ("scan", "bisect", "probe_bisect", "guided"):  # warm starts change where an attack starts, not the search
        attack = ExactLinearAttack()
        warm = attack_grid(model, attack, x, y, GRID, per_eps=False, search=search, warm_start=True).min_flip
        assert torch.equal(warm, expected) and all(attack.warm)  # every attack through the warm path
    assert 0 < (expected == math.inf).sum() < len(y) and (expected == 0).sum() == 20  # every kind of point occurs
    curve = curve_from_min_flip(bisect, GRID, None)
    assert all(a >= b for a, b in zip(curve.cumulative, curve.cumulative[1:]))  # monotone


def test_bisection_costs_about_log2_of_the_grid_attacks_per_point():
    model = Linear()
    x, y = _points(model)
    scan, bisect = ExactLinearAttack(), ExactLinearAttack()
    flips = attack_grid(model, scan, x, y, GRID, per_eps=False, search="scan").min_flip
    attack_grid(model, bisect, x, y, GRID, per_eps=False, search="bisect")
    steps = math.ceil(math.log2(len(GRID)))
    assert sum(bisect.calls) <= steps * len(y)
    probed = ExactLinearAttack()
    attack_grid(model, probed, x, y, GRID, per_eps=False, search="probe_bisect")
    flipped_first = int((flips == GRID[1]).sum())
    assert probed.calls[0] == len(y) and sum(probed.calls) <= len(y) + steps * (len(y) - flipped_first)
    robust = int((flips == math.inf).sum())
    assert robust > 0 and sum(scan.calls) >= robust * (len(GRID) - 1)  # a robust point costs a scan every radius


def test_the_first_order_boundary_distance_is_exact_on_a_linear_model():
    """margin / ||gradient of the margin|| against the most likely wrong class j is (f_y - f_j) / ||w_y - w_j||:
    the distance to that class's boundary; the closed form's nearest boundary is at most that far."""
    model = Linear()
    x, y = _points(model)
    r, _ = closed_form_radius(model, x, y)
    with torch.no_grad():
        f = model(x)
        wrong = f.clone()
        wrong[torch.arange(len(y)), y] = -math.inf
        j = wrong.argmax(1)
        to_j = (f.gather(1, y[:, None]).squeeze(1) - f.gather(1, j[:, None]).squeeze(1)) / (model.w[y] - model.w[j]).norm(dim=1)
    d = boundary_distance(model, x, y, "l2")
    assert torch.allclose(d, to_j, rtol=1e-4, atol=1e-6) and (d >= r - 1e-5).all()
    y_wrong = (y + 1) % 4
    assert torch.equal(boundary_distance(model, x[:5], y_wrong[:5], "l2")[(model(x[:5]).argmax(1) != y_wrong[:5])],
                       torch.zeros(int((model(x[:5]).argmax(1) != y_wrong[:5]).sum())))  # misclassified: 0


def test_a_guided_search_costs_about_two_attacks_per_point_when_the_guess_is_right():
    """Started at the grid radius at or above the estimate, a point whose estimate is its distance pays one
    attack there and one below (one in all where that is the grid's first radius or its last one stands)."""
    model = Linear()
    x, y = _points(model)
    bisect, guided = ExactLinearAttack(), ExactLinearAttack()
    attack_grid(model, bisect, x, y, GRID, per_eps=False, search="bisect")
    attack_grid(model, guided, x, y, GRID, per_eps=False, search="guided")
    r, _ = closed_form_radius(model, x, y)
    exact = torch.isclose(boundary_distance(model, x, y, "l2"), r, rtol=1e-4)
    assert exact.float().mean() > 0.5  # the case the bound is about occurs
    assert sum(guided.calls) <= 2 * int(exact.sum()) + 5 * int((~exact).sum())
    assert sum(guided.calls) < sum(bisect.calls)
    stepped = ExactLinearAttack()  # the first-order step flips a right-guessed point itself: fewer attacks still
    attack_grid(model, stepped, x, y, GRID, per_eps=False, search="guided", first_order_step=True)
    assert sum(stepped.calls) < sum(guided.calls)
    with pytest.raises(ConfigError, match="evaluation.guess_scale=0 must be a number > 0"):
        attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="guided", guess_scale=0)


def test_apgd_flips_reported_by_either_search_lie_inside_the_ball_and_above_the_closed_form_radius():
    model = Linear()
    x, y = _points(model, n=120)
    r, _ = closed_form_radius(model, x, y)
    attack = APGD(eps=0.0, norm="l2", steps=0, restarts=1, target_classes=2, targeted_steps=10, rho=0.75, seed=0)
    ce_t = APGD(eps=0.0, norm="l2", steps=5, restarts=1, target_classes=2, targeted_steps=5, rho=0.75, seed=0)
    for a, search, warm, step in ((attack, "scan", False, False), (attack, "bisect", False, False),
                                  (attack, "probe_bisect", False, False), (attack, "scan", True, False),
                                  (attack, "bisect", True, False), (ce_t, "bisect", True, False),
                                  (ce_t, "guided", False, False), (ce_t, "guided", True, False),
                                  (ce_t, "guided", False, True), (ce_t, "guided", True, True)):
        g = attack_grid(model, a, x, y, GRID, per_eps=False, search=search, warm_start=warm, first_order_step=step)
        assert g.max_norm_ratio <= 1 + 1e-4 and g.lo >= 0 and g.hi <= 1
        found = g.min_flip < math.inf
        assert found.any() and (g.min_flip[found] >= r[found] - 1e-5).all()  # no flip below the smallest possible


def test_apgd_t_alone_is_a_setting_and_an_empty_one_is_refused():
    t_only = APGD(eps=0.0, norm="l2", steps=0, restarts=1, target_classes=3, targeted_steps=10, rho=0.75, seed=0)
    assert t_only.name() == "APGD-T-10x3" and "APGD-CE" not in repr(t_only)
    with pytest.raises(ConfigError, match="steps=0 and target_classes=0 attack nothing"):
        APGD(eps=0.0, norm="l2", steps=0, restarts=1, target_classes=0, targeted_steps=10, rho=0.75, seed=0)


def test_bisection_gives_no_per_radius_outcomes_and_an_unknown_search_is_refused():
    model = Linear()
    x, y = _points(model, n=8)
    with pytest.raises(ConfigError, match="evaluation.search=bisect .* evaluation.per_eps=false"):
        attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=True, search="bisect")
    with pytest.raises(ConfigError, match="evaluation.search='binary' is unknown"):
        attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="binary")
    with pytest.raises(ConfigError, match="evaluation.first_order_step=true steps along the guided search's"):
        attack_grid(model, ExactLinearAttack(), x, y, GRID, per_eps=False, search="bisect", first_order_step=True)


def test_a_scan_curve_keeps_the_key_it_had_before_the_search_option(tmp_path):
    """Records made before `evaluation.search` existed scanned the grid: a scan's spec leaves the option
    out, so their keys stand; another search is part of the key."""
    from robust_ensembles.evaluation.request import evaluation_spec
    from tests.conftest import TINY, compose_train

    scan = evaluation_spec(compose_train([*TINY, "evaluation.per_eps=false"], tmp_path, "evaluate"))
    bisect = evaluation_spec(compose_train([*TINY, "evaluation.per_eps=false", "evaluation.search=bisect"], tmp_path,
                                           "evaluate"))
    assert "search" not in scan and bisect == {**scan, "search": "bisect"}
    guided = evaluation_spec(compose_train([*TINY, "evaluation.per_eps=false", "evaluation.search=guided"], tmp_path,
                                           "evaluate"))
    assert guided == {**scan, "search": "guided", "guess_scale": 1.0}  # only the guided search keys its guess
    stepped = evaluation_spec(compose_train([*TINY, "evaluation.per_eps=false", "evaluation.search=guided",
                                             "evaluation.first_order_step=true"], tmp_path, "evaluate"))
    assert stepped == {**guided, "first_order_step": True}  # keyed only where it is on: guided records keep theirs


def test_a_warm_start_needs_an_attack_that_takes_one():
    from robust_ensembles.attacks.pgd import PGD

    pgd = PGD(eps=0.0, norm="l2", steps=2, rel_step_size=2.5, step_size=None, random_start=True, keep_best=True,
              tiny=1e-12, key="evaluation.attack")
    model = Linear()
    x, y = _points(model, n=8)
    with pytest.raises(ConfigError, match="evaluation.warm_start=true needs an attack that starts from a given point"):
        attack_grid(model, pgd, x, y, GRID, per_eps=False, warm_start=True)


def test_a_warm_start_never_returns_an_unattacked_point():
    """A warm attack's standing points come back at their highest-loss point on the sphere, never x itself
    (which would make the next radius start from no perturbation at all)."""
    model = Linear()
    x, y = _points(model, n=60)
    attack = APGD(eps=0.0, norm="l2", steps=3, restarts=1, target_classes=1, targeted_steps=3, rho=0.75, seed=0)
    x_adv = attack(model, x.view(60, 1, 3, 4), y, eps=0.05, x_init=x.view(60, 1, 3, 4))
    moved = (x_adv.flatten(1) - x).norm(dim=1)
    assert (moved > 0).all() and (moved <= 0.05 + 1e-5).all()


def test_the_first_order_step_on_images_in_channels_last_and_its_linf_direction():
    """On (n, 3, 2, 2) inputs in channels_last memory: the L2 step search still finds every closed-form radius,
    and the Linf direction is -sign of the margin's gradient, (w_j - w_y) for the most likely wrong class j."""
    model = Linear()
    x, y = _points(model)
    images = x.view(-1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    expected = on_grid(closed_form_radius(model, x, y)[0])
    stepped = attack_grid(model, ExactLinearAttack(), images, y, GRID, per_eps=False, search="guided",
                          first_order_step=True)
    assert torch.equal(stepped.min_flip, expected)
    distance, direction = first_order_estimate(model, images, y, "linf")
    with torch.no_grad():
        f = model(x)
        j = f.scatter(1, y[:, None], -math.inf).argmax(1)
        g = model.w[y] - model.w[j]  # gradient of the margin f_y - f_j
    assert direction.shape == images.shape and torch.equal(direction.flatten(1), -g.sign())
    assert "first-order" in describe_search("guided", True) and "first-order" not in describe_search("guided")
    assert torch.allclose(distance, (f.gather(1, y[:, None]).squeeze(1) - f.gather(1, j[:, None]).squeeze(1))
                          / g.abs().sum(1), rtol=1e-4)
