"""Lightning callbacks of our own: only what Lightning does not ship."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class Throughput(pl.Callback):
    """Training images per second, over training batches only (validation time excluded).

    Recorded in the store so a user can predict what a sweep costs before starting it.
    """

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self._t0 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t0
        self.images += len(batch[1])

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds else None
