"""Madry adversarial training as a LightningModule.

min over weights of the loss at the worst point PGD finds in the ball of radius alpha around each
training image (alpha = 0: natural training). Metrics are named for what they are:
`train/adv_acc`, `val/nat_acc`, `val/adv_acc` (the checkpoint monitor), `test/adv_acc@<eps>`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name
from robust_ensembles.training.compilation import compiled, mark_step


def adv_key(eps: float) -> str:
    return f"adv_acc@{eps:g}"


def _slot(metric_name: str) -> str:
    """ModuleDict keys cannot hold '/', '@' or '.': 'test/adv_acc@0.25' -> 'test_adv_acc_at_0p25'."""
    return metric_name.replace("/", "_").replace("@", "_at_").replace(".", "p")


@stable_name("adversarial_training", formerly=("robust_ensembles.training.AdversarialTraining",))
class AdversarialTraining(pl.LightningModule):
    """Args:
        model: a `Classifier` taking [0, 1] pixels.
        attack: the training attack (its eps is alpha).
        eval_attack: the attack for validation (at alpha) and test (at each of `test_eps`).
        optimizer, scheduler: partials (`_partial_: true` in config) taking params / optimizer.
        test_eps: radii at which `trainer.test` reports adversarial accuracy.
        train_nat_metrics: also log accuracy on the clean training batch (one extra forward).
        channels_last: run the model in channels_last memory format.
        compile: false, true or a torch.compile mode (`robust_ensembles.training.compilation`).
        scheduler_interval: "epoch" or "step" (when the scheduler steps); a step-wise scheduler whose
            `total_steps` is null (OneCycleLR) gets the trainer's number of optimizer steps, one whose
            `steps_per_epoch` is null (`schedules.warmup_cosine_floor`) the steps of one epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        attack: PGD,
        eval_attack: PGD,
        optimizer: Callable,
        scheduler: Callable | None,
        test_eps: Sequence[float],
        train_nat_metrics: bool,
        channels_last: bool,
        compile: bool | str = False,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        self.model = model
        self.attack, self.eval_attack = attack, eval_attack
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.test_eps = [eval_attack.check_eps(e) for e in test_eps]
        self.train_nat_metrics = train_nat_metrics
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"module.scheduler_interval={scheduler_interval!r} must be 'epoch' or 'step'.")
        self.scheduler_interval = scheduler_interval
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        # not registered as a submodule: the weights live (and are saved) once, under `model`
        object.__setattr__(self, "forward_model", compiled(self.model, compile))
        nc = model.num_classes
        self.acc = nn.ModuleDict({
            _slot(name): MulticlassAccuracy(nc, average="micro")
            for name in ["train/nat_acc", "train/adv_acc", "val/nat_acc", "val/adv_acc", "test/nat_acc"]
            + [f"test/{adv_key(e)}" for e in self.test_eps]
        })

    @property
    def alpha(self) -> float:
        return self.attack.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _metric(self, name: str) -> MulticlassAccuracy:
        return self.acc[_slot(name)]

    def _log_acc(self, name: str, logits: torch.Tensor, y: torch.Tensor, **kw) -> None:
        metric = self._metric(name)
        metric(logits, y)
        self.log(name, metric, on_step=False, on_epoch=True, **kw)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = self._input(x)
        mark_step(self.forward_model)  # CUDA graphs (compile=reduce-overhead): a new iteration begins
        x_adv = self.attack(self.forward_model, x, y)
        logits = self.forward_model(x_adv)
        loss = F.cross_entropy(logits, y)
        self.log("train/adv_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self._log_acc("train/adv_acc", logits.detach(), y, prog_bar=True)
        if self.train_nat_metrics:
            self.model.eval()
            with torch.no_grad():
                self._log_acc("train/nat_acc", self.forward_model(x), y)
            self.model.train()
        return loss

    def _evaluate(self, batch, stage: str, radii: Sequence[tuple[str, float]]):
        x, y = batch
        x = self._input(x)
        with torch.no_grad():
            nat_logits = self.forward_model(x)
        self.log(f"{stage}/nat_loss", F.cross_entropy(nat_logits, y))
        self._log_acc(f"{stage}/nat_acc", nat_logits, y, prog_bar=stage == "val")
        for name, eps in radii:
            x_adv = self.eval_attack(self.forward_model, x, y, eps=eps)
            with torch.no_grad():
                logits = self.forward_model(x_adv)
            if name == f"{stage}/adv_acc":
                self.log(f"{stage}/adv_loss", F.cross_entropy(logits, y))
            self._log_acc(name, logits, y, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx):
        # at alpha = 0 the attack is the identity, so val/adv_acc = val/nat_acc (natural training)
        self._evaluate(batch, "val", [("val/adv_acc", self.alpha)])

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", [(f"test/{adv_key(e)}", e) for e in self.test_eps])

    def configure_optimizers(self):
        # frozen parameters (a composite's backbones) never reach the optimizer
        optimizer = self.optimizer_factory(params=[p for p in self.model.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if getattr(self.scheduler_factory, "keywords", {}).get("total_steps", 0) is None:
            if self.scheduler_interval != "step":
                raise ConfigError("the scheduler's total_steps is filled with the number of optimizer steps, but "
                                  f"module.scheduler_interval={self.scheduler_interval!r} would step it once per epoch; "
                                  "set module.scheduler_interval=step (+module.scheduler_interval=step on the command line).")
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if getattr(self.scheduler_factory, "keywords", {}).get("steps_per_epoch", 0) is None:
            if self.scheduler_interval != "step":
                raise ConfigError("the scheduler's steps_per_epoch is filled in per optimizer step, but "
                                  f"module.scheduler_interval={self.scheduler_interval!r}; set module.scheduler_interval=step.")
            self.trainer.estimated_stepping_batches  # sets up the training data, hence num_training_batches
            extra["steps_per_epoch"] = max(1, math.ceil(self.trainer.num_training_batches
                                                        / self.trainer.accumulate_grad_batches))
        scheduler = self.scheduler_factory(optimizer=optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

