"""Shared fixtures: the real configs, composed with tiny generated data and a temporary store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from robust_ensembles import CONFIG_DIR, PROJECT_ROOT

# The tiny scale itself (conf/experiment/tiny.yaml): generated data, sizes that train in about a second.
TINY = ["experiment=tiny"]


def compose_train(overrides: list[str], tmp_path: Path | None = None, config_name: str = "train"):
    """The real config `config_name` (train or evaluate) with `overrides`, its paths under tmp_path."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        extra = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"] if tmp_path else []
        return compose(config_name, overrides=[*overrides, *extra])


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides: str):
        return compose_train([*TINY, *overrides], tmp_path)
    return make


def run_module(args: list[str], env_extra: dict | None = None, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """`python -m <args>` from the project root, with its output captured."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def clean_test_accuracy(model, cfg) -> float:
    """A stored model's clean accuracy on cfg's test split, computed independently of the trainer."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("test")
    x, y = dm.splits["test"][list(range(len(dm.splits["test"])))]
    with torch.no_grad():
        return (model.eval()(x.float() / 255).argmax(1) == y).float().mean().item()
