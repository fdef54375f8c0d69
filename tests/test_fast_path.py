"""The GPU fast path is chosen by device: on with CUDA, off (and working) on the CPU."""

from __future__ import annotations

import pytest
import torch

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.training.adversarial import AdversarialTraining
from robust_ensembles.training.compilation import EagerFallback, compile_mode, compiled
from tests.conftest import compose_train
from tests.test_data import module


def fast_path(cfg) -> tuple:
    return (cfg.trainer.precision, cfg.module.channels_last, cfg.data.device_resident, cfg.data.eval_batch_size)


def test_defaults_follow_the_device(tmp_path, monkeypatch):
    cfg = compose_train([], tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fast_path(cfg) == ("32-true", False, False, 500)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fast_path(cfg) == ("bf16-mixed", True, True, 2000)


def test_device_resident_data_falls_back_to_host_memory_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = module(device_resident=True)
    dm.setup("fit")
    assert dm.splits["train"].x.device.type == "cpu"
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.device.type == "cpu"


def test_compile_falls_back_to_eager_where_torch_compile_refuses(monkeypatch):
    def broken(model, mode=None):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    net = torch.nn.Linear(2, 2)
    assert compiled(net, True) is net and compiled(net, "max-autotune") is net


def test_compile_falls_back_to_eager_when_the_first_call_fails(monkeypatch, caplog):
    """torch compiles lazily: a missing compiler shows at the first call; that call and the next run eagerly."""
    calls = []

    class InductorError(Exception):  # as torch's compiler stack raises it
        pass
    InductorError.__module__ = "torch._inductor.exc"

    def lazy_failure(model, mode=None):
        def run(*args):
            calls.append(mode)
            raise InductorError("CppCompileError: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", lazy_failure)
    net = torch.nn.Linear(2, 2)
    wrapped = compiled(net, "reduce-overhead")
    x = torch.randn(3, 2)
    assert torch.equal(wrapped(x), net(x)) and torch.equal(wrapped(x), net(x))
    assert calls == ["reduce-overhead"] and wrapped.fell_back  # tried once, then eager for good
    assert "failed at call 1" in caplog.text and "running eagerly" in caplog.text


def test_compile_does_not_hide_errors_that_are_not_the_compilers(monkeypatch):
    def model_error(model, mode=None):
        def run(*args):
            raise ValueError("expected 4-d input")   # eager would fail the same way: raise it, do not fall back
        return run

    monkeypatch.setattr(torch, "compile", model_error)
    wrapped = compiled(torch.nn.Linear(2, 2), True)
    with pytest.raises(ValueError, match="expected 4-d input"):
        wrapped(torch.randn(3, 2))
    assert not wrapped.fell_back


def test_compile_setting_is_a_mode_or_one_clear_error():
    assert [compile_mode(c) for c in (False, None, True, "max-autotune")] == [None, None, "default", "max-autotune"]
    assert compiled(torch.nn.Linear(2, 2), False).__class__ is torch.nn.Linear
    with pytest.raises(ConfigError, match="module.compile='fast' must be false, true or a torch.compile mode"):
        compile_mode("fast")


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_model_wraps_the_model_and_is_not_saved_twice(tmp_path, mode):
    cfg = compose_train(["model=cnn", "model.width=4"], tmp_path)
    from hydra.utils import instantiate
    model = instantiate(cfg.model)
    m = AdversarialTraining(model=model, attack=instantiate(cfg.attack), eval_attack=instantiate(cfg.eval_attack),
                            optimizer=None, scheduler=None, test_eps=[0.25], train_nat_metrics=False,
                            channels_last=True, compile=mode)
    assert isinstance(m.forward_model, EagerFallback) and m.forward_model.model is m.model
    assert isinstance(m.forward_model.compiled, torch._dynamo.eval_frame.OptimizedModule)
    keys = list(m.state_dict())
    assert not any("_orig_mod" in k or k.startswith("forward_model") for k in keys)  # the compiled wrapper is not saved
    assert sorted(k for k in keys if k.startswith("model.")) == sorted(f"model.{k}" for k in model.state_dict())


@pytest.mark.slow
def test_training_under_each_cpu_compile_mode_gives_a_complete_store_entry(tiny_cfg):
    """module.compile composes with training and falls back cleanly on the CPU (no CUDA graphs there)."""
    from robust_ensembles import store
    from robust_ensembles.models.members import load_model
    from robust_ensembles.train import train
    from tests.conftest import clean_test_accuracy
    for i, mode in enumerate(["true", "reduce-overhead"]):
        cfg = tiny_cfg("alpha=0.1", f"seed={i}", f"module.compile={mode}")
        metrics = train(cfg)
        [entry] = [r for r in store.query(cfg.store.root, {"seed": i})]
        # the compiled forward computed what the stored (eager) model computes
        assert metrics["test/nat_acc"] == pytest.approx(clean_test_accuracy(load_model(entry), cfg), abs=1e-6)
