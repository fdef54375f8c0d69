"""End to end: train into the store, skip what is complete, resume what died, log offline."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robust_ensembles import PROJECT_ROOT, store
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.models.members import load_model
from robust_ensembles.store import identity
from robust_ensembles.train import train
from robust_ensembles.training.adversarial import AdversarialTraining
from tests.conftest import TINY, clean_test_accuracy, run_module


def completed(store_dir: Path) -> list[Path]:
    return sorted(p.parent for p in store_dir.glob("*/COMPLETE"))


def test_train_writes_a_complete_entry_and_the_second_call_skips(tiny_cfg, tmp_path):
    cfg = tiny_cfg("alpha=0.1", "seed=0", "logger=csv")
    metrics = train(cfg)
    (entry,) = completed(tmp_path / "store")
    for name in ["model.pt", "model_last.pt", "metrics.json", "config.yaml", "identity.json", "checkpoints/last.ckpt"]:
        assert (entry / name).is_file(), name
    assert json.loads((entry / "metrics.json").read_text()) == metrics
    assert metrics["best_epoch"] == 0 and metrics["last_epoch"] == 0 and metrics["train_images_per_s"] > 0
    assert metrics["threads"] == torch.get_num_threads()  # what its fit time was measured with (ESTIMATE matches it)
    # the reported test accuracy is the kept model's, on the test split: recomputed here independently
    assert metrics["test/nat_acc"] == pytest.approx(clean_test_accuracy(load_model(store.Run.at(entry)), cfg), abs=1e-6)
    assert metrics["test/adv_acc@0.25"] <= metrics["test/nat_acc"] and metrics["n_test"] == 64
    # the monitored metric is one the module logs
    (metrics_csv,) = (tmp_path / "logs").rglob("metrics.csv")
    header = next(csv.reader(open(metrics_csv)))
    assert metrics["monitor"] == "val/adv_acc" and "val/adv_acc" in header and "val/nat_acc" in header
    stamp = (entry / "model.pt").stat().st_mtime_ns
    assert train(tiny_cfg("alpha=0.1", "seed=0", "logger=csv")) == metrics
    assert (entry / "model.pt").stat().st_mtime_ns == stamp


def test_stored_model_is_found_by_query_and_reloads(tiny_cfg, tmp_path):
    train(tiny_cfg("alpha=0.1", "seed=0"))
    train(tiny_cfg("alpha=0.1", "seed=1"))
    train(tiny_cfg("alpha=0", "seed=0"))
    root = tmp_path / "store"
    runs = store.query(root, {"alpha": 0.1, "model._target_": "robust_ensembles.models.architectures.small_cnn"})
    assert [r.identity["seed"] for r in runs] == [0, 1]
    assert [r.identity["seed"] for r in store.query(root, {"alpha": 0.1}, seeds=[1])] == [1]
    assert len(store.query(root, {"alpha": 0.0})) == 1
    model = load_model(runs[0])
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.features(x).shape == (2, model.feature_dim)


def test_negative_alpha_is_refused_before_training(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="alpha=-0.1 must be a number >= 0"):
        train(tiny_cfg("alpha=-0.1"))
    assert not (tmp_path / "store").exists()


def test_missing_data_fails_before_a_store_entry_is_created(tiny_cfg, tmp_path):
    from robust_ensembles.core.errors import DatasetNotFoundError

    cfg = tiny_cfg("alpha=0.1", "seed=0", "data.source=folder", f"data.root={tmp_path}/nowhere")
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        train(cfg)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_wandb_runs_offline_without_an_account(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny_cfg("alpha=0.1", "logger=wandb"))
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1


def test_a_failing_job_finishes_its_wandb_run_with_exit_code_1(tiny_cfg, monkeypatch):
    import wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    codes = []
    real_finish = wandb.finish
    monkeypatch.setattr(wandb, "finish", lambda exit_code=None, **kw: (codes.append(exit_code), real_finish(exit_code=exit_code)))

    def boom(self, batch, batch_idx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(AdversarialTraining, "training_step", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(tiny_cfg("alpha=0.1", "logger=wandb"))
    assert codes == [1]


@pytest.mark.slow  # fast coverage: the skip in test_train_writes_a_complete_entry..., multiruns in test_entry_points
def test_multirun_writes_four_entries_and_a_rerun_skips_them(tmp_path):
    args = ["robust_ensembles.train", "-m", *TINY, "alpha=0,0.1", "seed=0,1",
            f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    first = run_module(args)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = completed(tmp_path / "store")
    assert len(entries) == 4
    stamps = [(e / "COMPLETE").stat().st_mtime_ns for e in entries]
    second = run_module(args)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert log.count("[store] skip") == 4 and "[store] train" not in log
    assert [(e / "COMPLETE").stat().st_mtime_ns for e in completed(tmp_path / "store")] == stamps


def test_a_killed_run_resumes_into_the_same_entry(tmp_path):
    args = [*TINY, "alpha=0.1", "seed=0", "trainer.max_epochs=20", "trainer.limit_train_batches=4",
            f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "robust_ensembles.train", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "store").glob("*/checkpoints/last.ckpt")):
        time.sleep(0.02)
    time.sleep(0.5)  # well inside training: a few more epochs, then kill -9
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not completed(tmp_path / "store"), "the run finished before it could be killed"
    (entry,) = [p for p in (tmp_path / "store").iterdir() if p.is_dir()]
    assert json.loads((entry / ".lock").read_text())["pid"] == proc.pid  # the killed job's lock is left behind
    resumed = run_module(["robust_ensembles.train", *args])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[store] resume" in resumed.stdout + resumed.stderr
    assert f"broke the lock of {entry}: left by pid {proc.pid}" in resumed.stdout + resumed.stderr
    assert (entry / ".lock").read_text() == ""  # released: nobody's
    assert completed(tmp_path / "store") == [entry]
    metrics = json.loads((entry / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("last.ckpt") and metrics["last_epoch"] == 19


def test_training_until_validation_stops_rising_is_part_of_the_identity_and_recorded(tiny_cfg, tmp_path):
    plain = tiny_cfg("alpha=0.1", "seed=0")
    assert "early_stopping" not in identity.training_identity(plain)  # keys of models trained without it unchanged
    assert store.key_of(identity.training_identity(plain)) != store.key_of(
        identity.training_identity(tiny_cfg("alpha=0.1", "seed=0", "early_stopping=val_adv_acc")))
    until = tiny_cfg("alpha=0.1", "seed=0", "scheduler@module.scheduler=warmup_cosine_floor",
                     "+module.scheduler_interval=step", "early_stopping=val_adv_acc",
                     "module.scheduler.anneal_epochs=1", "trainer.max_epochs=4")
    assert until.early_stopping.after_epochs == 1  # follows the schedule's anneal
    metrics = train(until)
    # whatever the tiny model's validation does: a model that ran fewer than max_epochs stopped because
    # validation stopped rising, and then its last epoch failed to beat the kept (best) one
    assert metrics["last_epoch"] <= 3 and metrics["best_epoch"] <= metrics["last_epoch"]
    if metrics["last_epoch"] < 3:
        assert metrics["val_stopped_rising"]
    if metrics["val_stopped_rising"]:
        assert metrics["best_epoch"] < metrics["last_epoch"]
    # the anneal is one epoch of the batches actually trained (limit_train_batches), so the run ends at the floor
    (entry,) = completed(tmp_path / "store")
    last = torch.load(entry / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    peak, floor = until.module.optimizer.lr, until.module.scheduler.floor
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(peak * floor)


def test_a_job_prints_no_other_projects_notices(tiny_cfg, tmp_path, monkeypatch, capfd, caplog):
    """A first run shows our progress and results: not Lightning's tip about its cloud logger, wandb's warnings
    on the deprecated `anonymous` setting and on a log folder not made yet ('git root ... does not exist'), or
    torch's FutureWarning on Lightning's own pytree code; real warnings stay (each filter matches one message)."""
    import logging
    import warnings

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        train(tiny_cfg("alpha=0.1", "logger=wandb"))
        warnings.warn("a real FutureWarning", FutureWarning)
    out, err = capfd.readouterr()
    text = out + err + caplog.text + "\n".join(str(w.message) for w in caught)
    for notice in ("💡 Tip:", "anonymous setting has no effect", "does not exist", "isinstance(treespec, LeafSpec)"):
        assert notice not in text, notice
    assert "a real FutureWarning" in text
    # wandb warns about `anonymous` once per process: the logger itself must not hand it over
    from robust_ensembles.core.tracking import WandbLogger
    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path), mode="offline")._wandb_init
    assert WandbLogger(save_dir=str(tmp_path), mode="offline", anonymous=True)._wandb_init["anonymous"] == "allow"
    # wandb looks for the git repository from its folder, and warns when that folder is not made yet
    WandbLogger(save_dir=str(tmp_path / "logs_not_made_yet"), mode="offline")
    assert (tmp_path / "logs_not_made_yet").is_dir()
