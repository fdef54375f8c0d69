"""Store identities, lookup by query, and checkpoint errors."""

from __future__ import annotations

import pytest
import torch

from robust_ensembles import store
from robust_ensembles.errors import CheckpointError
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
    store.save_atomic({"w": torch.ones(2)}, path)
    assert torch.equal(store.load_weights(path)["w"], torch.ones(2))


def test_torn_last_checkpoint_is_set_aside(tmp_path):
    run = store.open_run(tmp_path, {"alpha": 0.1})
    run.checkpoint_dir.mkdir(parents=True)
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"\x00torn")
    assert run.resume_checkpoint() is None
    assert (run.checkpoint_dir / "last.ckpt.corrupt").is_file()


def test_lock_refuses_a_second_holder(tmp_path):
    run = store.open_run(tmp_path, {"alpha": 0.1})
    with run.lock():
        with pytest.raises(RuntimeError, match="another job is training"):
            with run.lock():
                pass
