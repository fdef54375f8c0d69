"""Fine-tune a composite: two frozen backbones from the store, a new linear head trained with PGD.

    python -m robust_ensembles.finetune experiment=cpu composite=paper seed=0
    python -m robust_ensembles.finetune -m experiment=cpu composite.eps=0.3,0.4 'seed=range(2)'

The backbones are looked up by their training identity (the same experiment, at
composite.robust.alpha / composite.natural.alpha and their seeds); a missing one is an error
that names the train command. The composite gets its own store entry (identity: the composite
config, the head's attack, data, and the backbones' store keys); it skips and resumes as training does.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles.composites import Composite, composite_run
from robust_ensembles.fitting import fit_into_store
from robust_ensembles.train import check


def finetune(cfg: DictConfig) -> dict:
    check(cfg)
    comp = cfg.composite
    attack, eval_attack = instantiate(cfg.attack, eps=comp.eps), instantiate(cfg.eval_attack, eps=comp.eps)
    run, robust, natural = composite_run(cfg, comp)

    def build():
        model = Composite(robust.load_model(), natural.load_model(), head_init=comp.head_init)
        return instantiate(cfg.composite_module, model=model, attack=attack, eval_attack=eval_attack,
                           optimizer=instantiate(comp.optimizer), scheduler=instantiate(comp.scheduler))

    tag = (f"composite robust=({comp.robust.alpha}, seed {comp.robust.seed}) natural=({comp.natural.alpha}, "
           f"seed {comp.natural.seed}) eps={comp.eps} seed={cfg.seed}")
    return fit_into_store(cfg, run, tag, build, max_epochs=comp.max_epochs)


@hydra.main(version_base="1.3", config_path="../conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    finetune(cfg)


if __name__ == "__main__":
    main()
