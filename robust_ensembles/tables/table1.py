"""Table 1: natural and robust accuracy of a single natural model, single robust models, a
K-ensemble at a small alpha (chosen on validation), a composite and a weighted pair of composites."""

from __future__ import annotations

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.evaluation.curves import curve_of
from robust_ensembles.tables.claims import Verdict, composites_vs_single, ensemble_beats_members, ensemble_vs_single
from robust_ensembles.tables.estimate import planner_for
from robust_ensembles.tables.reports import Filled, autoattack_of, row_cells, seeds_of
from robust_ensembles.tables.seed_blocks import CLEAN, evaluate_blocks, mean_curve, member_records, seed_blocks
from robust_ensembles.tables.table_run import Needs, TableRun

CHOSEN = "chosen"  # a row's alpha chosen on validation from `alpha_candidates`


def needs(t: TableRun) -> Needs:
    """Every row's seeds (K x its replicates), the candidates' K seeds, the composites and the single models
    claim (5) compares them with. The chosen alpha's replicates are known once the choice is: from stored
    validation records (`decided_alpha`); before that they are planned at the choice the estimate assumes
    and trained when the choice is made (`seed_blocks.ensure_seeds`)."""
    n = Needs(composites=sorted({o for r in t.s.rows for o in r.get("composites", [])}))
    chosen = decided_alpha(t) if check_choice(t) else None
    for row in t.s.rows:
        if "alpha" not in row:
            continue
        seeds = row.K * row.get("replicates", 1)
        if row.alpha != CHOSEN:
            n.add_seeds(row.alpha, seeds)
        elif chosen is not None:
            n.add_seeds(chosen, seeds)
        else:
            n.add_later(min(t.s.alpha_candidates), seeds)
    for alpha in t.s.get("alpha_candidates", []):
        n.add_seeds(alpha, t.s.K)
    ref = t.s.get("composite_reference")
    if ref is not None:
        n.add_seeds(ref.alpha, ref.replicates)
    return n


def decided_alpha(t: TableRun) -> float | None:
    """The alpha `choose_alpha` picks from the validation records the store holds, None while one it
    reads is missing (nothing is evaluated: the choice runs in estimate mode)."""
    with planner_for(t) as planner:
        alpha, _ = choose_alpha(t)
        return None if any(p["curve_missing"] for p in planner.plan) else alpha


def choose_alpha(t: TableRun) -> tuple[float, list[str]]:
    """Smallest candidate alpha whose K-ensemble is at least as accurate at the target eps as the
    single model trained at the target, both measured on the validation split (never the test set).

    The validation split (training images held out from every model's training) also picked each
    member's kept epoch. Reusing it here can only make the choice of alpha optimistic on validation;
    the reported rows are measured on the test set, which neither choice has seen, so they carry no
    selection bias (the cost of the reuse is at worst a less good alpha, not a wrong number)."""
    target = t.spec.target_eps
    if len(t.s.alpha_candidates) < 3:
        raise ConfigError(f"sweeps/{t.table}.yaml scale {t.scale}: alpha_candidates={list(t.s.alpha_candidates)} "
                          f"must list at least three alphas to choose from.")
    notes = []
    grid = [f"evaluation.eps_grid=[0,{target}]", "evaluation.split=val"]
    single = t.evaluate_row([f"alpha={target}", "K=1", *grid], autoattack=False)
    ref = curve_of(single).at(target)
    for alpha in sorted(t.s.alpha_candidates):
        r = t.evaluate_row([f"alpha={alpha}", f"K={t.s.K}", *grid], autoattack=False)
        acc = curve_of(r).at(target)
        notes.append(f"validation ({r['n']} held-out training images): {t.s.K}x alpha={alpha} {100 * acc:.2f}% vs "
                     f"single alpha={target} {100 * ref:.2f}% at eps={target}")
        if acc >= ref:
            return alpha, notes
    notes.append(NONE_MATCHED)
    return max(t.s.alpha_candidates), notes


NONE_MATCHED = "no candidate alpha matched the single model on validation; the largest candidate is used"


def choice_note(t: TableRun, alpha: float, matched: bool = True) -> str:
    rule = (f"the smallest whose {t.s.K}-ensemble is at least as accurate at eps={t.spec.target_eps:g} as the single "
            f"model trained there" if matched else
            f"the largest, as none of their {t.s.K}-ensembles was as accurate at eps={t.spec.target_eps:g} as the single "
            f"model trained there")
    return (f"alpha={alpha:g} chosen on the validation split among {sorted(t.s.alpha_candidates)}: {rule}. "
            f"That split (held-out training images) also picked every member's kept epoch; the test set below "
            f"played no part in either choice")


def check_choice(t: TableRun) -> bool:
    """Whether a row's alpha is chosen; one that is needs the scale's `alpha_candidates`."""
    if not any(row.get("alpha") == CHOSEN for row in t.s.rows):
        return False
    if not t.s.get("alpha_candidates"):
        raise ConfigError(f"sweeps/{t.table}.yaml scale {t.scale}: a row has alpha: {CHOSEN} but the scale lists no "
                          f"alpha_candidates; list at least three, or give the row an alpha.")
    return True


def fill(t: TableRun) -> Filled:
    check_choice(t)
    alpha, notes = choose_alpha(t) if t.s.get("alpha_candidates") else (None, [])
    if alpha is not None:
        notes.insert(0, choice_note(t, alpha, matched=NONE_MATCHED not in notes))
    rows, curves, records, roles = [], {}, [], {}
    for row in t.s.rows:
        a = alpha if row.get("alpha") == CHOSEN else row.get("alpha")
        if row.get("members", "seeds") == "seeds":  # K-ensembles (K=1: single models) of its seed blocks
            replicates = evaluate_blocks(t, a, row.K, row.get("replicates", 1))
        else:
            over = [f"members={row.members}"]
            if row.members == "composite":  # the one composite this row shows, as needs() trained it
                over.append(f"composite={row.composites[0]}")
            replicates = [t.evaluate_row(over)]
        records += replicates
        label = row.label.format(alpha=a, K=row.get("K"))
        rows.append({"model": label, **row_cells(t, replicates, list(t.spec.columns_eps)), "n": replicates[0]["n"],
                     "seeds": seeds_of(replicates)})
        curves[label] = mean_curve(replicates)
        if row.get("claim"):
            roles[row.claim] = (label, replicates, row, a)
    verdicts, more_notes = claims(t, roles)
    return Filled(rows, curves, notes + more_notes, autoattack_of(records), claims=verdicts)


def claims(t: TableRun, roles: dict[str, tuple]) -> tuple[list[Verdict], list[str]]:
    """Claim (1): the ensemble row's seed blocks against the single row's seeds at the target eps; claim (4):
    every ensemble row against the mean of its members; claim (5): the composite rows against the single
    models trained at the composite's eps (`composite_reference`). Returns the verdicts and notes."""
    c, eps = t.claims, float(t.spec.target_eps)
    margin, level = float(c.margin), float(c.level)
    verdicts, notes = [], []
    if {"ensemble", "single"} <= set(roles):
        (e_label, ensembles, _, _), (s_label, singles, _, _) = roles["ensemble"], roles["single"]
        verdicts.append(ensemble_vs_single(ensembles, singles, eps, margin, level, e_label, s_label))
    if "ensemble" in roles:
        label, ensembles, row, a = roles["ensemble"]
        blocks = seed_blocks(row.K, row.get("replicates", 1))
        verdicts.append(ensemble_beats_members(ensembles, member_records(t, a, blocks), level, label))
    if "composites" in roles:
        label, (pair,), row, _ = roles["composites"]
        parts = [t.evaluate_row(["members=composite", f"composite={o}", *CLEAN], autoattack=False)
                 for o in row.composites]
        check_parts(t, row, pair, parts)
        verdicts.append(ensemble_beats_members([pair], [parts], level, label, weights=pair.get("weights")))
    ref = t.s.get("composite_reference")
    if ref is not None and {"composite", "composites"} <= set(roles):
        singles = evaluate_blocks(t, ref.alpha, 1, ref.replicates)
        ref_label = f"Robust model eps={ref.alpha:g}"
        verdicts.append(composites_vs_single(roles["composite"][1], roles["composites"][1], singles, eps, margin, level,
                                             float(t.spec.auc_eps), (roles["composite"][0], roles["composites"][0],
                                                                     ref_label)))
        cells = row_cells(t, singles, [0.0, eps])
        notes.append(f"claim (5)'s reference, {ref_label} (the composites' head radius; seeds {seeds_of(singles)}): "
                     f"natural {cells['natural']}, eps={eps:g} {cells[f'eps={eps:g}']}")
    return verdicts, notes


def check_parts(t: TableRun, row, pair: dict, parts: list[dict]) -> None:
    """The composites a row names (`composites:`, what needs() trains) must be its members, in order: claim (4)
    reads each one's clean accuracy against the weighted ensemble of them."""
    keys = lambda r: [m.get("key") for m in r.get("members", [])]
    want, have = keys(pair), [k for p in parts for k in keys(p)]
    if None not in want + have and want != have:  # (estimate mode's stand-ins have no keys)
        raise ConfigError(f"sweeps/{t.table}.yaml scale {t.scale}: the row {row.label!r} lists composites "
                          f"{list(row.composites)}, which are not its members ({row.members}) in that order; list "
                          f"the composite options that build them.")
