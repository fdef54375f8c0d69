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
import torch
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
    """The PGD curve of the configured model (reused from the store when it exists), with its
    AutoAttack column when `evaluation.autoattack.eps` is set (a separate store record)."""
    check(cfg)
    attack = instantiate(cfg.evaluation.attack)
    model, runs, label = build_members(cfg)
    result = pgd_curve(cfg, model, runs, label, attack)
    if cfg.evaluation.autoattack.eps is not None:
        result["autoattack"] = autoattack_column(cfg, model, runs, label, attack)
    return result


def test_points(cfg: DictConfig) -> dict:
    return {"split": cfg.evaluation.split, **{k: cfg.data[k] for k in ("source", "test_subset", "split_seed", "val_size")}}


def pgd_curve(cfg: DictConfig, model: ensembles.Ensemble, runs: list[store.Run], label: str, attack) -> dict:
    spec = {"members": [r.key for r in runs], "weights": model.weights.tolist(),
            "ensemble": OmegaConf.to_container(cfg.ensemble, resolve=True),
            "evaluation": {k: v for k, v in OmegaConf.to_container(cfg.evaluation, resolve=True).items()
                           if k not in ("autoattack", "force")},
            "check": cfg.check, "checks": OmegaConf.to_container(cfg.checks, resolve=True) if cfg.check else None,
            "seed": cfg.seed, "test": test_points(cfg)}
    path = Path(cfg.store.root).expanduser() / "evaluations" / f"{store.key_of(spec)}.json"
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
        if cfg.check:
            x, y = first_points(datamodule, cfg.evaluation.split, min(cfg.checks.n, curve.n), module.device)
            model = model.to(module.device)
            found = checks.run_checks(model, curve, attack, instantiate(cfg.checks.autoattack),
                                      instantiate(cfg.checks.square), x, y, cfg.checks.eps, cfg.checks.large_eps,
                                      cfg.checks.large_eps_max_acc, cfg.checks.max_gap, cfg.evaluation.batch_size)
            result["checks"] = checks.as_dicts(found)
            result["checks_passed"] = checks.passed(found)
        result["wall_s"] = time.perf_counter() - start
        save_result(result, path)
        png = path.with_suffix(".png")
        plot_curves({label: curve}, png, f"{label} ({cfg.name}, n={curve.n}, PGD({attack.settings()}))")
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


def first_points(datamodule, split: str, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a split (the same points the PGD curve starts with), as floats in [0, 1]."""
    datamodule.setup("test")
    x, y = datamodule.splits[split][list(range(min(n, len(datamodule.splits[split]))))]
    return x.to(device).float() / 255, y.to(device)


def autoattack_column(cfg: DictConfig, model: ensembles.Ensemble, runs: list[store.Run], label: str,
                      attack) -> dict | None:
    """Standard AutoAttack and the evaluation PGD on the same first n points at one eps: one store
    record per (model, points, eps, attacks), so tables that share a row attack it once. With
    `evaluation.autoattack.compute=false` only a stored record is used (None when there is none):
    the column can be computed elsewhere, e.g. on a GPU node sharing the store."""
    aa_cfg = cfg.evaluation.autoattack
    autoattack = instantiate(cfg.checks.autoattack)
    spec = {"members": [r.key for r in runs], "weights": model.weights.tolist(), "combine": cfg.ensemble.combine,
            "eps": float(aa_cfg.eps), "n": int(aa_cfg.n), "test": test_points(cfg),
            "autoattack": {"norm": autoattack.norm, "version": autoattack.version, "attacks": autoattack.attacks,
                           "seed": autoattack.seed},
            "pgd": {k: v for k, v in OmegaConf.to_container(cfg.evaluation.attack, resolve=True).items() if k != "key"}}
    path = Path(cfg.store.root).expanduser() / "autoattack" / f"{store.key_of(spec)}.json"
    if path.is_file() and not cfg.evaluation.force:
        log.info("[store] skip AutoAttack %s at eps=%g: %s", label, aa_cfg.eps, path)
        return load_result(path)
    if not aa_cfg.compute:
        log.info("[store] AutoAttack %s at eps=%g not in the store (%s); evaluation.autoattack.compute=false, "
                 "so it stays pending", label, aa_cfg.eps, path)
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, eval_batch_size=cfg.evaluation.batch_size, test_split=cfg.evaluation.split,
                             device_resident=False)
    x, y = first_points(datamodule, cfg.evaluation.split, aa_cfg.n, device)
    if len(y) < aa_cfg.n:
        raise ConfigError(f"evaluation.autoattack.n={aa_cfg.n} but the {cfg.evaluation.split} split has only "
                          f"{len(y)} points; lower evaluation.autoattack.n or raise data.test_subset.")
    log.info("AutoAttack (%s) on %s: %d points at eps=%g on %s", autoattack.version, label, len(y), aa_cfg.eps, device)
    start = time.perf_counter()
    record = checks.autoattack_vs_pgd(model.to(device).eval(), attack, autoattack, x, y, float(aa_cfg.eps),
                                      cfg.evaluation.batch_size)
    record.update(label=label, spec=spec, wall_s=time.perf_counter() - start, git_commit=store.git_commit(),
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, threads=torch.get_num_threads())
    save_result(record, path)
    log.info("[store] AutoAttack %s: %.2f%% (PGD on the same points %.2f%%) in %.0f s -> %s", label,
             100 * record["autoattack_acc"], 100 * record["pgd_acc"], record["wall_s"], path)
    return record


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
