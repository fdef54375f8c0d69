"""Learning-rate schedules torch does not ship as one object.

`warmup_cosine_floor`: the one-cycle shape (linear warm-up, cosine annealing) that ends at a floor
instead of near zero and then holds it, so that training can go on after the anneal until validation
stops improving (`callbacks.EarlyStoppingAfter`). torch's OneCycleLR refuses to step past its total.
"""

from __future__ import annotations

import math

import torch

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name


@stable_name("warmup_cosine_floor")
def warmup_cosine_floor(optimizer: torch.optim.Optimizer, steps_per_epoch: int, anneal_epochs: float,
                        pct_start: float, floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplier of each group's lr per optimizer step: 0 -> 1 linearly over the first `pct_start` of
    `anneal_epochs` epochs, cosine 1 -> `floor` over the rest, then `floor` for as long as training goes on.
    `steps_per_epoch` is filled in by the training module (null in config)."""
    if not 0 <= floor <= 1:
        raise ConfigError(f"module.scheduler.floor={floor} must be in [0, 1] (a fraction of the peak learning rate).")
    if not 0 <= pct_start < 1:
        raise ConfigError(f"module.scheduler.pct_start={pct_start} must be in [0, 1).")
    if anneal_epochs <= 0 or steps_per_epoch < 1:
        raise ConfigError(f"module.scheduler.anneal_epochs={anneal_epochs} must be > 0 "
                          f"(and an epoch must hold at least one step, got {steps_per_epoch}).")
    total = max(1, round(anneal_epochs * steps_per_epoch))
    warm = round(pct_start * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step >= total:
            return floor
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
