"""Fine-tune a composite: two frozen backbones from the store, a new linear head trained with PGD.

    python -m robust_ensembles.finetune experiment=cpu composite=paper seed=0
    python -m robust_ensembles.finetune -m experiment=cpu composite.eps=0.3,0.4 'seed=range(2)'

The backbones are looked up by their training identity (the same experiment, at
composite.robust.alpha / composite.natural.alpha and their seeds); a missing one is an error
that names the train command. The composite gets its own store entry (identity: the composite
config, the head's attack, data, and the backbones' store keys); it skips and resumes as training
does. The head trains at composite.eps (`identity.composite_config` sets alpha from it).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles.core import cli
from robust_ensembles.models.composites import Composite
from robust_ensembles.models.members import load_model
from robust_ensembles.store.identity import check, composite_config, composite_run
from robust_ensembles.training.resumable_fit import fit_into_store, fit_job


def finetune(cfg: DictConfig) -> dict:
    comp = cfg.composite
    cfg = composite_config(cfg, comp)
    check(cfg)
    run, robust, natural = composite_run(cfg, comp)
    attack, eval_attack = instantiate(cfg.attack), instantiate(cfg.eval_attack)

    def build():
        model = Composite(load_model(robust), load_model(natural), head_init=comp.head_init)
        return instantiate(cfg.composite_module, model=model, attack=attack, eval_attack=eval_attack,
                           optimizer=instantiate(comp.optimizer), scheduler=instantiate(comp.scheduler))

    tag = (f"composite robust=({comp.robust.alpha}, seed {comp.robust.seed}) natural=({comp.natural.alpha}, "
           f"seed {comp.natural.seed}) eps={comp.eps} seed={cfg.seed}")
    return fit_into_store(fit_job(cfg, run, tag, build, max_epochs=comp.max_epochs))


main = cli.main("finetune")(finetune)

if __name__ == "__main__":
    main()
