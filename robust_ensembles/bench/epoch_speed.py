"""How fast one training epoch runs: L2 PGD-k adversarial training on device-resident data, eagerly or
under a torch.compile mode, and the aggregate throughput of several seeds' jobs sharing one device.

`make bench-gpu` (bench.mode=gpu_epoch) reports these; the training itself is `AdversarialTraining`
(`module.compile`), and several seeds share a GPU through the launcher (`jobs_per_gpu`).
"""

from __future__ import annotations

import contextlib
import queue
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.data import random_crop, random_flip
from robust_ensembles.training.compilation import EagerFallback, compiled, mark_step


@dataclass(frozen=True)
class EpochSetup:
    """One epoch's work: `n_images` random uint8 images on the device, batches of `batch_size`,
    crop + flip, PGD-`steps` at `eps` (step 2.5 * eps / steps), SGD; bf16 autocast on request."""
    n_images: int
    batch_size: int
    steps: int
    eps: float
    bf16: bool
    num_classes: int
    lr: float
    momentum: float
    crop_padding: int
    rel_step_size: float
    nesterov: bool
    weight_decay: float
    image_size: int

    @classmethod
    def of(cls, cfg: DictConfig | dict, num_classes: int) -> "EpochSetup":
        keys = ("n_images", "batch_size", "steps", "eps", "bf16", "lr", "momentum", "crop_padding", "rel_step_size",
                "nesterov", "weight_decay", "image_size")
        return cls(**{k: cfg[k] for k in keys}, num_classes=num_classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochRunner:
    """Runs one epoch (adversarial or clean) of a fresh model built from `model_cfg`; `fell_back` says
    whether a compiled model fell back to eager (its compiler failed), so its times are not the mode's."""

    def __init__(self, epoch: Callable[[bool], None], forward: torch.nn.Module):
        self.epoch, self.forward = epoch, forward

    def __call__(self, adversarial: bool) -> None:
        self.epoch(adversarial)

    @property
    def fell_back(self) -> bool:
        return isinstance(self.forward, EagerFallback) and self.forward.fell_back


def epoch_runner(setup: EpochSetup, model_cfg: DictConfig, device: torch.device, compile: bool | str = False,
                 seed: int = 0) -> EpochRunner:
    """An EpochRunner of a fresh model built from `model_cfg` under `compile` (module.compile's values)."""
    torch.manual_seed(seed)
    shape = (setup.n_images, 3, setup.image_size, setup.image_size)
    data = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    labels = torch.randint(0, setup.num_classes, (setup.n_images,), device=device)
    model = instantiate(model_cfg).to(device).to(memory_format=torch.channels_last)
    forward = compiled(model, compile)
    opt = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=setup.momentum, nesterov=setup.nesterov,
                          weight_decay=setup.weight_decay)
    attack = PGD(eps=setup.eps, norm="l2", steps=setup.steps, rel_step_size=setup.rel_step_size, random_start=True)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if setup.bf16 else contextlib.nullcontext

    def epoch(adversarial: bool) -> None:
        model.train()
        perm = torch.randperm(setup.n_images, device=device)
        for i in range(0, setup.n_images, setup.batch_size):
            idx = perm[i:i + setup.batch_size]
            x = random_flip(random_crop(data[idx].float() / 255, setup.crop_padding))
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            mark_step(forward)  # as AdversarialTraining.training_step does
            with autocast():
                if adversarial:
                    x = attack(forward, x, y)
                loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return EpochRunner(epoch, forward)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _concurrent_worker(rank: int, setup: EpochSetup, model_cfg: dict, device: str, compile, epochs: int,
                       threads: int | None, barrier, results) -> None:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    epoch = epoch_runner(setup, OmegaConf.create(model_cfg), dev, compile, seed=rank)
    epoch(True)  # warm-up (and compilation) before the common start
    barrier.wait()
    results.put(timed(lambda: [epoch(True) for _ in range(epochs)], dev))


def concurrent_images_per_s(processes: int, setup: EpochSetup, model_cfg: DictConfig, device: torch.device,
                            compile: bool | str = False, epochs: int = 1, threads: int | None = None,
                            poll_s: float = 5.0) -> float:
    """Aggregate adversarial-training images per second of `processes` seeds' jobs sharing the device, one
    process each (as the launcher runs them with jobs_per_gpu > 1), started together after a warm-up epoch."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    args = (setup, OmegaConf.to_container(model_cfg, resolve=True), str(device), compile, epochs, threads, barrier, results)
    procs = [ctx.Process(target=_concurrent_worker, args=(rank, *args)) for rank in range(processes)]
    for p in procs:
        p.start()
    walls: list[float] = []
    while len(walls) < processes:
        try:
            walls.append(results.get(timeout=poll_s))  # then look whether a process died
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:  # the others would wait at the barrier for ever
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"a concurrent epoch process exited with code {failed[0]}") from None
    for p in procs:
        p.join()
    return processes * epochs * setup.n_images / max(walls)
