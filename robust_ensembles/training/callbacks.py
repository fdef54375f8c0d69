"""Lightning callbacks of our own: only what Lightning does not ship."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from robust_ensembles.core.registry import stable_name


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


@stable_name("early_stopping_after")
class EarlyStoppingAfter(EarlyStopping):
    """Lightning's EarlyStopping, watching only once `after_epochs` epochs are done (e.g. the anneal of
    `schedules.warmup_cosine_floor`).

    A warm-up at a high learning rate can dip the monitored metric before the anneal; Lightning's own
    callback would latch `should_stop` there (and `min_epochs` only defers the stop). Here the epoch that
    completes `after_epochs` sets the best score, and training stops once `patience` later epochs fail
    to beat it: trained until the metric stops rising, up to the trainer's max_epochs.
    """

    def __init__(self, after_epochs: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.after_epochs = after_epochs

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run killed after the stop (in its test, say) resumes from last.ckpt: the stop holds, since
        # Lightning restores this callback's state but not the trainer's should_stop
        if self.stopped_epoch > 0:
            trainer.should_stop = True

    def _watching(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch + 1 >= self.after_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watching(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watching(trainer):
            super().on_validation_end(trainer, pl_module)
