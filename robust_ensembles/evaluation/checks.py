"""Sanity checks that a robustness number can be trusted (Carlini et al. 2019, "On evaluating
adversarial robustness"): each returns PASS/FAIL with the figures behind it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from robust_ensembles.attacks.autoattack import AutoAttack
from robust_ensembles.evaluation.curves import Curve, standard_error

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {self.detail}"


def correct(model, x, y, batch_size: int) -> torch.Tensor:
    """Per point: classified correctly (bool, on the CPU)."""
    with torch.no_grad():
        return torch.cat([(model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu()
                          for i in range(0, len(y), batch_size)])


def accuracy(model, x, y, batch_size: int) -> float:
    return correct(model, x, y, batch_size).float().mean().item()


def correct_under(model, attack, x, y, eps, batch_size) -> torch.Tensor:
    """Per point: still classified correctly after `attack` at eps (bool, on the CPU)."""
    return torch.cat([correct(model, attack(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps),
                              y[i:i + batch_size], batch_size) for i in range(0, len(y), batch_size)])


def attacked_accuracy(model, attack, x, y, eps, batch_size) -> float:
    return correct_under(model, attack, x, y, eps, batch_size).float().mean().item()


def autoattack_vs_attack(model, attack, autoattack: AutoAttack, x, y, eps: float, batch_size: int) -> dict:
    """The evaluation attack and AutoAttack on the same points at eps: accuracies, standard errors, the
    worst case per point over both, and per point whether it stood under each (`attack_correct`,
    `autoattack_correct`: 0/1 lists in the order of the points)."""
    ours = correct_under(model, attack, x, y, eps, batch_size)
    aa = correct(model, autoattack(model, x, y, eps=eps), y, batch_size)
    n, acc, aa_acc, worst = len(y), ours.float().mean().item(), aa.float().mean().item(), (ours & aa).float().mean().item()
    return {"eps": eps, "n": n, "attack_acc": acc, "attack_se": standard_error(acc, n), "autoattack_acc": aa_acc,
            "autoattack_se": standard_error(aa_acc, n), "worst_acc": worst, "worst_se": standard_error(worst, n),
            "attack": repr(attack), "attack_name": attack.name(), "autoattack": autoattack.version,
            "attack_correct": ours.int().tolist(), "autoattack_correct": aa.int().tolist()}


def run_checks(model, curve: Curve, attack, autoattack: AutoAttack, square: AutoAttack,
               x: torch.Tensor, y: torch.Tensor, eps: float, large_eps: float, large_eps_max_acc: float,
               max_gap: float, batch_size: int) -> list[Check]:
    """x, y: the subset (sized by config) on which the evaluation attack (PGD or APGD), the same attack with
    doubled steps, AutoAttack and Square are compared."""
    n = len(y)
    checks = []
    cmp = autoattack_vs_attack(model, attack, autoattack, x, y, eps, batch_size)
    pgd, aa, se = cmp["attack_acc"], cmp["autoattack_acc"], cmp["attack_se"]
    checks.append(Check("evaluation attack vs AutoAttack", aa >= pgd - max_gap,
                        f"eps={eps}, n={n}: {attack.name()} {100 * pgd:.2f}%, AutoAttack ({autoattack.version}) "
                        f"{100 * aa:.2f}% (gap {100 * (pgd - aa):+.2f} points, allowed {100 * max_gap:.1f})"))
    if not checks[-1].passed:
        log.warning("AutoAttack is %.2f points below %s at eps=%s: the evaluation attack is too weak here, or "
                    "gradients are masked", 100 * (pgd - aa), attack.name(), eps)
    # per-radius accuracies on this subset, each radius attacked on its own (the cumulative curve is
    # monotone by construction, so only independent per-radius attacks can show a rise)
    radii = [e for e in curve.eps if e > 0]
    per_radius = [attacked_accuracy(model, attack, x, y, e, batch_size) for e in radii]
    rises = [(radii[i], radii[i + 1]) for i in range(len(radii) - 1) if per_radius[i + 1] > per_radius[i] + max(se, 1 / n)]
    checks.append(Check("accuracy non-increasing in eps", not rises,
                        f"per-radius {attack.name()} accuracy on these {n} points, each radius attacked on its own: "
                        + ", ".join(f"{e:g}: {100 * a:.1f}%" for e, a in zip(radii, per_radius))
                        + (" (monotone within 1 SE)" if not rises else f"; rises by more than 1 SE between {rises}")))
    large = attacked_accuracy(model, attack, x, y, large_eps, batch_size)
    checks.append(Check("near-zero accuracy at a very large eps", large <= large_eps_max_acc,
                        f"eps={large_eps}: {100 * large:.2f}% (must be <= {100 * large_eps_max_acc:.1f}%)"))
    doubled = attack.doubled()
    acc2 = attacked_accuracy(model, doubled, x, y, eps, batch_size)
    checks.append(Check("doubling the attack's steps changes accuracy by < 1 SE", abs(acc2 - pgd) < max(se, 1 / n),
                        f"{attack.name()} {100 * pgd:.2f}% vs {doubled.name()} {100 * acc2:.2f}% "
                        f"(1 SE = {100 * se:.2f} points)"))
    sq = accuracy(model, square(model, x, y, eps=eps), y, batch_size)
    checks.append(Check("black-box Square no stronger than the white-box evaluation attack", sq >= pgd - se,
                        f"Square {100 * sq:.2f}% vs {attack.name()} {100 * pgd:.2f}% (1 SE = {100 * se:.2f} points)"))
    lo, hi = curve.pixel_range
    checks.append(Check("adversarial examples inside the ball and in [0,1]",
                        curve.max_norm_ratio <= 1 + 1e-5 and lo >= 0 and hi <= 1,
                        f"max ||delta||/eps = {curve.max_norm_ratio:.6f}, pixels in [{lo:.4f}, {hi:.4f}]"))
    for c in checks:
        log.info(c.line())
        print(c.line(), flush=True)
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def passed(checks: list[Check]) -> bool:
    return all(c.passed for c in checks)
