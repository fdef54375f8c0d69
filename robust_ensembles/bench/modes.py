"""The bench's modes, by name (`bench.mode`): each a module with `run(cfg, device, rep) -> Report` and
`describe(cfg) -> str` (its settings, for the report's first line)."""

from __future__ import annotations

import platform
from types import ModuleType

import torch
from omegaconf import DictConfig

from robust_ensembles.bench import (eval_attacks, gpu_epoch, precision, ratios, search_strategies, step_profile,
                                    store_digest, tables_eval)
from robust_ensembles.bench.harness import Report
from robust_ensembles.core.errors import ConfigError

MODES: dict[str, ModuleType] = {
    "ratios": ratios, "gpu_epoch": gpu_epoch, "profile": step_profile, "eval_attacks": eval_attacks,
    "alpha_search": search_strategies, "precision": precision, "store_digest": store_digest,
    "tables_eval": tables_eval,
}


def header(cfg: DictConfig, device: torch.device, mode: ModuleType) -> str:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return (f"device: {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; mode {cfg.bench.mode}; "
            f"{mode.describe(cfg)}")


def bench(cfg: DictConfig) -> Report:
    """Run the mode `bench.mode` names; prints its report (and writes it to `bench.output`)."""
    mode = MODES.get(str(cfg.bench.mode))
    if mode is None:
        raise ConfigError(f"bench.mode={cfg.bench.mode!r} is unknown; use one of {', '.join(MODES)}.")
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.bench.device != "cpu" else "cpu")
    rep = mode.run(cfg, device, Report(cfg.bench.output, header(cfg, device, mode)))
    rep.finish()
    print(rep.text(), flush=True)
    return rep
