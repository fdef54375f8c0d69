"""Evaluate a single model or a K-ensemble from the store, attacked as one model.

    python -m robust_ensembles.evaluate experiment=cpu alpha=0.25 K=4
    python -m robust_ensembles.evaluate -m experiment=cpu alpha=0.25 K=1,2,4
    python -m robust_ensembles.evaluate experiment=cpu alpha=0.25 K=4 check=true

Members are the complete store entries trained with this config (every identity key but the
seed). Results go to <store>/evaluations/<hash>.json with a PNG of the curve beside it; a result
that exists is reused (evaluation.force=true recomputes it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_ensembles import checks, ensembles, store, tracking
from robust_ensembles.composites import composite_run
from robust_ensembles.errors import ConfigError
from robust_ensembles.evaluation import Curve, EnsembleEvaluation, load_result, plot_curves, save_result
from robust_ensembles.train import check, training_identity

log = logging.getLogger(__name__)


def members_query(cfg: DictConfig) -> dict:
    identity = training_identity(cfg)
    identity.pop("seed", None)
    return identity


def build_members(cfg: DictConfig) -> tuple[ensembles.Ensemble, list[store.Run], str]:
    """The evaluated model (an Ensemble, K=1 included), its store entries, and a label."""
    ens = OmegaConf.to_container(cfg.ensemble, resolve=True)
    if cfg.members.kind == "seeds":
        hint = f"python -m robust_ensembles.train -m experiment={cfg.get('name')} alpha={cfg.alpha}"
        model, runs = ensembles.from_store(cfg.store.root, members_query(cfg), cfg.K, seeds=cfg.seeds,
                                           train_hint=hint, **ens)
        return model, runs, (f"{cfg.K}x alpha={cfg.alpha}" if cfg.K > 1 else f"alpha={cfg.alpha}")
    if cfg.members.kind != "composites":
        raise ConfigError(f"members.kind={cfg.members.kind!r} is unknown; use seeds or composites.")
    runs = []
    for spec in cfg.members.composites:
        comp = OmegaConf.merge(cfg.composite, spec)
        run = composite_run(cfg, comp)[0]
        if not run.complete:
            raise ConfigError(
                f"members: composite robust={comp.robust.alpha} natural={comp.natural.alpha} eps={comp.eps} "
                f"seed={cfg.seed} is not in the store ({run.path}). Fine-tune it first: python -m "
                f"robust_ensembles.finetune experiment={cfg.name} composite.robust.alpha={comp.robust.alpha} "
                f"composite.natural.alpha={comp.natural.alpha} composite.eps={comp.eps} seed={cfg.seed}")
        runs.append(run)
    if ens["weights"] is None and cfg.members.get("weights") is not None:
        ens["weights"] = list(cfg.members.weights)
    model = ensembles.Ensemble([r.load_model() for r in runs], **ens)
    parts = [f"({r.identity['composite']['robust']['alpha']}, {r.identity['composite']['natural']['alpha']})"
             f"@{r.identity['composite']['eps']}" for r in runs]
    weights = "/".join(f"{w:g}" for w in model.weights.tolist())
    label = f"composite {parts[0]}" if len(runs) == 1 else f"{len(runs)}x composite {' + '.join(parts)} w={weights}"
    return model, runs, label


def evaluate(cfg: DictConfig) -> dict:
    check(cfg)
    attack = instantiate(cfg.evaluation.attack)
    root = cfg.store.root
    model, runs, label = build_members(cfg)
    spec = {"members": [r.key for r in runs], "weights": model.weights.tolist(),
            "ensemble": OmegaConf.to_container(cfg.ensemble, resolve=True),
            "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True), "check": cfg.check,
            "checks": OmegaConf.to_container(cfg.checks, resolve=True) if cfg.check else None, "seed": cfg.seed,
            "test": {k: cfg.data[k] for k in ("source", "test_subset", "split_seed", "val_size")}}
    path = Path(root).expanduser() / "evaluations" / f"{store.key_of(spec)}.json"
    if path.is_file() and not cfg.evaluation.force:
        log.info("[store] skip evaluation %s: %s", label, path)
        return load_result(path)
    with open_dict(cfg):
        cfg.paths.run_dir = str(path.with_suffix(""))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, eval_batch_size=cfg.evaluation.batch_size, test_split=cfg.evaluation.split)
    module = EnsembleEvaluation(model, attack, cfg.evaluation.eps_grid, cfg.evaluation.per_eps)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[], enable_checkpointing=False)
    tracking.log_config(logger, cfg)
    try:
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        curve: Curve = module.curve
        result = {
            "label": label, "alpha": cfg.alpha, "K": len(runs), "weights": model.weights.tolist(),
            "members": [{"key": r.key, "seed": r.identity["seed"], "backbones": r.identity.get("backbones")} for r in runs],
            "spec": spec, "attack": repr(attack), "curve": curve.to_dict(), "n": curve.n,
            "auc": {f"{cfg.evaluation.auc_eps:g}": curve.auc(cfg.evaluation.auc_eps)},
            "wall_s": time.perf_counter() - start, "config": OmegaConf.to_container(cfg, resolve=True),
            "git_commit": store.git_commit(), "device": str(module.device),
        }
        aa_cfg = cfg.evaluation.autoattack
        if cfg.check or aa_cfg.eps is not None:
            n = max(cfg.checks.n if cfg.check else 0, aa_cfg.n if aa_cfg.eps is not None else 0)
            x, y = datamodule.splits[cfg.evaluation.split][list(range(min(n, curve.n)))]  # the first n points
            x, y = x.to(module.device).float() / 255, y.to(module.device)
            model = model.to(module.device)
        if aa_cfg.eps is not None:  # the AutoAttack column of a table
            result["autoattack"] = checks.autoattack_vs_pgd(model, attack, instantiate(cfg.checks.autoattack),
                                                            x[:aa_cfg.n], y[:aa_cfg.n], aa_cfg.eps,
                                                            cfg.evaluation.batch_size)
        if cfg.check:
            found = checks.run_checks(model, curve, attack, instantiate(cfg.checks.autoattack),
                                      instantiate(cfg.checks.square), x, y, cfg.checks.eps, cfg.checks.large_eps,
                                      cfg.checks.large_eps_max_acc, cfg.checks.max_gap, cfg.evaluation.batch_size)
            result["checks"] = checks.as_dicts(found)
            result["checks_passed"] = checks.passed(found)
        result["wall_s"] = time.perf_counter() - start
        save_result(result, path)
        png = path.with_suffix(".png")
        plot_curves({label: curve}, png, f"{label} ({cfg.name}, n={curve.n}, {attack})")
        summary = {f"eval/acc@{e:g}": a for e, a in zip(curve.eps, curve.cumulative)}
        summary[f"eval/auc@{cfg.evaluation.auc_eps:g}"] = result["auc"][f"{cfg.evaluation.auc_eps:g}"]
        tracking.log_evaluation(logger, label, curve, summary, png)
    except BaseException:
        tracking.finish(failed=True)
        raise
    tracking.finish(failed=False)
    log.info("[store] evaluated %s -> %s", label, path)
    print(format_curve(result), flush=True)
    return result


def format_curve(result: dict) -> str:
    c = result["curve"]
    rows = [f"{result['label']}  n={c['n']}  AUC({k})={v:.4f}" for k, v in result["auc"].items()]
    rows += [f"  eps={e:<5g} acc={100 * a:6.2f}% +- {100 * s:.2f}" + (f"  (per-eps {100 * p:6.2f}%)" if c["per_eps"] else "")
             for e, a, s, p in zip(c["eps"], c["cumulative"], c["stderr"], c["per_eps"] or c["cumulative"])]
    return "\n".join(rows)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
