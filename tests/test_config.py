"""Every config group option and every experiment preset composes and instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from robust_ensembles import CONFIG_DIR
from robust_ensembles.attacks.autoattack import APGD
from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.models.architectures import Classifier
from tests.conftest import compose_train

GROUPS = ["data", "model", "attack", "optimizer", "scheduler", "trainer", "logger", "checkpoint", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option, tmp_path):
    override = {"optimizer": f"optimizer@module.optimizer={option}",
                "scheduler": f"scheduler@module.scheduler={option}"}.get(group, f"{group}={option}")
    cfg = compose_train([override], tmp_path)
    resolved = OmegaConf.to_container(cfg.model, resolve=True)  # interpolations resolve
    assert resolved["num_classes"] == cfg.data.num_classes
    assert isinstance(instantiate(cfg.attack), (PGD, APGD))   # any attack option can be selected for training
    assert isinstance(instantiate(cfg.eval_attack), (PGD, APGD))


@pytest.mark.parametrize("group,option", [(g, o) for g in ["autoattack", "experiment"] for o in options(g)]
                         + [("attack", o) for o in options("attack")])
def test_evaluate_config_composes(group, option, tmp_path):
    override = {"autoattack": f"autoattack@checks.autoattack={option}",
                "attack": f"attack@evaluation.attack={option}"}.get(group, f"{group}={option}")
    cfg = compose_train([override, "K=3"], tmp_path, config_name="evaluate")
    assert cfg.K == 3 and cfg.evaluation.auc_eps in cfg.evaluation.eps_grid
    assert instantiate(cfg.evaluation.attack).steps >= 1
    assert instantiate(cfg.checks.autoattack).version in ("standard", "custom")
    assert instantiate(cfg.checks.square).attacks == ["square"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_build_their_objects(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.name == experiment
    model = instantiate(cfg.model)
    assert isinstance(model, Classifier)
    dm = instantiate(cfg.data)  # constructing validates sizes; no data is read until setup()
    assert dm.batch_size == cfg.data.batch_size == {"tiny": 16, "cpu": 64, "paper_fast": 512}.get(experiment, 128)


def test_paper_recipe(tmp_path):
    cfg = compose_train(["experiment=paper"], tmp_path)
    assert cfg.model._target_.endswith("resnet18") and cfg.data.source == "torchvision" and cfg.data.subset is None
    opt = cfg.module.optimizer
    assert (opt.lr, opt.momentum, opt.weight_decay, cfg.data.batch_size) == (0.1, 0.9, 5e-4, 128)
    assert cfg.trainer.max_epochs == 150 and list(cfg.module.scheduler.milestones) == [50, 100]
    assert cfg.module.scheduler.gamma == 0.1
    attack = instantiate(compose_train(["experiment=paper", "alpha=0.5"], tmp_path).attack)
    assert attack.steps == 7 and attack.eps == 0.5
    assert attack.step_size_for(0.5) == pytest.approx(2.5 * 0.5 / 7)


def test_paper_fast_recipe_keeps_the_papers_model_and_attack_on_a_one_cycle_schedule(tmp_path):
    fast, paper = (compose_train([f"experiment={e}", "alpha=0.5"], tmp_path) for e in ("paper_fast", "paper"))
    assert fast.model == paper.model and fast.attack == paper.attack and fast.eval_attack == paper.eval_attack
    assert fast.module.scheduler._target_.endswith("OneCycleLR") and fast.module.scheduler_interval == "step"
    assert fast.module.scheduler.max_lr == fast.module.optimizer.lr == 0.2 and fast.module.optimizer.nesterov
    assert (fast.trainer.max_epochs, fast.data.batch_size, fast.data.val_size) == (24, 512, 1000)
    assert fast.data.source == "folder"   # the offline archive: the GPU machine reaches no dataset host


def test_readme_and_makefile_train_the_same_paper_alphas():
    import re

    from robust_ensembles import PROJECT_ROOT
    readme = (PROJECT_ROOT / "README.md").read_text()
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    [make_line] = [ln for ln in makefile.splitlines() if "experiment=paper alpha=" in ln]
    alphas = re.search(r"experiment=paper alpha=([\d.,]+)", make_line).group(1)
    assert f"experiment=paper alpha={alphas} 'seed=range(8)'   # = make train-paper" in readme


def test_cpu_preset_uses_the_offline_archive(tmp_path):
    cfg = compose_train(["experiment=cpu"], tmp_path)
    assert cfg.data.source == "folder" and cfg.data.root.endswith("cifar10-jpeg-q75.tar.gz")
    assert cfg.model._target_.endswith("small_cnn") and cfg.data.subset == 14000 and cfg.model.convs == [2, 1, 1]


def test_cpu_preset_gives_the_natural_model_its_own_schedule(tmp_path):
    from robust_ensembles.store import identity_of, key_of
    natural, adversarial = (compose_train(["experiment=cpu", f"alpha={a}"], tmp_path) for a in ("0", "0.5"))
    schedule = lambda c: (c.module.scheduler.anneal_epochs, c.trainer.max_epochs, c.early_stopping.after_epochs)
    assert schedule(natural) == (12, 16, 12) and schedule(adversarial) == (3, 5, 3)
    assert schedule(compose_train(["experiment=cpu", "alpha=0.0"], tmp_path)) == (12, 16, 12)
    # every entry point finds the natural model by the identity it was trained under, spelled out or not
    spelled = compose_train(["experiment=cpu", "alpha=0", "module.scheduler.anneal_epochs=12", "trainer.max_epochs=16"],
                            tmp_path)
    ident = lambda c: key_of(identity_of(c, c.store.identity.include, c.store.identity.exclude))
    assert ident(natural) == ident(spelled) != ident(compose_train(["experiment=cpu", "alpha=0",
                                                                    "module.scheduler.anneal_epochs=3"], tmp_path))


def test_alpha_and_seed_are_top_level_sweep_axes(tmp_path):
    cfg = compose_train(["alpha=0.22", "seed=0"], tmp_path)
    assert cfg.attack.eps == 0.22 and cfg.seed == 0


def test_logger_none_disables_logging(tmp_path):
    assert compose_train(["logger=none"], tmp_path).logger is None
