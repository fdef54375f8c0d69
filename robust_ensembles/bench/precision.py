"""`bench.mode=precision`: the evaluation in another precision, paired with fp32 on the same points."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from robust_ensembles.bench.harness import Report
from robust_ensembles.evaluation.curves import standard_error


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """Evaluation precision parity (`bench.mode=precision`): one stored model's curve record at eps in each
    of `precisions` (records keyed by precision, so the tables reuse them), on the same points; each
    lower precision against the first (fp32) as a paired difference, the bar being one binomial standard
    error of the reference accuracy (evaluation stays fp32 unless this holds)."""
    from robust_ensembles.core.compose import compose_config
    from robust_ensembles.evaluation.outcomes import under_curve
    from robust_ensembles.evaluation.records import evaluate
    from robust_ensembles.evaluation.request import from_config
    from robust_ensembles.stats.paired import paired_difference

    p = cfg.bench.precision
    records = {prec: evaluate(from_config(compose_config("evaluate", [*p.overrides, f"evaluation.eps_grid=[0,{p.eps}]",
                                                                      f"evaluation.auc_eps={p.eps}",
                                                                      f"evaluation.precision={prec}"])))
               for prec in p.precisions}
    ref = p.precisions[0]
    robust = {prec: under_curve(rec, p.eps) for prec, rec in records.items()}   # per point, at eps
    base = robust[ref]
    se = standard_error(base.float().mean().item(), len(base))
    for prec, rec in records.items():
        acc = robust[prec].float().mean().item()
        rep.note(f"{prec}: accuracy at {p.eps} {100 * acc:.2f}% on {len(base)} points "
                  f"(clean {100 * under_curve(rec, 0.0).float().mean().item():.2f}%), {rec['wall_s']:.1f} s "
                  f"on {rec['device']}")
    for prec in p.precisions[1:]:
        d = paired_difference(robust[prec], base, p.level)
        rep.add(f"accuracy at {p.eps}: {prec} - {ref}, points [{d.low * 100:+.2f}, {d.high * 100:+.2f}] "
                f"({d.first_only} vs {d.second_only} discordant)", (100 * d.estimate,) * 3,
                f"abs(difference) <= 1 SE of {ref} = {100 * se:.2f}", abs(d.estimate) <= se)
    return rep


def describe(cfg: DictConfig) -> str:
    p = cfg.bench.precision
    return f"{' '.join(p.overrides)}; eps {p.eps}; paired on the same points"
