"""`bench.mode=store_digest` (`make bench-store`): loading a model with the store's digest check against torch.load alone."""

from __future__ import annotations

import statistics

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import store
from robust_ensembles.bench.harness import Report, interleaved, ratio_stats


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """The digest check on every model load (`bench.mode=store_digest`, `make bench-store`): for each model
    of `bench.store_digest.models`, a store entry in a temporary folder, then `Run.weights()` (sha256 of the
    file against the manifest, then torch.load) against torch.load alone, alternating."""
    import tempfile

    b = cfg.bench.store_digest
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_cfg in b.models.items():
            model = instantiate(model_cfg, num_classes=cfg.data.num_classes, normalization=cfg.data.normalization)
            state = model.state_dict()
            run = store.open_run(tmp, {"bench": name, "scheme": store.IDENTITY_SCHEME})
            run.begin(OmegaConf.create({"model": OmegaConf.to_container(model_cfg)}))
            run.finish(state, state, {})
            path, mb = run.path / "model.pt", (run.path / "model.pt").stat().st_size / 1e6

            def checked():
                store._VERIFIED.clear()  # every load hashes its file, as a new process does
                run.weights()

            t = interleaved({"checked": checked, "plain": lambda: store.load_weights(path),
                             "sha256": lambda: store.sha256_file(path)}, b.repeats, 1, 1, torch.device("cpu"))
            rep.add(f"{name} ({mb:.1f} MB): load with digest check / torch.load alone", ratio_stats(t["checked"], t["plain"]))
            rep.add(f"{name} ({mb:.1f} MB): sha256 of the weights file, ms", tuple(1e3 * v for v in
                                                                                   (statistics.median(t["sha256"]), min(t["sha256"]), max(t["sha256"]))))
            rep.note(f"{name}: torch.load {1e3 * statistics.median(t['plain']):.1f} ms, with the check "
                     f"{1e3 * statistics.median(t['checked']):.1f} ms; sha256 at "
                     f"{mb / statistics.median(t['sha256']):.0f} MB/s")
    return rep


def describe(cfg: DictConfig) -> str:
    return f"{cfg.bench.store_digest.repeats} loads each, alternating; the file in the page cache"
