"""Fill the paper's tables: train what the store lacks, evaluate every row, write reports/<scale>/.

    python -m robust_ensembles.tables table=table1 scale=cpu
    python -m robust_ensembles.tables table=all scale=cpu estimate=true      # what is missing, and its cost
    python -m robust_ensembles.tables table=all scale=paper autoattack_column=stored hydra/launcher=slurm
    python -m robust_ensembles.tables table=all scale=paper evaluate_in=jobs hydra/launcher=gpus   # records as jobs
    python -m robust_ensembles.tables table=table1 scale=tiny --cfg job      # the composed config

Every other override reaches each call it applies to: all of them every row's evaluation (e.g.
`evaluation.batch_size=100`), those the training config knows every train and finetune job too
(e.g. `paths.store_dir=...`); `hydra/launcher=...` and `hydra.launcher.*` reach the training multiruns. The tables are declared in sweeps/<table>.yaml with a module each
(`robust_ensembles.tables`); `make table1 SCALE=cpu` etc. call this command.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from robust_ensembles.core import cli
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.tables import driver

OWN_KEYS = ("table", "scale", "autoattack_column", "estimate", "sweeps_dir", "evaluate_in", "train")  # this command's; not passed on


def tables(cfg: DictConfig) -> list[dict]:
    if OmegaConf.is_missing(cfg, "table"):
        raise ConfigError(f"table is not set; name one: table=<one of {driver.tables_in(cfg.sweeps_dir)}> or table=all.")
    for key in ("estimate", "train"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false.")
    overrides = HydraConfig.get().overrides
    jobs = [o for o in overrides.task if cli.override_key(o) not in OWN_KEYS]
    launcher = cli.launcher_overrides(overrides.hydra)
    return driver.run(str(cfg.table), str(cfg.scale), jobs, str(cfg.autoattack_column), cfg.estimate,
                      cfg.sweeps_dir, launcher, str(cfg.evaluate_in), cfg.train)


main = cli.main("tables")(tables)

if __name__ == "__main__":
    main()
