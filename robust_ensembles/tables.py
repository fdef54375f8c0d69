"""Fill the paper's tables: train what the store lacks, evaluate every row, write reports/<scale>/.

    python -m robust_ensembles.tables table=table1 scale=cpu
    python -m robust_ensembles.tables table=all scale=cpu estimate=true      # what is missing, and its cost
    python -m robust_ensembles.tables table=all scale=paper autoattack=stored hydra/launcher=slurm
    python -m robust_ensembles.tables table=table1 scale=tiny --cfg job      # the composed config

Every other override (e.g. `paths.store_dir=...`, `evaluation.batch_size=100`) reaches each train,
finetune and evaluate call of the table; `hydra/launcher=...` and `hydra.launcher.*` reach the
training multiruns. The tables are declared in sweeps/<table>.yaml with a module each
(`robust_ensembles.paper_tables`); `make table1 SCALE=cpu` etc. call this command.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from robust_ensembles import cli
from robust_ensembles.paper_tables import driver

OWN_KEYS = ("table", "scale", "autoattack", "estimate", "sweeps_dir")  # this command's; not passed on to jobs
LAUNCHER = ("hydra/launcher", "hydra.launcher")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def tables(cfg: DictConfig) -> list[dict]:
    overrides = HydraConfig.get().overrides
    jobs = [o for o in overrides.task if _key(o) not in OWN_KEYS]
    launcher = [o for o in overrides.hydra if _key(o).startswith(LAUNCHER)]
    return driver.run(str(cfg.table), str(cfg.scale), jobs, str(cfg.autoattack), bool(cfg.estimate),
                      cfg.sweeps_dir, launcher)


main = cli.main("tables")(tables)

if __name__ == "__main__":
    main()
