"""Speed, measured side by side in one run: `python -m robust_ensembles.bench` (or `make bench`).

Every comparison interleaves its contenders (A, B, A, B, ...) over `bench.repeats` rounds after
`bench.warmup` untimed calls, and reports the median ratio with its min and max over rounds:

1. a PGD-k adversarial training step / a clean training step (floor 1 + 2k/3; target <= 1.1 x floor);
2. the "common" PGD (loss.backward() into the weights on every step) / ours (target >= 1.25);
3. torchattacks.PGDL2 / ours at the same steps and step size (target >= 1.0), with both
   accuracies and their standard errors on `bench.accuracy_n` points;
4. ensemble forward + input gradient, K members: loop, torch.func vmap, loop + channels_last;
5. on a CPU: the aggregate training images per second of n one-thread processes started together
   (`make tables JOBS=n`) / one process with `bench.threads` (target >= `bench.cpu_jobs.target`).

`bench.mode=gpu_epoch` instead times one paper-scale epoch (ResNet18, PGD-7 at 0.5) and a clean
epoch on the GPU fast path (data resident on the device, channels_last, bf16 autocast).
`bench.mode=eval_attacks` compares candidate evaluation attacks with AutoAttack on stored models
(accuracy gap and curve cost as a ratio to PGD-20; docs/evaluation.md).
`bench.mode=alpha_search` counts the models each search strategy of the alpha recommender trains on
stand-in stores whose robust gap is a known function of alpha (docs/recommend.md).
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import cli, epoch_speed, members, store
from robust_ensembles.alpha_search import STRATEGIES, AlphaSearch, Settings, SyntheticBackend
from robust_ensembles.attacks import PGD
from robust_ensembles.checks import attacked_accuracy
from robust_ensembles.ensembles import Ensemble
from robust_ensembles.epoch_speed import EpochSetup, sync
from robust_ensembles.errors import ConfigError
from robust_ensembles.curves import standard_error


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int, inner: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each fn, per round; contenders alternate within every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def common_pgd(model, x, y, eps, steps, step_size, tiny):
    """PGD as commonly written: loss.backward() fills every weight's .grad on every step."""
    was = model.training
    model.eval()
    delta = torch.randn_like(x)
    delta = eps * delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + tiny)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        model.zero_grad()
        loss.backward()
        g = delta.grad
        delta = delta.detach() + step_size * g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + tiny)
        delta = delta * torch.clamp(eps / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + tiny), max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    model.train(was)
    return (x + delta).detach()


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


class Report:
    """Rows (median, min, max, target, met) and notes; with `output`, `<output>.partial` is rewritten at every
    row and note (a run stopped early still leaves what it measured, beside the last complete file), and
    `finish` moves it onto `output`."""

    def __init__(self, output: str | Path | None = None, head: str = ""):
        self.rows: list[tuple[str, float, float, float, str, bool | None]] = []
        self.notes: list[str] = []
        self.output, self.head = (Path(output) if output else None), head

    def add(self, name, stats, target: str = "", met: bool | None = None):
        self.rows.append((name, *stats, target, met))
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def text(self) -> str:
        return f"{self.head}\n\n{self.markdown()}\n"

    def save(self) -> None:
        if self.output:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.with_name(self.output.name + ".partial").write_text(self.text())

    def finish(self) -> None:
        self.save()
        if self.output:
            self.output.with_name(self.output.name + ".partial").replace(self.output)

    def markdown(self) -> str:
        lines = ["| measurement | median | min | max | target | met |", "| --- | ---: | ---: | ---: | --- | --- |"]
        for name, med, lo, hi, target, met in self.rows:
            flag = "" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {name} | {med:.3f} | {lo:.3f} | {hi:.3f} | {target} | {flag} |")
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes])


def batch_model_optimizer(cfg: DictConfig, device: torch.device):
    """A seeded random batch (bench.batch_size, bench.image_size), the bench's model and its SGD optimizer."""
    b = cfg.bench
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(b.batch_size, 3, b.image_size, b.image_size, generator=g).to(device)
    y = torch.randint(0, cfg.data.num_classes, (b.batch_size,), generator=g).to(device)
    model = instantiate(cfg.model).to(device)
    return x, y, model, torch.optim.SGD(model.parameters(), lr=b.lr, momentum=b.momentum)


def bench_ratios(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    b = cfg.bench
    x, y, model, opt = batch_model_optimizer(cfg, device)
    run = lambda fns: interleaved(fns, b.repeats, b.warmup, b.inner, device)

    def train_step(inputs_fn):
        def step():
            xi = inputs_fn()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xi), y).backward()
            opt.step()
        return step

    for k in b.steps:
        attack = PGD(eps=b.eps, norm="l2", steps=k, rel_step_size=b.rel_step_size, random_start=True)
        t = run({"clean": train_step(lambda: x), "adv": train_step(lambda: attack(model, x, y))})
        floor = 1 + 2 * k / 3
        med = ratio_stats(t["adv"], t["clean"])
        rep.add(f"1. PGD-{k} training step / clean step", med, f"<= {b.target_train_factor} x {floor:.2f} = "
                f"{b.target_train_factor * floor:.2f}", med[0] <= b.target_train_factor * floor)
    k = max(b.steps)
    attack = PGD(eps=b.eps, norm="l2", steps=k, rel_step_size=b.rel_step_size, random_start=True)
    step = attack.step_size_for(b.eps)
    model.train()
    t = run({"ours": lambda: attack(model, x, y),
             "common": lambda: common_pgd(model, x, y, b.eps, k, step, attack.threat.tiny)})
    med = ratio_stats(t["common"], t["ours"])
    rep.add(f"2. common PGD-{k} (backward into weights) / ours", med, f">= {b.target_common}", med[0] >= b.target_common)
    model.zero_grad(set_to_none=True)
    model.eval()
    if b.torchattacks:
        bench_torchattacks(cfg, model, x, y, attack, rep, run, device)
    bench_ensemble(cfg, device, rep, run)
    if device.type == "cpu" and b.cpu_jobs.processes:
        bench_cpu_jobs(cfg, device, rep)
    return rep


def bench_cpu_jobs(cfg, device, rep):
    """5. The aggregate training images per second of n one-thread processes started together (`make tables
    JOBS=n`: Ray jobs with threads=1) against one process with the bench's threads (one job at a time)."""
    j = cfg.bench.cpu_jobs
    setup = EpochSetup.of(j.epoch, cfg.data.num_classes)
    model_cfg = OmegaConf.merge(cfg.model, j.model)
    speed = lambda n, threads: epoch_speed.concurrent_images_per_s(n, setup, model_cfg, device, epochs=j.epochs,
                                                                    threads=threads, poll_s=j.poll_s)
    threads = torch.get_num_threads()  # bench.threads, set by bench()
    one = speed(1, threads)
    agg = speed(j.processes, 1)
    rep.add(f"5. {j.processes} one-thread training processes / one {threads}-thread process (images/s, "
            f"PGD-{setup.steps}, batch {setup.batch_size})", (agg / one,) * 3, f">= {j.target}", agg / one >= j.target)
    rep.note(f"5. images/s: one {threads}-thread process {one:.0f}, {j.processes} one-thread processes "
             f"together {agg:.0f}")


def bench_torchattacks(cfg, model, x, y, attack, rep, run, device):
    b = cfg.bench
    try:
        import torchattacks
    except ImportError:
        raise ConfigError("bench.torchattacks=true needs torchattacks: pip install --no-deps torchattacks==3.5.1 scipy "
                          "(see ../shared/DEPENDENCIES.md), or set bench.torchattacks=false.") from None
    eps = b.eps
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=attack.step_size_for(eps), steps=attack.steps, random_start=True)
    t = run({"ours": lambda: attack(model, x, y), "torchattacks": lambda: theirs(x, y)})
    med = ratio_stats(t["torchattacks"], t["ours"])
    # accuracy of the same model under both attacks, on the same points
    xs, ys = accuracy_data(cfg, model, device)
    theirs_as_ours = lambda m, a, y_, eps: theirs(a, y_)  # torchattacks binds model and eps at construction
    acc = {name: attacked_accuracy(model, fn, xs, ys, eps, b.batch_size)
           for name, fn in (("ours", attack), ("torchattacks", theirs_as_ours))}
    se = max(standard_error(acc["ours"], len(ys)), standard_error(acc["torchattacks"], len(ys)))
    same = abs(acc["ours"] - acc["torchattacks"]) <= se
    rep.add(f"3. torchattacks.PGDL2-{attack.steps} / ours", med, ">= 1.0", med[0] >= 1.0)
    rep.note(f"3. accuracy at eps={eps} on {len(ys)} points ({b.accuracy_source}): ours "
              f"{100 * acc['ours']:.2f}%, torchattacks {100 * acc['torchattacks']:.2f}% (1 SE = "
              f"{100 * se:.2f} points): {'same within 1 SE' if same else '**differ by more than 1 SE**'}")


def accuracy_data(cfg, model, device):
    """Points for the accuracy comparison: a stored CPU-scale model on real test images, or synthetic."""
    b = cfg.bench
    if b.accuracy_source == "store":
        runs = store.query(cfg.store.root, {"alpha": b.store_alpha, "model._target_": cfg.model._target_})
        if not runs:
            raise ConfigError(f"bench.accuracy_source=store needs a trained model at alpha={b.store_alpha}: "
                              f"python -m robust_ensembles.train experiment=cpu alpha={b.store_alpha} seed=0")
        stored = members.load_model(runs[0]).to(device)
        model.load_state_dict(stored.state_dict())
        dm = instantiate(cfg.data)
        dm.setup("test")
        xs, ys = dm.splits["test"][list(range(min(b.accuracy_n, len(dm.splits["test"]))))]
        return xs.to(device).float() / 255, ys.to(device)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    xs = torch.rand(b.accuracy_n, 3, b.image_size, b.image_size, generator=g).to(device)
    with torch.no_grad():
        ys = model(xs).argmax(1)  # points the model classifies "correctly" by construction
    return xs, ys


def bench_ensemble(cfg, device, rep, run):
    b = cfg.bench
    members = [instantiate(cfg.model).to(device).eval() for _ in range(b.ensemble_k)]
    x = torch.rand(b.ensemble_batch, 3, b.image_size, b.image_size, device=device)
    y = torch.randint(0, cfg.data.num_classes, (b.ensemble_batch,), device=device)
    variants = {
        "loop": (Ensemble(members, impl="loop"), torch.contiguous_format),
        "vmap": (Ensemble(members, impl="vmap"), torch.contiguous_format),
        "loop+channels_last": (Ensemble([copy.deepcopy(m).to(memory_format=torch.channels_last) for m in members],
                                        impl="loop"), torch.channels_last),
    }

    def fwd_grad(ens, fmt):
        def f():
            xi = x.contiguous(memory_format=fmt).requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(ens(xi), y), xi)
        return f

    t = run({name: fwd_grad(*v) for name, v in variants.items()})
    for name in ("vmap", "loop+channels_last"):
        rep.add(f"4. K={b.ensemble_k} ensemble fwd+input-grad: {name} / loop", ratio_stats(t[name], t["loop"]),
                "< 1 means faster than loop")
    best = min(t, key=lambda n: statistics.median(t[n]))
    rep.note(f"4. fastest ensemble path on {device.type}: {best} "
              f"(median {1000 * statistics.median(t[best]):.1f} ms per call, batch {b.ensemble_batch})")


def bench_gpu_epoch(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """One paper-scale epoch (ResNet18, PGD-k, data resident on the device, channels_last, bf16): eager
    against a clean epoch; the aggregate images per second of n seeds' jobs sharing the device (one
    process each, started together) against one alone; then each torch.compile mode, compiled in a
    warm-up epoch and timed alternating with eager epochs. Rows are written as they are measured."""
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


def bench_profile(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
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


def bench_eval_attacks(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """Candidate evaluation attacks on stored models (`make bench-eval-attacks`; docs/evaluation.md).

    For every row (a model of the tables, named by its overrides, composed as `table` composes its rows at
    `scale`), on the same first n test points: each contender's curve over that scale's radius grid
    (only points still standing are attacked at
    the next radius, as in the tables), timed side by side in one run; its accuracy at eps against the
    row's standard AutoAttack record (from the store, or computed first with compute_autoattack=true);
    and its wall time as a ratio to the baseline's (L2 PGD-20, the former evaluation attack)."""
    from robust_ensembles.curves import attack_grid, check_grid
    from robust_ensembles.paper_tables.driver import ROW_CONFIG, TableRun, compose_config
    from robust_ensembles.robustness import autoattack_record, first_points

    e = cfg.bench.eval_attacks
    contenders = {"baseline": list(e.baseline), "reference": list(e.reference),
                  **{k: list(v) for k, v in e.candidates.items()}}
    lines = ["| row | attack | search | acc at eps (AA points) | AutoAttack | attack - AA | flipped by AA only | by the attack only "
             "| largest gap to the reference over the grid | points it flips differently | wall s | / baseline |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ref_gaps: dict[str, list[float]] = {k: [] for k in e.candidates}
    ratios: dict[str, list[float]] = {k: [] for k in e.candidates}
    gaps: dict[str, list[float]] = {k: [] for k in contenders}
    row_base = TableRun(e.table, e.scale, list(e.overrides)).row_base  # the rows as that table evaluates them
    for row in e.rows:
        common = [*row_base, *row, f"evaluation.autoattack.eps={e.eps}", f"evaluation.autoattack.n={e.n}",
                  f"evaluation.autoattack.compute={bool(e.compute_autoattack)}"]
        base_cfg = compose_config(ROW_CONFIG, common)
        model, runs, label = members.build(base_cfg)
        model = model.to(device).eval()
        aa = autoattack_record(base_cfg, model, runs, label) if e.autoattack else None
        if aa is None and e.autoattack:
            raise ConfigError(f"bench.eval_attacks: no standard AutoAttack record for {label} at eps={e.eps} on "
                              f"{e.n} points in the store; run its table with AUTOATTACK=run, or set "
                              f"bench.eval_attacks.compute_autoattack=true.")
        datamodule = instantiate(base_cfg.data, eval_batch_size=base_cfg.evaluation.batch_size,
                                 test_split=base_cfg.evaluation.split, device_resident=False)
        x, y = first_points(datamodule, base_cfg.evaluation.split, e.n, device)
        grid = check_grid(base_cfg.evaluation.eps_grid)
        evaluations = {k: compose_config(ROW_CONFIG, [*common, *over]).evaluation for k, over in contenders.items()}
        attacks = {k: instantiate(ev.attack) for k, ev in evaluations.items()}
        seconds, accs, all_flips = {}, {}, {}
        bs = base_cfg.evaluation.batch_size
        for name, attack in attacks.items():  # one after another on the same points, in one run
            torch.manual_seed(cfg.seed)
            search, warm = evaluations[name].search, evaluations[name].warm_start
            t0 = time.perf_counter()
            flips = all_flips[name] = torch.cat([attack_grid(model, attack, x[i:i + bs], y[i:i + bs], grid, False,
                                                             search, warm).min_flip.cpu() for i in range(0, len(y), bs)])
            search += " warm" if warm else ""
            seconds[name] = time.perf_counter() - t0
            # against the reference (the current default) at every radius of the grid, point by point
            ref = all_flips.get("reference")
            if ref is not None and name not in ("baseline", "reference"):
                by_eps = [abs((flips > r + 1e-12).float().mean().item() - (ref > r + 1e-12).float().mean().item())
                          for r in grid]
                differ = int((flips != ref).sum())  # points whose smallest flipping radius differs
                ref_gaps[name].append(max(by_eps))
                vs_ref = f"{100 * max(by_eps):.2f} at {grid[max(range(len(grid)), key=by_eps.__getitem__)]:g} | {differ}"
            else:
                vs_ref = "- | -"
            ours = flips > e.eps + 1e-12
            accs[name] = ours.float().mean().item()
            if aa is not None:
                theirs = torch.tensor(aa["autoattack_correct"], dtype=torch.bool)
                aa_only, ours_only = int((ours & ~theirs).sum()), int((~ours & theirs).sum())  # per-point disagreement
                gaps[name].append(accs[name] - aa["autoattack_acc"])
                vs_aa = (f"{100 * aa['autoattack_acc']:.2f} | {100 * (accs[name] - aa['autoattack_acc']):+.2f} | "
                         f"{aa_only} | {ours_only}")
            else:
                vs_aa = "- | - | - | -"
            if name in ratios:
                ratios[name].append(seconds[name] / seconds["baseline"])
            lines.append(f"| {label} | {name}: {attack!r} | {search} | {100 * accs[name]:.2f} | {vs_aa} | {vs_ref} | "
                         f"{seconds[name]:.0f} | {seconds[name] / seconds['baseline']:.2f} |")
            print(lines[-1], flush=True)
    for name in e.candidates:
        worst, worst_ref = max(gaps[name], default=None), max(ref_gaps[name])
        to_aa = (f"worst gap to AA {100 * worst:+.2f} points (bar <= {100 * e.max_gap:g})" if worst is not None
                 else "AutoAttack not compared (bench.eval_attacks.autoattack=false)")
        rep.add(f"{name}: time / baseline over rows", (statistics.median(ratios[name]), min(ratios[name]),
                max(ratios[name])), f"<= {e.max_ratio} on every row; {to_aa}; to the reference {100 * worst_ref:.2f} "
                f"at worst over the grid (bar <= {100 * e.max_reference_gap:g})",
                max(ratios[name]) <= e.max_ratio and (worst is None or worst <= e.max_gap)
                and worst_ref <= e.max_reference_gap)
    rep.note(f"per row and attack, on the first {e.n} test points at eps={e.eps} (AutoAttack: the stored "
              f"standard record; acc = the attack's curve, every grid radius up to eps):\n\n" + "\n".join(lines))
    if gaps["baseline"]:
        rep.note("baseline gap to AutoAttack per row: " + ", ".join(f"{100 * g:+.2f}" for g in gaps["baseline"]))
    return rep


def bench_precision(cfg: DictConfig, rep: Report) -> Report:
    """Evaluation precision parity (`bench.mode=precision`): one stored model's curve record at eps in each
    of `precisions` (records keyed by precision, so the tables reuse them), on the same points; each
    lower precision against the first (fp32) as a paired difference, the bar being one binomial standard
    error of the reference accuracy (issues 16 and 17: evaluation stays fp32 unless this holds)."""
    from robust_ensembles.outcomes import under_curve
    from robust_ensembles.paired import paired_difference
    from robust_ensembles.paper_tables.driver import compose_config
    from robust_ensembles.robustness import evaluate

    p = cfg.bench.precision
    records = {prec: evaluate(compose_config("evaluate", [*p.overrides, f"evaluation.eps_grid=[0,{p.eps}]",
                                                          f"evaluation.auc_eps={p.eps}", f"evaluation.precision={prec}"]))
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


def bench_alpha_search(cfg: DictConfig, rep: Report) -> Report:
    """Models trained until the recommendation is settled (within the resolution of the true smallest
    passing alpha, found by brute force on the same grid), per strategy, over stand-in stores: the
    bracketing searches (`search.strategy`), and Optuna's TPE sampler (what the Hydra Optuna sweeper runs)
    on the penalised objective natural - 1[constraint missed], stopped by an oracle as soon as its best
    passing alpha is the right one (a real run could not know when to stop, so this favours it)."""
    a = cfg.bench.alpha_search
    settings = lambda strategy: Settings(a.target_eps, tuple(a.bracket), a.resolution, a.budget,
                                         a.margin, a.level, strategy=strategy)
    cases = [(c, s) for c in a.crossings for s in a.slopes]
    counts: dict[str, list[float]] = {}
    misses: dict[str, int] = {}
    for crossing, slope in cases:
        oracle = AlphaSearch(settings("bisect"), SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
        truth = min((g for g in oracle.candidates() if oracle.trial(g, a.K).passes), default=None)
        for strategy in STRATEGIES:
            search = AlphaSearch(settings(strategy), SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
            r = search.search(a.K)
            ok = r.chosen is not None and truth is not None and truth - 1e-9 <= r.chosen.alpha <= truth + a.resolution + 1e-9
            counts.setdefault(strategy, []).append(r.trained)
            misses[strategy] = misses.get(strategy, 0) + (not ok)
        if a.optuna:
            trained, ok = optuna_search(settings("bisect"), a, crossing, slope, truth)
            counts.setdefault("optuna_tpe", []).append(trained)
            misses["optuna_tpe"] = misses.get("optuna_tpe", 0) + (not ok)
    for name, c in counts.items():
        rep.add(f"models trained, {name} (K={a.K}, {len(cases)} stand-in stores)",
                (statistics.median(c), min(c), max(c)), f"mean {statistics.mean(c):.1f}; missed the answer "
                f"in {misses[name]} of {len(cases)}")
    rep.note(f"stand-ins: crossing alpha {list(a.crossings)} x slope of the robust gap {list(a.slopes)}; "
              f"n={a.n} validation points, margin {a.margin}, resolution {a.resolution}, bracket "
              f"{list(a.bracket)} x eps_t={a.target_eps}; optuna_tpe capped at {a.optuna_max_trials} alphas")
    return rep


def optuna_search(settings: Settings, a: DictConfig, crossing: float, slope: float, truth: float | None) -> tuple[int, bool]:
    try:
        import optuna
    except ImportError:
        raise ConfigError("bench.alpha_search.optuna=true compares with Optuna's TPE sampler: pip install optuna "
                          "(or bench.alpha_search.optuna=false)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = AlphaSearch(settings, SyntheticBackend(a.target_eps, crossing, slope, a.n), log=lambda m: None)
    lo, hi = search.bracket()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=a.seed))
    best = None
    for _ in range(a.optuna_max_trials):
        trial = study.ask()
        alpha = search.s.snap(trial.suggest_float("alpha", lo, hi, step=a.resolution))
        t = search.trial(alpha, a.K)
        study.tell(trial, t.natural - (0.0 if t.passes else 1.0))
        if t.passes and (best is None or alpha < best):
            best = alpha
        if best is not None and truth is not None and truth - 1e-9 <= best <= truth + a.resolution + 1e-9:
            return search.trained, True
    return search.trained, False


def bench_store_digest(cfg: DictConfig, rep: Report) -> Report:
    """The digest check on every model load (`bench.mode=store_digest`, `make bench-store`): for each model
    of `bench.store_digest.models`, a store entry in a temporary folder, then `Run.weights()` (sha256 of the
    file against the manifest, then torch.load) against torch.load alone, alternating."""
    import tempfile

    b = cfg.bench.store_digest
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_cfg in b.models.items():
            model = instantiate(model_cfg, num_classes=cfg.data.num_classes, normalization=cfg.data.normalization)
            state = model.state_dict()
            run = store.open_run(tmp, {"bench": name, "scheme": store.IDENTITY_SCHEME})
            run.begin(OmegaConf.create({"model": OmegaConf.to_container(model_cfg)}))
            run.finish(state, state, {})
            path, mb = run.path / "model.pt", (run.path / "model.pt").stat().st_size / 1e6

            def checked():
                store._VERIFIED.clear()  # every load hashes its file, as a new process does
                run.weights()

            t = interleaved({"checked": checked, "plain": lambda: store.load_weights(path),
                             "sha256": lambda: store.sha256_file(path)}, b.repeats, 1, 1, torch.device("cpu"))
            rep.add(f"{name} ({mb:.1f} MB): load with digest check / torch.load alone", ratio_stats(t["checked"], t["plain"]))
            rep.add(f"{name} ({mb:.1f} MB): sha256 of the weights file, ms", tuple(1e3 * v for v in
                                                                                   (statistics.median(t["sha256"]), min(t["sha256"]), max(t["sha256"]))))
            rep.note(f"{name}: torch.load {1e3 * statistics.median(t['plain']):.1f} ms, with the check "
                     f"{1e3 * statistics.median(t['checked']):.1f} ms; sha256 at "
                     f"{mb / statistics.median(t['sha256']):.0f} MB/s")
    return rep


def header(cfg: DictConfig, device: torch.device) -> str:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    head = f"device: {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; mode {cfg.bench.mode}"
    if cfg.bench.mode == "precision":
        return f"{head}; {' '.join(cfg.bench.precision.overrides)}; eps {cfg.bench.precision.eps}; paired on the same points"
    if cfg.bench.mode == "alpha_search":
        return f"{head}; no torch work: stand-in stores (robust_ensembles.alpha_search.SyntheticBackend)"
    if cfg.bench.mode == "store_digest":
        return f"{head}; {cfg.bench.store_digest.repeats} loads each, alternating; the file in the page cache"
    if cfg.bench.mode == "eval_attacks":
        e = cfg.bench.eval_attacks
        return f"{head}; {len(e.rows)} rows, first {e.n} test points, eps {e.eps}; one curve per attack and row"
    b = cfg.bench.gpu_epoch if cfg.bench.mode == "gpu_epoch" else cfg.bench
    rounds = f"{b.repeats} epochs each" if cfg.bench.mode == "gpu_epoch" else f"{b.repeats} x {b.inner}"
    return f"{head}; batch {b.batch_size}; repeats {rounds}"


def bench(cfg: DictConfig) -> Report:
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.bench.device != "cpu" else "cpu")
    rep = Report(cfg.bench.output, header(cfg, device))
    if cfg.bench.mode == "ratios":
        rep = bench_ratios(cfg, device, rep)
    elif cfg.bench.mode == "gpu_epoch":
        if device.type != "cuda" and not cfg.bench.allow_cpu:
            raise ConfigError("bench.mode=gpu_epoch measures a GPU; no CUDA device is visible "
                              "(bench.allow_cpu=true runs its logic on the CPU at small sizes).")
        rep = bench_gpu_epoch(cfg, device, rep)
    elif cfg.bench.mode == "profile":
        rep = bench_profile(cfg, device, rep)
    elif cfg.bench.mode == "eval_attacks":
        rep = bench_eval_attacks(cfg, device, rep)
    elif cfg.bench.mode == "alpha_search":
        rep = bench_alpha_search(cfg, rep)
    elif cfg.bench.mode == "precision":
        rep = bench_precision(cfg, rep)
    elif cfg.bench.mode == "store_digest":
        rep = bench_store_digest(cfg, rep)
    else:
        raise ConfigError(f"bench.mode={cfg.bench.mode!r} is unknown; use ratios, gpu_epoch, profile, eval_attacks, "
                          f"alpha_search, precision or store_digest.")
    rep.finish()
    print(rep.text(), flush=True)
    return rep


main = cli.main("bench")(bench)


if __name__ == "__main__":
    main()
