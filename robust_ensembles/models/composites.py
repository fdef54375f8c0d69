"""Composites (the paper's "meta-composites"): the penultimate features of a robust and a nearly
natural backbone, concatenated, with one new linear layer on top.

Both backbones are frozen: no trainable parameters, always in eval mode (BatchNorm running
statistics fixed), and each keeps its own input normalization. Only `head` trains; the attack
that trains it runs through the whole composite, i.e. through both backbones.
"""

from __future__ import annotations

import torch
from torch import nn

from robust_ensembles.core.errors import ConfigError

HEAD_INITS = ("random", "robust")


class Composite(nn.Module):
    def __init__(self, robust: nn.Module, natural: nn.Module, head_init: str = "random"):
        super().__init__()
        if head_init not in HEAD_INITS:
            raise ConfigError(f"composite.head_init={head_init!r} is unknown; use one of {list(HEAD_INITS)}.")
        if robust.num_classes != natural.num_classes:
            raise ConfigError(f"composite backbones predict {robust.num_classes} and {natural.num_classes} classes; "
                              f"use backbones trained on the same data.")
        self.robust, self.natural = robust, natural
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        self.num_classes = robust.num_classes
        self.feature_dim = robust.feature_dim + natural.feature_dim  # from the backbones, not from config
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        if head_init == "robust":
            self.copy_robust_head()
        self.train(False)

    def backbone_parameters(self):
        yield from self.robust.parameters()
        yield from self.natural.parameters()

    @torch.no_grad()
    def copy_robust_head(self) -> None:
        """Head = the robust model's head on the robust features, zero on the natural ones."""
        d = self.robust.feature_dim
        self.head.weight.zero_()
        self.head.weight[:, :d] = self.robust.head.weight
        self.head.bias.copy_(self.robust.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.robust.eval()
        self.natural.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.robust.features(x), self.natural.features(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
