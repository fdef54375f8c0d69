"""`bench.mode=eval_attacks` (`make bench-eval-attacks`): candidate evaluation attacks against AutoAttack on stored models, with their cost as a ratio to PGD-20."""

from __future__ import annotations

import statistics
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from robust_ensembles.bench.harness import Report
from robust_ensembles.core.errors import ConfigError


def run(cfg: DictConfig, device: torch.device, rep: Report) -> Report:
    """Candidate evaluation attacks on stored models (`make bench-eval-attacks`; docs/evaluation.md).

    For every row (a model of the tables, named by its overrides, composed as `table` composes its rows at
    `scale`), on the same first n test points: each contender's curve over that scale's radius grid (its
    own search of the grid), timed side by side in one run; each candidate against the reference at every
    radius, point by point; its accuracy at eps against the
    row's AutoAttack record on its first autoattack_n points (the table's AutoAttack column, or standard
    AutoAttack through `overrides`; from the store, or computed first with compute_autoattack=true);
    and its wall time as a ratio to the baseline's (L2 PGD-20, the former evaluation attack)."""
    from robust_ensembles.core.compose import compose_config
    from robust_ensembles.evaluation.curves import attack_grid, check_grid
    from robust_ensembles.evaluation.records import autoattack_record, first_points
    from robust_ensembles.evaluation.request import from_config
    from robust_ensembles.tables.table_run import ROW_CONFIG, TableRun

    e = cfg.bench.eval_attacks
    contenders = {"baseline": list(e.baseline), "reference": list(e.reference),
                  **{k: list(v) for k, v in e.candidates.items()}}
    lines = ["| row | attack | search | acc at eps (AA points) | AutoAttack | attack - AA | flipped by AA only | by the attack only "
             "| largest gap to the reference over the grid | points it flips differently | wall s | / baseline |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ref_gaps: dict[str, list[float]] = {k: [] for k in e.candidates}
    ratios: dict[str, list[float]] = {k: [] for k in e.candidates}
    gaps: dict[str, list[float]] = {k: [] for k in contenders}
    row_base = TableRun(e.table, e.scale, list(e.overrides)).row_base  # the rows as that table evaluates them
    aa_n = e.n if e.autoattack_n is None else e.autoattack_n
    if not 0 < aa_n <= e.n:
        raise ConfigError(f"bench.eval_attacks.autoattack_n={aa_n} must be between 1 and bench.eval_attacks.n={e.n} "
                          f"(AutoAttack's points are the first of the curve's).")
    for row in e.rows:
        common = [*row_base, *row, f"evaluation.autoattack.eps={e.eps}", f"evaluation.autoattack.n={aa_n}",
                  f"evaluation.autoattack.compute={bool(e.compute_autoattack)}"]
        base_cfg = compose_config(ROW_CONFIG, common)
        req = from_config(base_cfg)
        model, label = req.subject.model.to(device).eval(), req.label
        aa = autoattack_record(req) if e.autoattack else None
        a = base_cfg.checks.autoattack
        cfg_aa = f"{a.version}" + (f" {list(a.attacks)}" if a.version == "custom" else "")
        if aa is None and e.autoattack:
            raise ConfigError(f"bench.eval_attacks: no AutoAttack record ({base_cfg.checks.autoattack.version}) for "
                              f"{label} at eps={e.eps} on {aa_n} points in the store; run its table with AUTOATTACK=run, or set "
                              f"bench.eval_attacks.compute_autoattack=true.")
        datamodule = instantiate(base_cfg.data, eval_batch_size=base_cfg.evaluation.batch_size,
                                 test_split=base_cfg.evaluation.split, device_resident=False)
        x, y = first_points(datamodule, base_cfg.evaluation.split, e.n, device)
        grid = check_grid(base_cfg.evaluation.eps_grid)
        evaluations = {k: compose_config(ROW_CONFIG, [*common, *over]).evaluation for k, over in contenders.items()}
        attacks = {k: instantiate(ev.attack) for k, ev in evaluations.items()}
        seconds, accs, all_flips = {}, {}, {}
        bs = base_cfg.evaluation.batch_size
        for name, attack in attacks.items():  # one after another on the same points, in one run
            torch.manual_seed(cfg.seed)
            ev = evaluations[name]
            search, warm, scale, step = ev.search, ev.warm_start, ev.guess_scale, ev.first_order_step
            t0 = time.perf_counter()
            flips = all_flips[name] = torch.cat([attack_grid(model, attack, x[i:i + bs], y[i:i + bs], grid, False,
                                                             search, warm, scale, step).min_flip.cpu()
                                                 for i in range(0, len(y), bs)])
            search += (f" x{scale:g}" if search == "guided" else "") + (" step" if step else "") + (" warm" if warm else "")
            seconds[name] = time.perf_counter() - t0
            # against the reference (the current default) at every radius of the grid, point by point
            ref = all_flips.get("reference")
            if ref is not None and name not in ("baseline", "reference"):
                by_eps = [abs((flips > r + 1e-12).float().mean().item() - (ref > r + 1e-12).float().mean().item())
                          for r in grid]
                differ = int((flips != ref).sum())  # points whose smallest flipping radius differs
                ref_gaps[name].append(max(by_eps))
                vs_ref = f"{100 * max(by_eps):.2f} at {grid[max(range(len(grid)), key=by_eps.__getitem__)]:g} | {differ}"
            else:
                vs_ref = "- | -"
            ours = (flips > e.eps + 1e-12)[:aa_n]  # on AutoAttack's points
            accs[name] = ours.float().mean().item()
            if aa is not None:
                theirs = torch.tensor(aa["autoattack_correct"], dtype=torch.bool)
                aa_only, ours_only = int((ours & ~theirs).sum()), int((~ours & theirs).sum())  # per-point disagreement
                gaps[name].append(accs[name] - aa["autoattack_acc"])
                vs_aa = (f"{100 * aa['autoattack_acc']:.2f} | {100 * (accs[name] - aa['autoattack_acc']):+.2f} | "
                         f"{aa_only} | {ours_only}")
            else:
                vs_aa = "- | - | - | -"
            if name in ratios:
                ratios[name].append(seconds[name] / seconds["baseline"])
            lines.append(f"| {label} | {name}: {attack!r} | {search} | {100 * accs[name]:.2f} | {vs_aa} | {vs_ref} | "
                         f"{seconds[name]:.0f} | {seconds[name] / seconds['baseline']:.2f} |")
            print(lines[-1], flush=True)
    for name in e.candidates:
        worst, worst_ref = max(gaps[name], default=None), max(ref_gaps[name])
        to_aa = (f"worst gap to AA {100 * worst:+.2f} points (bar <= {100 * e.max_gap:g})" if worst is not None
                 else "AutoAttack not compared (bench.eval_attacks.autoattack=false)")
        rep.add(f"{name}: time / baseline over rows", (statistics.median(ratios[name]), min(ratios[name]),
                max(ratios[name])), f"<= {e.max_ratio} on every row; {to_aa}; to the reference {100 * worst_ref:.2f} "
                f"at worst over the grid (bar <= {100 * e.max_reference_gap:g})",
                max(ratios[name]) <= e.max_ratio and (worst is None or worst <= e.max_gap)
                and worst_ref <= e.max_reference_gap)
    rep.note(f"per row and attack, curves on the first {e.n} test points; at eps={e.eps} on AutoAttack's first {aa_n} "
             f"(AutoAttack: the stored record, {cfg_aa}; acc = the attack's curve, every grid radius up to eps):\n\n"
             + "\n".join(lines))
    if gaps["baseline"]:
        rep.note("baseline gap to AutoAttack per row: " + ", ".join(f"{100 * g:+.2f}" for g in gaps["baseline"]))
    return rep


def describe(cfg: DictConfig) -> str:
    e = cfg.bench.eval_attacks
    return f"{len(e.rows)} rows, first {e.n} test points, eps {e.eps}; one curve per attack and row"
