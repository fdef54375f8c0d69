"""Projected gradient descent (PGD) attacks in [0, 1] pixel space.

Follows the conventions of MadryLab `robustness` (attack_steps.py): a threat model is a small
step class (random start, ascent step, projection) picked by name, and one loop serves every
norm. Two choices differ on purpose:

* the loop asks autograd for the gradient with respect to the perturbation only
  (`torch.autograd.grad(loss, delta)`); no weight gradient is computed or accumulated, which
  is cheaper than `loss.backward()` and leaves `.grad` of the model untouched;
* the attacked model is put in eval mode for the attack (BatchNorm uses running statistics and
  is not updated by adversarial batches) and restored afterwards.

The attack treats whatever `nn.Module` it gets as one function, so an ensemble or a composite
is attacked as a whole.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the attack, then every submodule back in its own previous mode. (Restoring
    only the top module's flag with `model.train(flag)` would flip eval-mode members of a wrapper
    that is itself in train mode, e.g. a freshly built Ensemble of loaded models, into train mode.)"""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training

class L2Step:
    """L2 threat model: steps along the normalised gradient, projection onto the L2 ball."""

    def __init__(self, tiny: float):
        self.tiny = tiny  # guards divisions by a zero norm

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (v.dim() - 1)))

    def random_start(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        # robustness' L2Step.random_perturb: a uniformly random direction on the sphere of radius eps
        r = torch.randn_like(x)
        return eps * r / (self._norm(r) + self.tiny)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return delta + step_size * grad / (self._norm(grad) + self.tiny)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta * torch.clamp(eps / (self._norm(delta) + self.tiny), max=1.0)


class LinfStep:
    """Linf threat model: signed-gradient steps, projection onto the box."""

    def __init__(self, tiny: float):
        self.tiny = tiny

    def random_start(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        return (2 * torch.rand_like(x) - 1) * eps

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return delta + step_size * grad.sign()

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)


NORMS = {"l2": L2Step, "linf": LinfStep}


def check_eps(eps, key: str) -> float:
    """A radius as a float >= 0, or an error naming the key."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ConfigError(f"{key}.eps={eps!r} must be a number (an attack radius in [0,1] pixel units).")
    if eps < 0:
        raise ConfigError(
            f"{key}.eps={eps} is negative: an attack radius must be >= 0 "
            f"(in [0,1] pixel units; for training it is `alpha`, e.g. alpha=0.25)."
        )
    return float(eps)


@stable_name("pgd")
class PGD:
    """PGD maximising the cross-entropy of `model(x + delta)` over the `norm` ball of radius eps.

    Args:
        eps: radius in [0, 1]-pixel units (0 returns the clean input unchanged).
        norm: "l2" or "linf".
        steps: number of ascent steps (>= 1).
        rel_step_size: step size as a multiple of eps / steps (robustness' default is 2.5);
            ignored when `step_size` is given.
        step_size: absolute step size (optional).
        random_start: start from a random point of the ball's surface (L2) or inside it (Linf).
        keep_best: return, per example, the iterate with the highest loss rather than the last.
        tiny: guard against division by a zero norm.
        key: the config key this attack is built from, named in error messages.
    """

    def __init__(
        self,
        eps: float,
        norm: str,
        steps: int,
        rel_step_size: float | None,
        step_size: float | None = None,
        random_start: bool = True,
        keep_best: bool = False,
        tiny: float = 1e-12,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        key: str = "attack",
    ):
        self.key = key
        if norm not in NORMS:
            raise ConfigError(
                f"{key}.norm={norm!r} is not a known norm; use one of {sorted(NORMS)}."
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"{key}.steps={steps!r} must be an integer >= 1.")
        if step_size is None and rel_step_size is None:
            raise ConfigError(f"{key}: give step_size or rel_step_size (robustness uses rel_step_size=2.5).")
        for name, value in (("step_size", step_size), ("rel_step_size", rel_step_size)):
            if value is not None and not value > 0:
                raise ConfigError(f"{key}.{name}={value!r} must be > 0.")
        self.eps = self.check_eps(eps)
        self.norm = norm
        self.threat = NORMS[norm](tiny)
        self.steps = steps
        self.rel_step_size = rel_step_size
        self.step_size = step_size
        self.random_start = random_start
        self.keep_best = keep_best
        self.clip_min, self.clip_max = clip_min, clip_max

    def check_eps(self, eps) -> float:
        return check_eps(eps, self.key)

    def step_size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else self.rel_step_size * eps / self.steps

    def settings(self) -> str:
        """Everything but the radius (an evaluation attack gets its radius per call)."""
        return (f"norm={self.norm}, steps={self.steps}, "
                f"step={'%.3g*eps/steps' % self.rel_step_size if self.step_size is None else self.step_size}, "
                f"random_start={self.random_start}, keep_best={self.keep_best}")

    def __repr__(self) -> str:
        return f"PGD(eps={self.eps}, {self.settings()})"

    def name(self) -> str:
        return f"PGD-{self.steps}"

    def doubled(self) -> "PGD":
        """The same attack with twice the steps (a sanity check: a converged attack barely moves)."""
        twice = copy.copy(self)
        twice.steps = 2 * self.steps
        return twice

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Adversarial examples for `model` at radius `eps` (default: the configured eps)."""
        eps = self.eps if eps is None else self.check_eps(eps)
        if eps == 0:
            return x.detach()
        with eval_mode(model), torch.enable_grad():
            return self._run(model, x.detach(), y, eps)

    def _loss(self, model, x, delta, y):
        return F.cross_entropy(model(x + delta), y, reduction="none")

    def _run(self, model, x, y, eps):
        threat, step_size = self.threat, self.step_size_for(eps)
        lo, hi = self.clip_min - x, self.clip_max - x  # keeps x + delta inside [clip_min, clip_max]
        delta = torch.zeros_like(x)
        if self.random_start:
            delta = torch.max(torch.min(threat.random_start(x, eps), hi), lo)
        best_delta, best_loss = delta.clone(), None
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = self._loss(model, x, delta, y)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta = delta.detach()
            if self.keep_best:
                best_delta, best_loss = self._keep(best_delta, best_loss, delta, loss.detach())
            delta = threat.project(threat.step(delta, grad, step_size), eps)
            delta = torch.max(torch.min(delta, hi), lo)
        if self.keep_best:
            with torch.no_grad():
                loss = self._loss(model, x, delta, y)
            delta, _ = self._keep(best_delta, best_loss, delta, loss)
        return (x + delta).detach()

    @staticmethod
    def _keep(best_delta, best_loss, delta, loss):
        if best_loss is None:
            return delta.clone(), loss
        better = loss > best_loss
        mask = better.view(-1, *([1] * (delta.dim() - 1)))
        return torch.where(mask, delta, best_delta), torch.where(better, loss, best_loss)

