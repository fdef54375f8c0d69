"""`bench.mode=profile` (`make profile`): where a PGD training step's time goes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.bench.epoch_speed import sync
from robust_ensembles.bench.harness import Report, batch_model_optimizer


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """Where a PGD training step's time goes (`make profile`; docs/performance.md): torch.profiler self
    time of a clean training step and of the PGD-k attack alone, on the bench's model and batch."""
    from torch.profiler import ProfilerActivity, profile

    b, p = cfg.bench, cfg.bench.profile
    x, y, model, opt = batch_model_optimizer(cfg, device)
    k = max(b.steps)
    attack = PGD(eps=b.eps, norm="l2", steps=k, rel_step_size=b.rel_step_size, random_start=True)

    def clean():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ms = {}
    for name, fn in {"clean training step": clean, f"PGD-{k} attack only": lambda: attack(model, x, y)}.items():
        for _ in range(b.warmup):
            fn()
        with profile(activities=activities) as prof:
            for _ in range(p.calls):
                fn()
            sync(device)
        kind = "device" if device.type == "cuda" else "cpu"  # on a GPU the kernels' time, not their launches
        ms[name] = sum(getattr(e, f"self_{kind}_time_total") for e in prof.key_averages()) / p.calls / 1000
        rep.note(f"{name}: {ms[name]:.1f} ms per call (profiled self {kind} time, {p.calls} calls)\n\n```\n"
                  + prof.key_averages().table(sort_by=f"self_{kind}_time_total", row_limit=p.row_limit,
                                              max_name_column_width=40) + "```")
    attack_ms, clean_ms = ms[f"PGD-{k} attack only"], ms["clean training step"]
    rep.add(f"profile: PGD-{k} attack / clean step", (attack_ms / clean_ms,) * 3)
    rep.add("profile: one attack step / clean step", (attack_ms / k / clean_ms,) * 3,
            "floor model assumes 2/3 = 0.667")
    return rep


def describe(cfg: DictConfig) -> str:
    b = cfg.bench
    return f"batch {b.batch_size}; repeats {b.repeats} x {b.inner}"
