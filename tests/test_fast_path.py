"""The GPU fast path is chosen by device: on with CUDA, off (and working) on the CPU."""

from __future__ import annotations

import torch

from robust_ensembles.adversarial_training import AdversarialTraining, compiled
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


def test_compile_falls_back_to_eager(monkeypatch):
    def broken(model):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    net = torch.nn.Linear(2, 2)
    assert compiled(net) is net


def test_compiled_model_is_not_saved_twice(tmp_path):
    cfg = compose_train(["model=cnn", "model.width=4"], tmp_path)
    from hydra.utils import instantiate
    model = instantiate(cfg.model)
    m = AdversarialTraining(model=model, attack=instantiate(cfg.attack), eval_attack=instantiate(cfg.eval_attack),
                            optimizer=None, scheduler=None, test_eps=[0.25], train_nat_metrics=False,
                            channels_last=True, compile=True)
    assert m.forward_model is not m.model and isinstance(m.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    keys = list(m.state_dict())
    assert not any("_orig_mod" in k or k.startswith("forward_model") for k in keys)  # the compiled wrapper is not saved
    assert sorted(k for k in keys if k.startswith("model.")) == sorted(f"model.{k}" for k in model.state_dict())
