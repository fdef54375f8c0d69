"""The bench's harness: contenders interleaved round by round, ratios with their spread, and the report."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles.bench.epoch_speed import sync


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
