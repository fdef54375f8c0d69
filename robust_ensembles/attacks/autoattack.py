"""The AutoAttack family through `pyautoattack`: standard AutoAttack as a callable like `PGD`, and `APGD`,
the evaluation attack (APGD-CE with APGD-T on the points it leaves standing)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from robust_ensembles.attacks.pgd import check_eps, eval_mode
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name


@stable_name("autoattack")
class AutoAttack:
    """Standard AutoAttack (Croce & Hein 2020) through `pyautoattack`, as a callable like `PGD`.

    version="standard": APGD-CE, APGD-T, FAB-T and Square (L2 or Linf). version="custom" with
    `attacks=[...]` runs a subset (e.g. ["square"], the black-box sanity check), with pyautoattack's
    constructor settings, which are not all the standard version's: APGD-CE runs 5 restarts there (standard:
    1 for L2 and Linf) unless `apgd_restarts` says otherwise. pyautoattack calls `.view` on gradients, so
    inputs are handed over contiguous (NCHW).
    """

    NORMS = {"l2": "L2", "linf": "Linf"}

    def __init__(self, eps: float, norm: str, version: str, attacks: list[str] | None, seed: int,
                 batch_size: int, key: str = "autoattack", square_queries: int | None = None,
                 apgd_iterations: int | None = None, apgd_restarts: int | None = None):
        if norm not in self.NORMS:
            raise ConfigError(f"{key}.norm={norm!r} is not a known norm; use one of {sorted(self.NORMS)}.")
        if version == "custom" and not attacks:
            raise ConfigError(f"{key}.version=custom needs {key}.attacks, e.g. [apgd-ce, square].")
        for name, value, default in (("square_queries", square_queries, "5000"), ("apgd_iterations", apgd_iterations, "100"),
                                     ("apgd_restarts", apgd_restarts, "1 in the standard version, 5 in a custom one")):
            if value is not None and (version != "custom" or isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{key}.{name}={value!r} must be null (AutoAttack's {default}) or, with "
                                  f"{key}.version=custom, a positive integer.")
        if apgd_restarts is not None and "apgd-ce" not in (attacks or []):
            raise ConfigError(f"{key}.apgd_restarts={apgd_restarts} sets APGD-CE's restarts, but {key}.attacks="
                              f"{attacks} runs no apgd-ce; add it to the attacks or set {key}.apgd_restarts=null.")
        self.key, self.norm, self.version = key, norm, version
        self.square_queries, self.apgd_iterations, self.apgd_restarts = square_queries, apgd_iterations, apgd_restarts
        self.attacks = list(attacks) if attacks else None
        self.seed, self.batch_size = seed, batch_size
        self.eps = check_eps(eps, key)
        # pyautoattack reports each attack's robust accuracy and time at DEBUG level: show it (runs are long)
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        from pyautoattack import AutoAttack as _AutoAttack

        eps = self.eps if eps is None else check_eps(eps, self.key)
        if eps == 0:
            return x.detach()
        with eval_mode(model):
            adversary = _AutoAttack(model, eps=eps, norm=self.NORMS[self.norm], version=self.version,
                                    attacks=self.attacks, seed=self.seed, device=x.device)
            if self.square_queries is not None:
                adversary.square.n_queries = self.square_queries
            if self.apgd_iterations is not None:
                adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = self.apgd_iterations
            if self.apgd_restarts is not None:
                adversary.apgd.n_restarts = self.apgd_restarts
            x_adv, _ = adversary.run_standard_evaluation(x.detach().contiguous(), y, batch_size=self.batch_size)
        return x_adv.detach()


@stable_name("apgd")
class APGD:
    """The strong evaluation attack: per point, the worst case over APGD on the cross-entropy
    (APGD-CE) and targeted APGD on the DLR margin loss (APGD-T) against the `target_classes` most
    likely wrong classes, the two white-box attacks that carry standard AutoAttack (Croce & Hein
    2020). The pyautoattack implementations run here; this class is the glue: it gives them our
    callable interface (`attack(model, x, y, eps=...)`), eval mode, contiguous inputs, and runs
    APGD-T only on the points APGD-CE left standing.

    Args:
        eps: default radius ([0, 1] pixel units; the evaluation gives one per call).
        norm: "l2" or "linf".
        steps: APGD-CE iterations (AutoAttack: 100; 0 = APGD-T alone).
        restarts: APGD-CE random restarts (AutoAttack standard: 1 for L2 with 100 iterations).
        target_classes: APGD-T target classes, the most likely wrong ones first (AutoAttack: 9;
            0 = APGD-CE alone).
        targeted_steps: APGD-T iterations per target class (AutoAttack: 100).
        rho: APGD's step-size halving threshold (AutoAttack: 0.75).
        seed: seed of the random starts.
    """

    NORMS = {"l2": "L2", "linf": "Linf"}

    def __init__(self, eps: float, norm: str, steps: int, restarts: int, target_classes: int,
                 targeted_steps: int, rho: float, seed: int, key: str = "evaluation.attack"):
        self.key = key
        if norm not in self.NORMS:
            raise ConfigError(f"{key}.norm={norm!r} is not a known norm; use one of {sorted(self.NORMS)}.")
        for name, value, low in (("steps", steps, 0), ("restarts", restarts, 1), ("target_classes", target_classes, 0),
                                 ("targeted_steps", targeted_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}.{name}={value!r} must be an integer >= {low}.")
        if steps == 0 and target_classes == 0:
            raise ConfigError(f"{key}: steps=0 and target_classes=0 attack nothing; set steps >= 1 (APGD-CE) or "
                              f"target_classes >= 1 (APGD-T).")
        if not 0 < rho < 1:
            raise ConfigError(f"{key}.rho={rho!r} must be in (0, 1) (AutoAttack uses 0.75).")
        self.eps = check_eps(eps, key)
        self.norm, self.steps, self.restarts = norm, steps, restarts
        self.target_classes, self.targeted_steps, self.rho, self.seed = target_classes, targeted_steps, rho, seed

    def check_eps(self, eps) -> float:
        return check_eps(eps, self.key)

    def settings(self) -> str:
        parts = [f"APGD-CE {self.steps} steps x {self.restarts} restarts"] if self.steps else []
        if self.target_classes:
            parts.append(f"APGD-T {self.targeted_steps} steps x {self.target_classes} targets")
        return f"norm={self.norm}, {' + '.join(parts)}"

    def __repr__(self) -> str:
        return f"APGD({self.settings()})"

    def name(self) -> str:
        targeted = f"T-{self.targeted_steps}x{self.target_classes}" if self.target_classes else ""
        return f"APGD-CE-{self.steps}" + (f"+{targeted}" if targeted else "") if self.steps else f"APGD-{targeted}"

    def doubled(self) -> "APGD":
        twice = copy.copy(self)
        twice.steps, twice.targeted_steps = 2 * self.steps, 2 * self.targeted_steps
        return twice

    supports_warm_start = True

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None = None,
                 x_init: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples of x within eps. `x_init` (a warm start, e.g. the perturbation found at
        another radius): each point's attack starts from it, scaled onto this radius' sphere (a point whose
        x_init is x itself: from a random point of that sphere), one start per point (`restarts` is for the
        cold path); the returned points that stand are then the highest-loss ones found (the next warm
        start), not x."""
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        eps = self.eps if eps is None else self.check_eps(eps)
        x = x.detach().contiguous()  # pyautoattack calls .view on gradients
        if eps == 0 or len(y) == 0:
            return x
        norm, device = self.NORMS[self.norm], x.device
        if x_init is not None:
            with eval_mode(model):
                torch.random.manual_seed(self.seed)
                return self._warm(model, x, y, eps, on_sphere(x, x_init, eps, self.norm), norm, device)
        with eval_mode(model):
            x_adv = x
            if self.steps:
                x_adv = APGDAttack(model, n_iter=self.steps, norm=norm, n_restarts=self.restarts, eps=eps,
                                   seed=self.seed, loss="ce", rho=self.rho, device=device).perturb(x, y)
            if self.target_classes:
                with torch.no_grad():
                    standing = (model(x_adv).argmax(1) == y).nonzero().squeeze(1)
                if len(standing):
                    targets = min(self.target_classes, model(x[:1]).shape[1] - 1)
                    x_t = APGDAttack_targeted(model, n_iter=self.targeted_steps, norm=norm, eps=eps, seed=self.seed,
                                              rho=self.rho, n_target_classes=targets, device=device
                                              ).perturb(x[standing], y[standing])
                    x_adv = x_adv.clone()
                    x_adv[standing] = x_t
        return x_adv.detach()

    def _warm(self, model, x, y, eps, start, norm, device) -> torch.Tensor:
        """APGD-CE, then APGD-T on the points it left standing, each from `start` (pyautoattack's single
        runs, which take an initial point; `perturb` does not)."""
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        adv, fooled = start.clone(), torch.zeros(len(y), dtype=torch.bool, device=device)
        if self.steps:
            ce = APGDAttack(model, n_iter=self.steps, norm=norm, n_restarts=1, eps=eps, seed=self.seed, loss="ce",
                            rho=self.rho, device=device)
            ce.init_hyperparam(x)
            best, acc, _, best_adv = ce.attack_single_run(x, y, start)
            fooled = acc == 0
            adv = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), best_adv, best)
        if self.target_classes:
            targets = min(self.target_classes, model(x[:1]).shape[1] - 1)
            t = APGDAttack_targeted(model, n_iter=self.targeted_steps, norm=norm, eps=eps, seed=self.seed, rho=self.rho,
                                    n_target_classes=targets, device=device)
            t.init_hyperparam(x)
            with torch.no_grad():
                order = model(x).sort(dim=1)[1]
            for target in range(2, targets + 2):  # the most likely wrong classes first, as APGD-T's perturb
                idx = (~fooled).nonzero().squeeze(1)
                if not len(idx):
                    break
                t.y_target = order[idx, -target]
                best, acc, _, best_adv = t.attack_single_run(x[idx], y[idx], adv[idx])
                won = acc == 0
                adv[idx[won]] = best_adv[won]
                fooled[idx[won]] = True
        return adv.detach()


def on_sphere(x: torch.Tensor, x_init: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """x_init's perturbation of x scaled to size eps (L2 norm or Linf), kept in [0, 1]; where it is zero (a
    point's first attack), a random direction (torch's generator: seed it first)."""
    delta = (x_init - x).flatten(1)
    size = lambda d: d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    zero = size(delta) == 0
    if zero.any():
        delta = delta.clone()
        delta[zero] = torch.randn_like(delta[zero]) if norm == "l2" else 2 * torch.rand_like(delta[zero]) - 1
    return (x + (delta * (eps / size(delta).clamp_min(1e-12))[:, None]).view_as(x)).clamp(0, 1)

