"""`bench.mode=ratios` (`make bench`): the five speed ratios of the training and evaluation steps."""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import store
from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.bench import epoch_speed
from robust_ensembles.bench.epoch_speed import EpochSetup
from robust_ensembles.bench.harness import Report, batch_model_optimizer, interleaved, ratio_stats
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.checks import attacked_accuracy
from robust_ensembles.evaluation.curves import standard_error
from robust_ensembles.models import members
from robust_ensembles.models.ensembles import Ensemble


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


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
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
    model_cfg = OmegaConf.merge(OmegaConf.to_container(cfg.model, resolve=True), j.model)   # (j.model may add keys)
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
                          "(make bench-deps), or set bench.torchattacks=false.") from None
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


def describe(cfg: DictConfig) -> str:
    b = cfg.bench
    return f"batch {b.batch_size}; repeats {b.repeats} x {b.inner}"
