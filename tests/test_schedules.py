"""The warm-up / cosine / floor schedule and training until validation stops rising."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.training.callbacks import EarlyStoppingAfter
from robust_ensembles.training.schedules import warmup_cosine_floor


def lrs(steps: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = warmup_cosine_floor(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warm_up_then_cosine_to_the_floor_then_the_floor_for_good():
    lr = lrs(60, steps_per_epoch=10, anneal_epochs=4, pct_start=0.25, floor=0.05)
    assert lr[0] == pytest.approx(0.2 / 10) and lr[9] == pytest.approx(0.2)            # 10 warm-up steps of 40
    assert all(a >= b for a, b in zip(lr[9:40], lr[10:40]))                             # annealing only down
    assert lr[25] == pytest.approx(0.2 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 15 / 30))))
    assert lr[40:] == pytest.approx([0.2 * 0.05] * 20)                                  # held past the anneal


@pytest.mark.parametrize("bad", [dict(floor=1.5), dict(floor=-0.1), dict(pct_start=1.0), dict(anneal_epochs=0)])
def test_bad_schedule_values_name_their_key(bad):
    kwargs = dict(steps_per_epoch=10, anneal_epochs=4, pct_start=0.25, floor=0.05) | bad
    with pytest.raises(ConfigError, match=f"module.scheduler.{next(iter(bad))}"):
        lrs(1, **kwargs)


class Scripted(pl.LightningModule):
    """Logs a scripted val/adv_acc per epoch; trains a one-weight model."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.w = scores, nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.w(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/adv_acc", float(self.scores[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def epochs_run(scores, after_epochs, max_epochs, patience=1, checkpoints=None, resume=None):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=2)
    stop = EarlyStoppingAfter(after_epochs=after_epochs, monitor="val/adv_acc", mode="max", patience=patience)
    callbacks = [stop] + ([ModelCheckpoint(dirpath=checkpoints, save_last=True)] if checkpoints else [])
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=bool(checkpoints),
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Scripted(scores), train_dataloaders=data, val_dataloaders=data, ckpt_path=resume)
    return trainer.current_epoch, stop


def test_a_dip_during_the_anneal_does_not_stop_training_but_the_first_epoch_after_it_that_fails_to_rise_does():
    # epochs 1..: the 3rd dips (high learning rate); the anneal ends with the 4th (0.50); the 5th and 6th
    # rise, the 7th does not: 7 epochs run (stopped_epoch is 0-based), the best kept is the 6th
    scores = [0.30, 0.40, 0.35, 0.50, 0.60, 0.62, 0.61, 0.70, 0.80]
    ran, stop = epochs_run(scores, after_epochs=4, max_epochs=9)
    assert ran == 7 and stop.stopped_epoch == 6 and stop.best_score.item() == pytest.approx(0.62)
    # Lightning's own callback, watching from the start, stops on the dip
    assert epochs_run(scores, after_epochs=1, max_epochs=9)[0] == 3


def test_still_rising_at_max_epochs_is_not_an_early_stop():
    ran, stop = epochs_run([0.1, 0.2, 0.3, 0.4, 0.5], after_epochs=2, max_epochs=5)
    assert ran == 5 and stop.stopped_epoch == 0


def test_a_run_killed_after_its_stop_resumes_stopped(tmp_path):
    scores = [0.30, 0.40, 0.35, 0.50, 0.60, 0.62, 0.61, 0.70, 0.80]
    ran, _ = epochs_run(scores, after_epochs=4, max_epochs=9, checkpoints=tmp_path)
    assert ran == 7
    # resuming from last.ckpt (a job killed in its test, say) trains no further epoch
    again, stop = epochs_run(scores, after_epochs=4, max_epochs=9, checkpoints=tmp_path, resume=tmp_path / "last.ckpt")
    assert again == 7 and stop.stopped_epoch == 6
