"""Classifiers that take [0, 1] pixels and split into `features(x) -> (N, D)` and a linear `head`.

Input normalisation is the first layer of every model (as in robustness' `InputNormalize`), so
an attack radius means the same thing for every model, and composites can fuse backbones that
were trained with different normalisations.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers travel with the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"normalization: mean {list(mean)} and std {list(std)} need equal lengths and std > 0.")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> backbone (features, N x D) -> linear head (logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, normalization: dict):
        super().__init__()
        self.normalize = Normalize(**normalization)
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@stable_name("resnet18")
def resnet18(num_classes: int, normalization: dict) -> Classifier:
    """torchvision's ResNet18 with the CIFAR stem: 3x3 stride-1 first conv and no max-pool."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # the backbone ends at the pooled, flattened features
    return Classifier(net, feature_dim, num_classes, normalization)


@stable_name("small_cnn")
def small_cnn(num_classes: int, normalization: dict, width: int, depth: int,
              convs: Sequence[int] | None = None) -> Classifier:
    """`depth` stages of conv-BN-ReLU layers (width doubling per stage, 2x2 max-pool between) + global
    average pool. `convs[i]` is the number of 3x3 conv layers of stage i (null: one per stage); a
    second conv at full resolution sees more of each image before the first pooling."""
    if width < 1 or depth < 1:
        raise ConfigError(f"model.width={width} and model.depth={depth} must be >= 1.")
    convs = [1] * depth if convs is None else list(convs)
    if len(convs) != depth or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in convs):
        raise ConfigError(f"model.convs={convs} must be null or {depth} integers >= 1 (conv layers per stage).")
    layers, c_in = [], 3
    for i in range(depth):
        c_out = width * 2**i
        for _ in range(convs[i]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(2) if i < depth - 1 else nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    return Classifier(nn.Sequential(*layers), c_in, num_classes, normalization)
