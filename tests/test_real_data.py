"""The CPU preset on the real CIFAR-10 JPEG archive (slow: decodes 60k images, trains one epoch)."""

from __future__ import annotations

import pytest

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.train import train
from tests.conftest import compose_train

ARCHIVE = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg-q75.tar.gz"


@pytest.mark.slow
def test_cpu_preset_learns_on_the_jpeg_archive(tmp_path):
    assert ARCHIVE.is_file(), f"the offline CIFAR-10 archive is expected at {ARCHIVE} (see ../shared/data/README.md)"
    cfg = compose_train(["experiment=cpu", f"data.root={ARCHIVE}", "data.subset=2000", "data.val_size=500",
                         "data.test_subset=500", "trainer.max_epochs=1", "logger=none", "alpha=0.25",
                         "module.test_eps=[0.25]", "trainer.enable_progress_bar=false"], tmp_path)
    metrics = train(cfg)
    assert metrics["n_test"] == 500 and metrics["n_train"] == 2000
    assert metrics["test/nat_acc"] > 0.2  # well above chance (0.1) after one epoch on 2k real images
    assert metrics["test/adv_acc@0.25"] <= metrics["test/nat_acc"]
