"""`bench.mode=gpu_epoch` (`make bench-gpu`): one paper-scale epoch on the GPU fast path, eager and compiled, and seeds sharing one GPU."""

from __future__ import annotations

import statistics

import torch
from omegaconf import DictConfig

from robust_ensembles.bench import epoch_speed
from robust_ensembles.bench.epoch_speed import EpochSetup
from robust_ensembles.bench.harness import Report, first_line, interleaved, ratio_stats
from robust_ensembles.core.errors import ConfigError


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """One paper-scale epoch (ResNet18, PGD-k, data resident on the device, channels_last, bf16): eager
    against a clean epoch; the aggregate images per second of n seeds' jobs sharing the device (one
    process each, started together) against one alone; then each torch.compile mode, compiled in a
    warm-up epoch and timed alternating with eager epochs. Rows are written as they are measured."""
    if device.type != "cuda" and not cfg.bench.allow_cpu:
        raise ConfigError("bench.mode=gpu_epoch measures a GPU; no CUDA device is visible "
                          "(bench.allow_cpu=true runs its logic on the CPU at small sizes).")
    g = cfg.bench.gpu_epoch
    setup = EpochSetup.of(g, cfg.data.num_classes)
    eager = epoch_speed.epoch_runner(setup, cfg.model, device)
    eager(True)  # warm-up
    t = interleaved({"clean": lambda: eager(False), "adv": lambda: eager(True)}, g.repeats, 0, 1, device)
    clean_s = statistics.median(t["clean"])
    bar = g.target_s * clean_s / g.reference_clean_epoch_s  # the H100 bar on this card, scaled by its clean epoch
    target = f"<= {bar:.2f} s ({g.target_s} s x clean epoch {clean_s:.3f} / reference {g.reference_clean_epoch_s} s)"
    rep.add(f"PGD-{g.steps} epoch / clean epoch ({g.n_images} images, batch {g.batch_size}), eager",
            ratio_stats(t["adv"], t["clean"]))
    rep.add("clean epoch seconds, eager", (clean_s, min(t["clean"]), max(t["clean"])))
    med = statistics.median(t["adv"])
    rep.add(f"PGD-{g.steps} epoch seconds, eager", (med, min(t["adv"]), max(t["adv"])), target, med <= bar)
    if g.processes:
        try:
            one = epoch_speed.concurrent_images_per_s(1, setup, cfg.model, device, epochs=g.process_epochs,
                                                      threads=g.process_threads, poll_s=g.process_poll_s)
            rep.add("images/s, one training process alone", (one,) * 3)
            for n in g.processes:
                agg = epoch_speed.concurrent_images_per_s(n, setup, cfg.model, device, epochs=g.process_epochs,
                                                          threads=g.process_threads, poll_s=g.process_poll_s)
                rep.add(f"images/s, {n} seeds' processes sharing the device / one alone", (agg / one,) * 3,
                        f">= {g.target_processes_ratio}", agg / one >= g.target_processes_ratio)
        except Exception as e:  # noqa: BLE001 - the compile modes below still get measured
            rep.note(f"seeds' processes: **failed** ({first_line(e)})")
    medians = {"eager": med}
    for mode in g.compile_modes:
        torch._dynamo.reset()  # each mode compiles from scratch, under no earlier mode's cache or recompile limit
        try:
            run = epoch_speed.epoch_runner(setup, cfg.model, device, compile=mode)
            first = epoch_speed.timed(lambda: run(True), device)  # compiles
            if run.fell_back:  # its compiler failed and the model ran eagerly: no time of it is the mode's
                rep.note(f"compile {mode}: **failed**, the compiler fell back to eager (see the log)")
                continue
            t = interleaved({"eager": lambda: eager(True), mode: lambda: run(True)}, g.repeats, 0, 1, device)
        except Exception as e:  # noqa: BLE001 - one mode failing must not cost the others' figures
            rep.note(f"compile {mode}: **failed** ({first_line(e)})")
            continue
        rep.note(f"compile {mode}: first epoch (compiling) {first:.1f} s")
        medians[mode] = statistics.median(t[mode])
        rep.add(f"PGD-{g.steps} epoch seconds, compile {mode}", (medians[mode], min(t[mode]), max(t[mode])),
                target, medians[mode] <= bar)
        rep.add(f"  compile {mode} / eager (alternating)", ratio_stats(t[mode], t["eager"]))
    best = min(medians, key=medians.get)
    rep.note(f"fastest epoch: {best} (module.compile={'false' if best == 'eager' else best})")
    return rep


def describe(cfg: DictConfig) -> str:
    g = cfg.bench.gpu_epoch
    return f"batch {g.batch_size}; repeats {g.repeats} epochs each"
