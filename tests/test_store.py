"""Store identities, lookup by query, and checkpoint errors."""

from __future__ import annotations

import pytest
import torch

from robust_ensembles import store
from robust_ensembles.core import atomic_files
from robust_ensembles.core.errors import CheckpointError, StoreBusyError
from tests.conftest import compose_train


def key(tmp_path, *overrides):
    cfg = compose_train(list(overrides), tmp_path)
    return store.key_of(store.identity_of(cfg, cfg.store.identity.include, cfg.store.identity.exclude))


def test_identity_is_canonical_and_ignores_paths_and_loggers(tmp_path):
    base = key(tmp_path, "alpha=0")
    assert key(tmp_path, "alpha=0.0") == base
    assert key(tmp_path, "alpha=0", "data.root=/elsewhere", "logger=csv", "data.num_workers=4",
               "module.channels_last=true", "paths.store_dir=/x") == base
    assert key(tmp_path, "alpha=0.1") != base
    assert key(tmp_path, "alpha=0", "seed=1") != base
    assert key(tmp_path, "alpha=0", "trainer.max_epochs=3") != base
    assert key(tmp_path, "alpha=0", "attack.steps=3") != base
    assert key(tmp_path, "alpha=0", "module.optimizer.lr=0.05") != base


def test_identity_holds_the_weight_determining_keys(tmp_path):
    cfg = compose_train(["alpha=0.25", "seed=3"], tmp_path)
    ident = store.identity_of(cfg, cfg.store.identity.include, cfg.store.identity.exclude)
    assert ident["alpha"] == 0.25 and ident["seed"] == 3 and ident["attack"]["eps"] == 0.25
    assert "root" not in ident["data"] and "paths" not in ident and "logger" not in ident


def test_missing_and_corrupt_weights_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing") as e:
        store.load_weights(tmp_path / "model.pt")
    assert str(tmp_path / "model.pt") in str(e.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt") as e:
        store.load_weights(bad)
    assert str(bad) in str(e.value)


def test_weights_load_with_weights_only(tmp_path):
    path = tmp_path / "ok.pt"
    atomic_files.save_atomic({"w": torch.ones(2)}, path)
    assert torch.equal(store.load_weights(path)["w"], torch.ones(2))


def test_torn_last_checkpoint_is_set_aside(tmp_path):
    run = store.open_run(tmp_path, {"alpha": 0.1})
    run.checkpoint_dir.mkdir(parents=True)
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"\x00torn")
    assert run.resume_checkpoint() is None
    assert (run.checkpoint_dir / "last.ckpt.corrupt").is_file()


def test_lock_refuses_a_second_holder_after_its_timeout(tmp_path):
    run = store.open_run(tmp_path, {"alpha": 0.1})
    with run.lock():
        with pytest.raises(StoreBusyError, match=r"held by another job, pid \d+ .*store.lock.timeout_s"):
            with run.lock(timeout_s=0.2, poll_s=0.05):
                pass
    with run.lock(timeout_s=0):  # released: taken at once
        pass


WRITER = """
import sys, torch
from pathlib import Path
from robust_ensembles import store
from robust_ensembles.core import atomic_files
root, kind = Path(sys.argv[1]), sys.argv[2]
big = list(range(3_000_000))  # slow enough to kill mid-write
while True:
    if kind == "record":
        store.put_record(root, "curve", {"model": "m"}, 1, {"acc": 0.5, "per_point": big})
    else:  # what AtomicCheckpointIO.save_checkpoint calls (test_checkpoints_are_saved_through_the_store)
        atomic_files.save_atomic({"state_dict": {"w": torch.zeros(4_000_000)}}, root / "last.ckpt")
"""


@pytest.mark.parametrize("kind", ["record", "checkpoint"])
def test_a_kill_during_a_write_leaves_the_previous_complete_file(tmp_path, kind):
    import signal
    import subprocess
    import sys
    import time

    from robust_ensembles import PROJECT_ROOT

    if kind == "record":
        store.put_record(tmp_path, "curve", {"model": "m"}, 1, {"acc": 0.25})
        target = store.record_path(tmp_path, "curve", {"model": "m"})
    else:
        atomic_files.save_atomic({"state_dict": {"w": torch.ones(3)}}, tmp_path / "last.ckpt")
        target = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), kind], cwd=PROJECT_ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and not list(target.parent.glob(f".{target.name}.tmp*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # while the temporary file is being written
    proc.wait()
    assert time.time() < deadline, "the writer never started writing"
    if kind == "record":
        assert store.get_record(tmp_path, "curve", {"model": "m"}, 1)["acc"] == 0.25
    else:
        assert store.load_weights(target)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_checkpoints_are_saved_through_the_store(tiny_cfg, monkeypatch):
    """Training writes last.ckpt and best.ckpt with AtomicCheckpointIO, i.e. through core.atomic_files.save_atomic."""
    from robust_ensembles.train import train

    saved = []
    real = atomic_files.save_atomic
    monkeypatch.setattr(atomic_files, "save_atomic", lambda obj, path: (saved.append(path.name), real(obj, path))[1])
    train(tiny_cfg("alpha=0.1"))
    assert {"last.ckpt", "best.ckpt", "model.pt", "model_last.pt"} <= set(saved)
