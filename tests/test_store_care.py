"""The store never returns damaged weights, outlives the code, and lets overlapping jobs wait:
digests checked on load, keys from stable names (a moved class keeps every key; an old-scheme store
is migrated and found), locks that wait and break a dead holder's, and the store command."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest

from robust_ensembles import PROJECT_ROOT, store
from robust_ensembles.core import registry
from robust_ensembles.core.cli import EXIT_USER_ERROR
from robust_ensembles.core.errors import ConfigError, StoreIntegrityError, StoreSchemeError
from robust_ensembles.evaluate import evaluate
from robust_ensembles.models import architectures
from robust_ensembles.store import admin, identity
from robust_ensembles.store.record_kinds import VERSIONS
from robust_ensembles.train import train
from tests.conftest import TINY, compose_train, run_module

EVAL = ["evaluation.eps_grid=[0,0.25,0.5]", "evaluation.attack.steps=2", "evaluation.attack.target_classes=1",
        "evaluation.attack.targeted_steps=2"]


def _paths(tmp_path: Path) -> list[str]:
    return [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]


def _flip_inside_a_tensor(weights: Path) -> None:
    """Flip bytes in the middle of the largest tensor's storage, leaving the zip structure intact (what a
    failing disk or a partial copy leaves): torch.load still reads the file."""
    with zipfile.ZipFile(weights) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(weights, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        chunk = f.read(8)
        f.seek(-8, os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_flipped_bytes_in_stored_weights_are_refused_by_evaluate_and_listed_by_verify(tmp_path):
    cfg = compose_train([*TINY, "alpha=0.1"], tmp_path)
    train(cfg)
    run = identity.training_run(cfg)
    _flip_inside_a_tensor(run.path / "model.pt")
    store.load_weights(run.path / "model.pt")  # the damage is silent to torch.load
    with pytest.raises(StoreIntegrityError, match=rf"store entry {run.key} \(alpha=0.1 seed=0\) is damaged: model.pt has sha256"):
        run.weights()
    out = run_module(["robust_ensembles.evaluate", *TINY, *EVAL, "alpha=0.1", *_paths(tmp_path)])
    assert out.returncode == EXIT_USER_ERROR and "Traceback" not in out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert f"store entry {run.key} (alpha=0.1 seed=0) is damaged: model.pt" in line and "delete it and rerun" in line
    assert not (tmp_path / "store" / "records").exists()  # no number from damaged weights
    v = run_module(["robust_ensembles.store", "verify", *_paths(tmp_path)])
    assert v.returncode == 1
    assert f"damaged entry {run.key} (alpha=0.1 seed=0): model.pt has sha256" in v.stdout and "1 problem (restore" in v.stdout


def test_every_served_file_is_in_the_manifest_and_a_sound_store_verifies(tmp_path):
    cfg = compose_train([*TINY, "alpha=0.1"], tmp_path)
    train(cfg)
    run = identity.training_run(cfg)
    files = run.manifest()["files"]
    assert {"model.pt", "model_last.pt", "metrics.json", "identity.json", "config.yaml",
            "checkpoints/last.ckpt", "checkpoints/best.ckpt"} == set(files)
    assert files["model.pt"]["sha256"] == hashlib.sha256((run.path / "model.pt").read_bytes()).hexdigest()
    v = admin.verify(tmp_path / "store")
    assert v.sound and v.entries == 1 and v.files == 7
    (run.path / "metrics.json").write_text((run.path / "metrics.json").read_text().replace("0", "1", 1))
    with pytest.raises(StoreIntegrityError, match="metrics.json has sha256"):
        run.metrics()
    (run.path / "checkpoints" / "last.ckpt").unlink()
    problems = admin.verify(tmp_path / "store").problems
    assert len(problems) == 2 and "checkpoints/last.ckpt is missing" in problems[0] and "metrics.json has" in problems[1]


def test_a_damaged_identity_is_refused_rather_than_matched(tmp_path):
    cfg = compose_train([*TINY, "alpha=0.1"], tmp_path)
    train(cfg)
    run = identity.training_run(cfg)
    ident = json.loads((run.path / "identity.json").read_text())
    ident["alpha"] = 0.2  # a flipped digit: the entry would answer a query for another model
    (run.path / "identity.json").write_text(json.dumps(ident))
    with pytest.raises(StoreIntegrityError, match=rf"store entry {run.key} \(alpha=0.2 seed=0\) is damaged: identity.json has"):
        store.query(tmp_path / "store", {"alpha": 0.2})


# ----------------------------------------------------------------------------- keys from meaning
def test_keys_hold_stable_names_not_module_paths(tmp_path):
    cfg = compose_train([*TINY, "alpha=0.1"], tmp_path)
    ident = identity.training_identity(cfg)
    assert ident["scheme"] == store.IDENTITY_SCHEME
    assert ident["model"]["_target_"] == "small_cnn" and ident["attack"]["_target_"] == "pgd"
    assert ident["module"]["_target_"] == "adversarial_training"
    assert ident["module"]["optimizer"]["_target_"] == "torch.optim.SGD"  # another package's path is its API
    assert "robust_ensembles." not in json.dumps(ident)


def test_every_target_of_the_configs_has_a_stable_name():
    for path in sorted((PROJECT_ROOT / "conf").rglob("*.yaml")):
        for target in re.findall(r"_target_:\s*([\w.]+)", path.read_text()):
            if target.startswith("robust_ensembles.") and not target.startswith("robust_ensembles.core.cli."):
                assert "." not in registry.name_of(target), f"{path}: {target}"


def _move_small_cnn(monkeypatch) -> str:
    """Move small_cnn from robust_ensembles.models.architectures to robust_ensembles.relocated (its old path gone, its
    decorator with it), as a reorganisation of the package would; returns its new path."""
    original = architectures.small_cnn
    module = types.ModuleType("robust_ensembles.relocated")
    moved = types.FunctionType(original.__code__, original.__globals__, "small_cnn", original.__defaults__)
    moved.__module__, moved.__qualname__, moved.__kwdefaults__ = module.__name__, "small_cnn", original.__kwdefaults__
    monkeypatch.delitem(registry._BY_NAME, "small_cnn")
    module.small_cnn = registry.stable_name("small_cnn")(moved)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delattr(architectures, "small_cnn")
    return f"{module.__name__}.small_cnn"


def test_a_class_moved_to_another_module_keeps_every_key(tmp_path, monkeypatch, caplog):
    over = [*TINY, "trainer.limit_train_batches=1", "alpha=0.1"]
    keys = []
    for seed in (0, 1):
        cfg = compose_train([*over, f"seed={seed}"], tmp_path)
        train(cfg)
        keys.append(identity.training_run(cfg).key)
    first = evaluate(compose_train([*over, *EVAL, "K=2"], tmp_path, "evaluate"))
    new_path = _move_small_cnn(monkeypatch)
    with pytest.raises(AttributeError):
        architectures.small_cnn  # noqa: B018  (the old path is gone)
    moved = [f"model._target_={new_path}"]
    for seed, key in zip((0, 1), keys):  # the config names the new path: every key is the same
        run = identity.training_run(compose_train([*over, *moved, f"seed={seed}"], tmp_path))
        assert run.key == key and run.complete
    with caplog.at_level(logging.INFO):
        train(compose_train([*over, *moved, "seed=0"], tmp_path))
    assert "[store] skip" in caplog.text  # found, not retrained
    again = evaluate(compose_train([*over, *moved, *EVAL, "K=2"], tmp_path, "evaluate"))
    assert again["key"] == first["key"] and again["wall_s"] == first["wall_s"]  # the record is found, not recomputed
    # and the stored models are built where the code lives now (their config.yaml names the old path)
    from robust_ensembles.models.members import load_model
    assert type(load_model(store.Run.at(tmp_path / "store" / keys[0]))).__name__ == "Classifier"


def _scheme1_key(ident: dict) -> str:
    """How keys were made before stable names (identity scheme 1): the hash of the identity with paths."""
    blob = json.dumps(store.canonical(ident), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_scheme1(root: Path) -> dict[str, str]:
    """Rewrite a store as the code before stable names wrote it: targets by the import path of their day
    (the training module still under its former path), keys hashed from those, markers without digests,
    records without digests and with those keys. Returns new key -> scheme-1 key."""
    def old_paths(value):
        value = registry.buildable(value)
        return json.loads(json.dumps(value).replace("robust_ensembles.training.adversarial.AdversarialTraining",
                                                    "robust_ensembles.training.AdversarialTraining"))
    keys = {}
    paths = sorted(store.entries(root), key=lambda p: "backbones" in json.loads((p / "identity.json").read_text()))
    for path in paths:  # composites last: they name their backbones by the keys of their day
        ident = {k: v for k, v in json.loads((path / "identity.json").read_text()).items() if k != "scheme"}
        ident = old_paths(ident)
        if "backbones" in ident:
            ident["backbones"] = {role: keys[key] for role, key in ident["backbones"].items()}
        old = _scheme1_key(ident)
        keys[path.name] = old
        (path / "identity.json").write_text(json.dumps(ident))
        (path / store.MARKER).write_text(json.dumps({"key": old}))
        path.rename(root / old)
    for path in sorted((root / "records").glob("*/*.json")):
        text = path.read_text()
        for new, old in keys.items():
            text = text.replace(new, old)
        rec = json.loads(text)
        rec.pop("sha256")
        rec["spec"] = old_paths(rec["spec"])
        rec["key"] = _scheme1_key(rec["spec"])
        path.unlink()
        (path.parent / f"{rec['key']}.json").write_text(json.dumps(rec))
    (root / store.STORE_FILE).unlink()
    return keys


def test_an_old_scheme_store_is_refused_then_migrated_without_retraining_and_found(tmp_path):
    over = [*TINY, "trainer.limit_train_batches=1", "alpha=0.1"]
    for seed in (0, 1):
        train(compose_train([*over, f"seed={seed}"], tmp_path))
    ev = compose_train([*over, *EVAL, "K=2"], tmp_path, "evaluate")
    first = evaluate(ev)
    root = tmp_path / "store"
    weights = {p.name: (p / "model.pt").read_bytes() for p in store.entries(root)}
    keys = _as_scheme1(root)
    assert set(keys) == set(weights) and not set(keys) & set(keys.values())
    store._CURRENT_ROOTS.clear()
    with pytest.raises(StoreSchemeError, match=r"identity scheme 1 \(2 entries\).*store migrate --apply"):
        evaluate(ev)
    dry = admin.migrate(root, apply=False)
    assert dry.models == {old: new for new, old in keys.items()} and len(dry.records) == 1
    assert sorted(p.name for p in store.entries(root)) == sorted(keys.values())  # a dry run moves nothing
    out = run_module(["robust_ensembles.store", "migrate", "--apply", *_paths(tmp_path)])
    assert out.returncode == 0, out.stderr
    assert "moved 2 models, 0 composites and 1 records to identity scheme 2" in out.stdout
    assert sorted(p.name for p in store.entries(root)) == sorted(weights)  # every model back under the key it has now
    assert all((root / k / "model.pt").read_bytes() == w for k, w in weights.items())
    assert admin.verify(root).sound
    store._CURRENT_ROOTS.clear()
    again = evaluate(ev)
    assert again["key"] == first["key"] and again["wall_s"] == first["wall_s"]  # the record is found, not recomputed
    assert admin.migrate(root, apply=True).moved == 0  # nothing left to move


def test_a_killed_migration_of_a_store_with_a_composite_is_finished_by_running_it_again(tmp_path, monkeypatch):
    from robust_ensembles.finetune import finetune

    base = [*TINY, "trainer.limit_train_batches=1"]
    for alpha in (0.4, 0.05):
        train(compose_train([*base, f"alpha={alpha}", "seed=0"], tmp_path))
    finetune(compose_train([*base, "seed=0", "composite.max_epochs=1"], tmp_path, config_name="finetune"))
    ev = compose_train([*base, *EVAL, "members=composite", "composite.max_epochs=1"], tmp_path, "evaluate")
    first = evaluate(ev)
    root = tmp_path / "store"
    keys = sorted(p.name for p in store.entries(root))
    _as_scheme1(root)
    composite_old = next(p for p in store.entries(root) if "backbones" in json.loads((p / "identity.json").read_text()))
    assert set(json.loads((composite_old / "identity.json").read_text())["backbones"].values()).isdisjoint(keys)
    # killed after the first entry moved: its identity rewritten, nothing else
    real, calls = admin.os.rename, []
    def rename_once(src, dst):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(src)
        real(src, dst)
    monkeypatch.setattr(admin.os, "rename", rename_once)
    with pytest.raises(KeyboardInterrupt):
        admin.migrate(root, apply=True)
    monkeypatch.setattr(admin.os, "rename", real)
    assert (root / admin.MIGRATIONS).is_file()  # the whole plan was written before anything moved
    done = admin.migrate(root, apply=True)
    assert sorted(p.name for p in store.entries(root)) == keys  # every model and the composite at its key
    assert len(done.composites) == 1 and admin.verify(root).sound
    store._CURRENT_ROOTS.clear()
    again = evaluate(ev)  # the composite's backbones found through their new keys, the record through its new key
    assert again["key"] == first["key"] and again["wall_s"] == first["wall_s"]


# ----------------------------------------------------------------------------- jobs that wait
HOLDER = """
import sys, time
from pathlib import Path
from robust_ensembles.store.locks import EntryLock
with EntryLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_job_waits_for_the_holder_then_goes_on(tmp_path, caplog):
    entry = tmp_path / "entry"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(entry), "2"], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with caplog.at_level(logging.INFO), store.locks.EntryLock(entry, timeout_s=60, poll_s=0.1, what="the entry") as lock:
        waited = time.monotonic() - start
    holder.wait()
    assert 0.5 < waited < 30 and lock.waited_s > 0.5
    assert f"waiting for the entry: another job holds it, pid {holder.pid}" in caplog.text
    assert "released after" in caplog.text


def test_a_lock_whose_process_is_dead_is_broken_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / ".lock").write_text(json.dumps({**store.locks.me(), "pid": dead.pid}))  # a holder killed with -9
    assert store.locks.holder_of(entry) is None  # its flock died with it
    with caplog.at_level(logging.WARNING), store.locks.EntryLock(entry, timeout_s=0):
        assert json.loads((entry / ".lock").read_text())["pid"] == os.getpid()
    assert f"broke the lock of {entry}: left by pid {dead.pid}" in caplog.text
    assert (entry / ".lock").read_text() == ""


def test_an_empty_lock_file_left_by_a_released_holder_is_no_obstacle(tmp_path, caplog):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / ".lock").write_text("")  # what every release leaves (and what the store wrote before holders named themselves)
    with caplog.at_level(logging.WARNING), store.locks.EntryLock(entry, timeout_s=0):
        assert store.locks.holder_of(entry)["pid"] == os.getpid()
    assert "broke" not in caplog.text and store.locks.holder_of(entry) is None
    with pytest.raises(ConfigError, match=r"store.lock.timeout_s=-1 must be a number of seconds >= 0"):
        store.locks.EntryLock(entry, timeout_s=-1)


def test_two_jobs_training_one_entry_both_succeed_and_it_is_trained_once(tmp_path, caplog):
    over = [*TINY, "alpha=0.1", "trainer.max_epochs=20", "trainer.limit_train_batches=4", "store.lock.poll_s=0.2"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true"}
    first = subprocess.Popen([sys.executable, "-m", "robust_ensembles.train", *over, *_paths(tmp_path)], cwd=PROJECT_ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "store").glob("*/.lock")):
        time.sleep(0.02)
    with caplog.at_level(logging.INFO):
        metrics = train(compose_train(over, tmp_path))  # the second job, started while the first trains
    first_out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, first_out[-3000:]
    assert "waiting for alpha=0.1 seed=0" in caplog.text and "completed by another job" in caplog.text
    assert "[store] train" in first_out and "[store] train" not in caplog.text  # trained once
    [entry] = store.entries(tmp_path / "store")
    assert metrics == json.loads((entry / "metrics.json").read_text()) and store.locks.holder_of(entry) is None


# ----------------------------------------------------------------------------- the store command
def test_store_ls_gc_and_errors_on_a_miniature_store(tmp_path):
    over = [*TINY, "trainer.limit_train_batches=1"]
    for alpha in (0, 0.1):
        train(compose_train([*over, f"alpha={alpha}"], tmp_path))
    evaluate(compose_train([*over, *EVAL, "alpha=0.1"], tmp_path, "evaluate"))
    root = tmp_path / "store"
    # an incomplete entry whose job died, a stale record, a damaged record
    dead = root / "0123456789abcdef"
    dead.mkdir()
    (dead / "identity.json").write_text(json.dumps({"alpha": 0.3, "seed": 0, "scheme": store.IDENTITY_SCHEME}))
    [curve] = (root / "records" / "curve").glob("*.json")
    stale = json.loads(curve.read_text())
    stale["version"] = VERSIONS["curve"] - 1
    stale["key"] = "fedcba9876543210"
    stale["sha256"] = store.sha256_json({k: v for k, v in stale.items() if k != "sha256"})
    (curve.parent / "fedcba9876543210.json").write_text(json.dumps(stale))
    (curve.parent / "0000000000000000.json").write_text(curve.read_text()[:100])

    ls = run_module(["robust_ensembles.store", "ls", *_paths(tmp_path)])
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.splitlines()
    assert "models: 2 complete" in ls.stdout
    assert any(" small_cnn " in line and " 0.1 " in line and "0.25: " in line for line in lines)
    assert len([line for line in lines if " small_cnn " in line]) == 2
    assert f"curve       1 at version {VERSIONS['curve'] - 1} (stale: gc removes them); 1 at version {VERSIONS['curve']} (current); 1 damaged" in ls.stdout
    assert "incomplete entries: 1" in ls.stdout and "0123456789abcdef" in ls.stdout and "no job holds it" in ls.stdout

    dry = run_module(["robust_ensembles.store", "gc", *_paths(tmp_path)])
    assert dry.returncode == 0 and "3 items to remove (dry run: add --apply)" in dry.stdout
    assert dead.exists()
    done = run_module(["robust_ensembles.store", "gc", "--apply", *_paths(tmp_path)])
    assert done.returncode == 0 and "removed 3 items" in done.stdout
    assert dead not in store.entries(root) and [p.name for p in dead.iterdir()] == [".lock"]  # only its (free) lock left
    assert [p.name for p in (root / "records" / "curve").glob("*.json")] == [curve.name]
    assert admin.verify(root).sound

    for args, says in [(["robust_ensembles.store", "fsck"], "invalid choice: 'fsck'"),
                       (["robust_ensembles.store", "ls", f"paths.store_dir={tmp_path}/nowhere"], "is not a folder"),
                       (["robust_ensembles.store", "ls", "paths.stroe_dir=x"], "paths.stroe_dir")]:
        out = run_module(args)
        assert out.returncode == EXIT_USER_ERROR and "Traceback" not in out.stderr
        [line] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert says in line
    helped = run_module(["robust_ensembles.store", "--help"])
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("ls", "verify", "gc", "migrate", "--apply"))


# every `_target_` path the configs named before the package moved into subpackages: stored config.yaml files and
# scheme-1 identities carry these, and each must still build the same target
PATHS_BEFORE_THE_ROOMS = {
    "robust_ensembles.attacks.PGD": "pgd", "robust_ensembles.attacks.APGD": "apgd",
    "robust_ensembles.attacks.AutoAttack": "autoattack", "robust_ensembles.models.small_cnn": "small_cnn",
    "robust_ensembles.models.resnet18": "resnet18", "robust_ensembles.composites.CompositeTraining": "composite_training",
    "robust_ensembles.adversarial_training.AdversarialTraining": "adversarial_training",
    "robust_ensembles.callbacks.EarlyStoppingAfter": "early_stopping_after",
    "robust_ensembles.schedules.warmup_cosine_floor": "warmup_cosine_floor",
    "robust_ensembles.tracking.WandbLogger": "wandb_logger",
}


@pytest.mark.parametrize("old_path, name", sorted(PATHS_BEFORE_THE_ROOMS.items()))
def test_paths_from_before_the_subpackages_still_build_their_target(old_path, name):
    assert registry.former_name(old_path) == name
    new_path = registry.current(old_path)
    assert new_path != old_path and registry.name_of(new_path) == name
