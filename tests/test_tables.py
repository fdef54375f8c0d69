"""Tables: the equivalence definition, the writers, the Makefile targets, the driver on miniature
tables (the paper's three, and a new table module written in the test)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import subprocess
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from robust_ensembles import PROJECT_ROOT, store
from robust_ensembles.core import compose
from robust_ensembles.core.compose import compose_config
from robust_ensembles.core.errors import ConfigError
from robust_ensembles.tables import driver, estimate, evaluation_jobs, launch
from robust_ensembles.tables.reports import write_table
from robust_ensembles.tables.table2_equivalence import equivalent_eps
from robust_ensembles.tables.table_run import TableRun

GRID = [0.25, 0.5, 0.75, 1.0]


def test_equivalent_eps_interpolates_where_the_sign_changes():
    # differences +0.1, +0.05, -0.05, -0.1: crossing halfway between 0.5 and 0.75
    value, text = equivalent_eps(GRID, [0.6, 0.45, 0.30, 0.2], [0.5, 0.40, 0.35, 0.3])
    assert value == pytest.approx(0.625) and text == "0.625"
    # a quarter of the way: +0.01 then -0.03
    value, _ = equivalent_eps([0.25, 0.5], [0.51, 0.37], [0.5, 0.4])
    assert value == pytest.approx(0.25 + 0.25 * 0.01 / 0.04)


def test_equivalent_eps_beyond_the_grid_and_below_it():
    value, text = equivalent_eps(GRID, [0.6, 0.5, 0.4, 0.3], [0.5, 0.4, 0.3, 0.2])
    assert value == 1.0 and text == "> 1"
    value, text = equivalent_eps(GRID, [0.4, 0.3, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2])
    assert math.isnan(value) and text == "< 0.25"


def test_equivalent_eps_is_the_largest_eps_where_the_ensemble_is_ahead_whatever_came_before():
    # [-, +, +, +]: behind at 0.25 only; at least as accurate from 0.5 to the grid's end -> "> 1"
    assert equivalent_eps(GRID, [0.4, 0.45, 0.35, 0.25], [0.5, 0.40, 0.30, 0.20]) == (1.0, "> 1")
    # [+, -, +]: ahead again at the last grid point -> "> max", not the interior crossing
    assert equivalent_eps([0.25, 0.5, 0.75], [0.6, 0.3, 0.35], [0.5, 0.4, 0.3]) == (0.75, "> 0.75")
    # + - + -: ahead again at 0.75, behind at 1.0 -> crossing between 0.75 and 1.0
    value, _ = equivalent_eps(GRID, [0.6, 0.3, 0.35, 0.1], [0.5, 0.4, 0.3, 0.2])
    assert value == pytest.approx(0.75 + 0.25 * 0.05 / 0.15)


def test_equivalent_eps_ties_count_as_at_least_as_accurate():
    assert equivalent_eps(GRID, [0.5, 0.4, 0.3, 0.2], [0.5, 0.4, 0.3, 0.2]) == (1.0, "> 1")  # equal everywhere
    value, text = equivalent_eps([0.25, 0.5, 0.75], [0.6, 0.4, 0.2], [0.5, 0.4, 0.3])  # tie at 0.5, behind at 0.75
    assert value == pytest.approx(0.5) and text == "0.500"


def test_equivalent_eps_on_a_single_grid_point():
    assert equivalent_eps([0.5], [0.4], [0.4]) == (0.5, "> 0.5")
    value, text = equivalent_eps([0.5], [0.3], [0.4])
    assert math.isnan(value) and text == "< 0.5"


def test_table_writers(tmp_path):
    rows = [{"model": "a_b", "eps=0.5": "50.00 ± 1.00"}, {"model": "c", "eps=0.5": "60.00 ± 1.00"}]
    paths = write_table(rows, ["model", "eps=0.5"], tmp_path, "t", "Caption", ["note"])
    md = paths["md"].read_text()
    assert "| a_b | 50.00 ± 1.00 |" in md and "- note" in md
    assert paths["csv"].read_text().splitlines()[0] == "model,eps=0.5"
    tex = paths["tex"].read_text()
    assert r"a\_b & 50.00 $\pm$ 1.00 \\" in tex and r"\caption{Caption}" in tex


@pytest.mark.parametrize("target,table", [("table1", "table1"), ("table2-size", "table2_size"),
                                          ("table2-equivalence", "table2_equivalence")])
def test_make_dry_run_shows_the_table_command(target, table):
    out = subprocess.run(["make", "-n", target, "SCALE=paper", "ESTIMATE=1", "ARGS=hydra/launcher=gpus"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert (f"-m robust_ensembles.tables table={table} scale=paper autoattack_column=run estimate=true hydra/launcher=gpus"
            in out.stdout)
    tables = subprocess.run(["make", "-n", "tables", "AUTOATTACK=stored"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True).stdout
    assert "-m robust_ensembles.tables table=all scale=cpu autoattack_column=stored" in tables
    two = subprocess.run(["make", "-n", "tables", "JOBS=2", "ARGS=seed=0"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True).stdout
    assert ("autoattack_column=run hydra/launcher=ray_cpu threads=1 evaluate_in=jobs hydra.launcher.ray.init.num_cpus=2 "
            "seed=0") in two


def test_tables_declare_what_they_need(tmp_path):
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    t1 = TableRun("table1", "cpu", over)
    needs = t1.needs()  # the rows and their replicates, the alpha candidates, the composites' backbones and reference
    assert needs.seeds == {0.0: 1, 0.05: 1, 0.22: 4, 0.25: 4, 0.3: 4, 0.4: 4, 0.5: 8}
    # the chosen alpha's second seed block: not chosen yet on an empty store, so planned at the smallest candidate
    # (what ESTIMATE assumes) and trained once the choice is made
    assert needs.later == {0.22: 8}
    assert needs.composites == ["paper", "paper_b"]
    assert TableRun("table2_size", "paper", over).needs().seeds == {0.5: 16}
    assert TableRun("table2_size", "cpu", over).needs().seeds == {0.5: 8}
    eq = TableRun("table2_equivalence", "cpu", over).needs().seeds
    assert eq[0.22] == 4 and eq[0.75] == 1 and eq[1.0] == 1 and eq[0.5] == 4
    jobs, comps = t1.missing()
    assert len(jobs) == 26 and comps == ["paper", "paper_b"]
    assert len(t1.missing(with_later=True)[0]) == 30


def test_a_scale_is_stated_once_in_its_preset():
    """A model shown in several tables is evaluated once only if every table composes its rows alike: how a
    scale evaluates table rows (overrides, AutoAttack points) is stated in its preset alone, never in a sweep."""
    from omegaconf import OmegaConf

    specs = {p.stem: OmegaConf.load(p) for p in sorted((PROJECT_ROOT / "sweeps").glob("*.yaml"))}
    for scale in ("cpu", "paper", "tiny"):
        preset = compose_config("train", [f"experiment={scale}"]).table_evaluation
        for name, spec in specs.items():
            assert not {"experiment", "evaluate_overrides", "autoattack_n"} & set(spec.scales[scale]), (name, scale)
            t = TableRun(name, scale, [])
            assert t.autoattack_n == preset.autoattack_n and t.evaluate_overrides == list(preset.overrides)
            assert t.row_base[:len(preset.overrides) + 3] == [f"experiment={scale}", f"table={name}", f"scale={scale}",
                                                               *preset.overrides]


def in_process(monkeypatch) -> list:
    """The driver's training multiruns, run in this process (the subprocess itself is exercised by
    test_a_new_table_is_a_sweep_and_a_module and the train tests); returns what the driver asked for."""
    from robust_ensembles.finetune import finetune
    from robust_ensembles.train import train

    calls = []

    def multirun(self, module, overrides):
        calls.append((module, overrides))
        o = dict(x.split("=", 1) for x in overrides)
        if module == "robust_ensembles.train":
            for a in o["alpha"].split(","):
                for seed in o["seed"].split(","):
                    train(compose.compose_config("train", [*self.base, f"alpha={a}", f"seed={seed}"]))
        else:
            for c in o["composite"].split(","):
                finetune(compose.compose_config("finetune", [*self.base, f"composite={c}"]))

    monkeypatch.setattr(TableRun, "multirun", multirun)
    return calls


def test_miniature_tables_end_to_end_autoattack_shared_and_reruns_train_nothing(tmp_path, capsys, monkeypatch):
    """`all` trains the three tables' union once; the AutoAttack column can come later from the store,
    each distinct model attacked once however many tables show it; a rerun trains and attacks nothing."""
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    multiruns = in_process(monkeypatch)
    reports, records = tmp_path / "reports" / "tiny", tmp_path / "store" / "records" / "autoattack"
    tables = ["table1", "table2_size", "table2_equivalence"]

    driver.run("all", "tiny", over, autoattack="stored")
    out = capsys.readouterr().out
    assert "all tables: trained this run: 14 (" in out  # 12 models + 2 composites, each once
    assert multiruns[:4] == [  # one multirun per seed list, then the composites
        ("robust_ensembles.train", ["alpha=0.0,0.05", "seed=0"]),
        ("robust_ensembles.train", ["alpha=0.25,0.3,0.4", "seed=0,1"]),
        ("robust_ensembles.train", ["alpha=0.5", "seed=0,1,2,3"]),
        ("robust_ensembles.finetune", ["composite=paper,paper_b"])]
    # Table 1's chosen alpha is known once validation is read: its second seed block is trained then, and only it
    chosen = re.search(r"alpha=(\S+) chosen on the validation split", (reports / "table1.md").read_text()).group(1)
    assert multiruns[4:] == [("robust_ensembles.train", [f"alpha={chosen}", "seed=2,3"])]
    assert f"table1: trained this run: 2 (alpha={chosen} seed=2, alpha={chosen} seed=3)" in out
    for t in tables[1:]:
        assert f"{t}: trained this run: 0 (nothing)" in out
        md = (reports / f"{t}.md").read_text()
        assert "pending" in md and "AutoAttack column: pending" in md
    assert not records.exists()
    # ESTIMATE=1 now: nothing to train, every curve stored, the AutoAttack records still missing, with no
    # stored AutoAttack record of this setup to take a cost from yet
    before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    driver.run("all", "tiny", over, estimate=True)
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == before  # estimate mode writes nothing
    est = capsys.readouterr().out
    assert re.search(r"all \(tiny\): 0 distinct training jobs and 0 composites missing; evaluation: 0 of \d+ curve "
                     r"records and [1-9]\d* AutoAttack records missing; no stored autoattack record", est), est
    # AUTOATTACK=stored computes no AutoAttack record: the estimate says they stay pending and costs none
    driver.run("all", "tiny", over, autoattack="stored", estimate=True)
    stored_est = capsys.readouterr().out
    assert re.search(r"all \(tiny\): .*AutoAttack records missing \((\d+) left pending: AUTOATTACK=stored computes "
                     r"none\)\n", stored_est), stored_est
    # training is costed per kind at the median stored fit time: natural, adversarial, and composites apart
    t1 = TableRun("table1", "tiny", over, "stored")
    cfg = compose_config("train", t1.base)
    fit = lambda r: r.metrics()["fit_seconds"]
    runs = store.query(cfg.store.root, {})
    adversarial = [fit(r) for r in runs if "backbones" not in r.identity and r.identity["alpha"] > 0]
    composite = [fit(r) for r in runs if "backbones" in r.identity]
    assert len(composite) == 2
    text, seconds = estimate.estimate_training(t1, [(0.25, 7), (0.3, 7)], ["paper"])
    assert seconds == pytest.approx(2 * statistics.median(adversarial) + statistics.median(composite))
    # two at a time: the two fits of one multirun together, then the composite's multirun
    assert estimate.estimate_training(t1, [(0.25, 7), (0.3, 7)], ["paper"], slots=2)[1] == \
        pytest.approx(statistics.median(adversarial) + statistics.median(composite))
    assert "2 training jobs and 1 composites missing" in text and "composite " in text
    # fits timed with other torch threads per job do not cost this run's jobs (tiny has no reference costs)
    other = TableRun("table1", "tiny", [*over, f"threads={torch.get_num_threads() + 1}"], "stored")
    assert estimate.estimate_training(other, [(0.25, 7)], [])[1] is None

    driver.run("all", "tiny", over)
    out = capsys.readouterr().out
    assert "all tables: trained this run: 0 (nothing)" in out
    # one AutoAttack record per distinct model that a row with the column shows, however many rows and tables show
    # it: natural, the chosen single's 2 seeds, the 0.5 single's 4 (also Table 2 left's K=1 and Table 2 right's
    # reference), the chosen 2-ensembles of seeds 0,1 and 2,3, the composite, the pair, claim (5)'s 2 singles at
    # 0.4 (the chosen single's when 0.4 is chosen), the 2-ensembles at 0.5 of seeds 0,1 and 2,3, the 4-ensemble
    # at 0.5, and Table 2 right's 2-ensemble at 0.25 (Table 1's first block when 0.25 is chosen)
    shared = 17 - (chosen == "0.25") - 2 * (chosen == "0.4")
    assert len(list(records.glob("*.json"))) == shared
    specs = [json.loads(p.read_text())["spec"] for p in (records.parent / "curve").glob("*.json")]
    splits = [s["test"]["split"] for s in specs]
    assert 2 <= splits.count("val") <= 4  # choosing alpha
    # claim (4)'s members read on clean data alone: the chosen alpha's seeds 0-3, the pair's two composites, the
    # 0.5 seeds 0-3 (Table 2 left's ensembles; Table 2 right's at 0.5) and Table 2 right's 0.25 seeds 0,1
    clean_only = [s for s in specs if s["evaluation"]["eps_grid"] == [0]]
    assert len(clean_only) == 10 + 2 * (chosen != "0.25") and all(s["evaluation"]["auc_eps"] is None for s in clean_only)
    md = {t: (reports / f"{t}.md").read_text() for t in tables}
    for t in tables:
        assert "pending" not in md[t] and "AA eps=0.5" in md[t] and "records computed on cpu (" in md[t]
        for ext in ("csv", "tex", "png"):
            assert (reports / f"{t}.{ext}").is_file()
    for label in ["Natural model", f"Robust model eps={chosen}", "Robust model eps=0.5", f"2-Robust eps={chosen}",
                  "1-composite (0.4, 0.05)", "2X 1-composite weighted average", "AUC(0.5)"]:
        assert label in md["table1"]
    assert "single-robust-equivalent eps" in md["table2_equivalence"]
    assert "under AutoAttack at eps=0.5 on the same 8 points, the single model trained at 0.5" in md["table2_equivalence"]
    for t in ("table2_size", "table2_equivalence"):
        assert "| seeds |" in md[t].splitlines()[2]
    assert "| 0,1 |" in md["table2_equivalence"] and "| 0,1; 2,3 |" in md["table2_size"]  # the 2-model rows' seeds
    assert "APGD(norm=l2, APGD-CE 2 steps x 1 restarts + APGD-T 2 steps x 1 targets)" in md["table1"]
    # one evaluation per model: the single model at 0.5 reads the same in Table 1 and in Table 2 left (K=1)
    t1 = next(r for r in csv.DictReader(io.StringIO((reports / "table1.csv").read_text()))
              if r["model"] == "Robust model eps=0.5")
    t2 = next(r for r in csv.DictReader(io.StringIO((reports / "table2_size.csv").read_text())) if r["models"] == "1")
    same = ["natural", "eps=0.5", "AA eps=0.5", "attack eps=0.5 (AA points)", "worst case eps=0.5 (AA points)",
            "attack - AA"]
    assert [t1[c] for c in same] == [t2[c] for c in same]
    # every table's footer carries its claims' verdicts, and claims.md collects them with their commands
    assert re.search(r"claim \*\*(holds|fails|inconclusive at this n)\*\*: \(1\) 2-Robust eps=", md["table1"])
    assert re.search(r"claim \*\*(holds|fails|inconclusive at this n)\*\*: \(3\) the single-robust-equivalent eps "
                     r"of 2x alpha=0.25 is about 2\*alpha = 0.5", md["table2_equivalence"])
    claims_md = (reports / "claims.md").read_text()
    assert "## table1" in claims_md and "## table2_equivalence" in claims_md
    assert "`python -m robust_ensembles.tables table=table1 scale=tiny autoattack_column=run" in claims_md
    # the commands as a user types them: no folder of the machine that wrote them; the commit that wrote them
    assert "paths." not in claims_md and str(tmp_path) not in claims_md
    assert re.search(r"\(written [\d-]+ [\d:]+ at commit [0-9a-f]{12} \((clean tree|with uncommitted changes to the "
                     r"code)\)\)", claims_md), claims_md
    assert {"commit", "clean"} <= set(json.loads((reports / "table1.claims.json").read_text()))
    # every claim of the paper has a verdict: (1) and (4) and (5) in Table 1, (2) and (4) in Table 2 left, (3) and
    # (4) in Table 2 right; replicated rows name their seed blocks
    for claim in ("(1)", "(4)", "(5)"):
        assert f"**: {claim} " in md["table1"]
    assert "**: (2) " in md["table2_size"] and "**: (4) " in md["table2_size"] and "**: (4) " in md["table2_equivalence"]
    assert f"| 2-Robust eps={chosen} |" in md["table1"] and "| 0,1; 2,3 |" in md["table1"] and "(sd " in md["table1"]

    driver.run("all", "tiny", over, estimate=True)
    assert re.search(r"evaluation: 0 of \d+ curve records and 0 AutoAttack records missing\n", capsys.readouterr().out)

    stamps = {p: p.stat().st_mtime_ns for p in records.glob("*.json")}
    driver.run("all", "tiny", over, autoattack="stored")
    assert "all tables: trained this run: 0 (nothing)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in records.glob("*.json")}  # nothing recomputed
    for t in tables:
        assert md[t].split("- written")[0] == (reports / f"{t}.md").read_text().split("- written")[0]

    # the equivalence plot shows, beside the ensembles' curves, each single model at its own eps: the
    # points the equivalent eps compares with; the table's AutoAttack records include the reference single
    filled = TableRun("table2_equivalence", "tiny", over, "stored").fill()
    [(label, points)] = filled.points.items()
    assert label.startswith("single model trained at e") and [e for e, _, _ in points] == [0.25, 0.5]
    for e, acc, se in points:
        assert f"{e:g}: {100 * acc:.2f}%" in md["table2_equivalence"]
        assert se == pytest.approx((acc * (1 - acc) / 64) ** 0.5)
    assert len(filled.autoattack) == 3 and list(filled.curves) == ["2x alpha=0.25", "2x alpha=0.5"]

    # autoattack_column=off: no AutoAttack column, and the stored AutoAttack records stay out of every cell
    off = TableRun("table2_size", "tiny", over, "off").fill()
    on = TableRun("table2_size", "tiny", over, "stored").fill()
    assert not any("AA eps=0.5" in r or "other attacks (own accuracy)" in r for r in off.rows)
    for r_off, r_on, curve in zip(off.rows, on.rows, off.curves.values()):
        assert r_off["eps=0.5"].startswith(f"{100 * curve.at(0.5):.2f}")  # the curve alone
        assert r_on["worst case eps=0.5 (AA points)"]


def test_evaluation_jobs_launch_validation_rounds_until_the_choice_is_made_then_its_test_rows(tmp_path):
    """A Table-1-like choice (candidates read on validation in order, the first that matches is kept; a
    missing record's stand-in always matches): validation rounds until none is missing, then only the
    chosen candidate's test row, never the stand-in's; a lost record is launched again."""
    from types import SimpleNamespace as NS

    stored, matches = set(), {"c1": False, "c2": True, "c3": True}

    def entry(key, split):
        cfg = NS(evaluation=NS(split=split, autoattack=NS(compute=True)))
        return {"curve_key": key, "autoattack_key": None, "curve_missing": key not in stored, "costs": {},
                "autoattack_missing": False, "autoattack_todo": False, "cfg": cfg, "overrides": [f"row={key}"]}

    def plan():
        rows = [entry("single", "val")]
        for c in ("c1", "c2", "c3"):
            rows.append(entry(c, "val"))
            if c not in stored or matches[c]:  # stand-in (missing) or a real match: chosen
                return rows + [entry(f"test-{c}", "test")]
        return rows

    table = NS(evaluate_cfg=NS(store=NS(root=str(tmp_path))), user_overrides=[], launcher=[])
    launched = []

    def launch(rows_file, n, t):
        rows = json.loads(rows_file.read_text())
        assert len(rows) == n
        launched.append([r[0].split("=")[1] for r in rows])
        stored.update(r[0].split("=")[1] for r in rows)

    assert evaluation_jobs.evaluation_jobs([table], launch=launch, plan_of=lambda t: plan()) == 4
    assert launched == [["c1", "single"], ["c2"], ["test-c2"]]
    # a job killed before it stored its record: the next run launches that one again, and only it
    stored.discard("c2")
    launched.clear()
    assert evaluation_jobs.evaluation_jobs([table], launch=launch, plan_of=lambda t: plan()) == 1 and launched == [["c2"]]


def k_table(tmp_path, monkeypatch):
    """A table of K-ensembles at alpha=0.25 written as docs/tables.md says: a module with needs() and fill()
    (importable from tmp_path) and its sweep; returns the sweeps folder."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "k_table.py").write_text(textwrap.dedent('''
        from robust_ensembles.evaluation.curves import curve_of
        from robust_ensembles.tables.table_run import Needs
        from robust_ensembles.tables.reports import Filled, row_cells

        def needs(t):
            return Needs().add_seeds(t.s.alpha, max(t.s.K_values))

        def fill(t):
            rows, curves = [], {}
            for k in t.s.K_values:
                r = t.evaluate_row([f"alpha={t.s.alpha}", f"K={k}"], autoattack=False)
                rows.append({"K": k, **row_cells(t, r, [0, t.spec.target_eps])})
                curves[f"K={k}"] = curve_of(r)
            return Filled(rows, curves, notes=[f"{len(rows)} rows from a table module written in a test"])
    '''))
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "k_table.yaml").write_text(textwrap.dedent('''
        caption: "K-ensembles at alpha=0.25"
        module: k_table
        target_eps: 0.25
        scales:
          tiny: {experiment: tiny, alpha: 0.25, K_values: [1, 2], autoattack_n: 8,
                 evaluate_overrides: [evaluation.attack.steps=2, evaluation.attack.targeted_steps=2,
                                      evaluation.attack.target_classes=1, "evaluation.eps_grid=[0,0.25,0.5]"]}
    '''))
    return sweeps


@pytest.mark.parametrize("evaluate_in", ["process", pytest.param("jobs", marks=pytest.mark.slow)])  # jobs: +14 s
def test_a_new_table_is_a_sweep_and_a_module(tmp_path, monkeypatch, capsys, evaluate_in):
    """The recipe of docs/tables.md: a sweeps/<name>.yaml naming a module with needs() and fill(); the generic
    driver trains what it needs (a training multirun), evaluates its rows and writes its reports. With
    evaluate_in=jobs the rows' records are computed by a Hydra multirun of evaluate_row in separate
    processes (the driver's process computes none), the same records as in-process evaluation (the
    rounds of jobs are tested fast in test_evaluation_jobs_launch_validation_rounds_...)."""
    from robust_ensembles.evaluation import records

    guard, put = {"on": evaluate_in == "jobs"}, records.store.put_record

    def no_record_here(*a, **k):
        assert not guard["on"], "a record was computed in the driver's process"
        return put(*a, **k)

    monkeypatch.setattr(records.store, "put_record", no_record_here)
    sweeps = k_table(tmp_path, monkeypatch)
    # an override only the evaluation knows reaches the rows, not the training multirun
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store", "evaluation.batch_size=16"]
    driver.run("k_table", "tiny", over, autoattack="off", sweeps_dir=sweeps, evaluate_in=evaluate_in)
    guard["on"] = False
    out = capsys.readouterr().out
    assert "k_table: trained this run: 2 (alpha=0.25 seed=0, alpha=0.25 seed=1)" in out
    assert ("evaluation jobs: 2 launched" in out) == (evaluate_in == "jobs")
    md = (tmp_path / "reports" / "tiny" / "k_table.md").read_text()
    assert "**K-ensembles at alpha=0.25**" in md and "| K | natural | eps=0.25 |" in md
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| 1") or line.startswith("| 2")] == ["| 1", "| 2"]
    assert "2 rows from a table module written in a test" in md and "AutoAttack column: not computed" in md
    records = [json.loads(p.read_text()) for p in (tmp_path / "store" / "records" / "curve").glob("*.json")]
    assert len(records) == 2 and all(r["spec"]["evaluation"]["batch_size"] == 16 for r in records)
    if evaluate_in == "jobs":  # a job's record is the one this process computes for the same row
        t = TableRun("k_table", "tiny", over, "off", sweeps_dir=sweeps)
        by_job = t.evaluate_row(["alpha=0.25", "K=2"], autoattack=False)
        here = t.evaluate_row(["alpha=0.25", "K=2", "evaluation.force=true"], autoattack=False)
        as_stored = lambda r: json.loads(json.dumps({k: r[k] for k in ("per_point", "curve")}))
        assert as_stored(here) == as_stored(by_job)
    with pytest.raises(ConfigError, match="evaluate_in=elsewhere is unknown"):
        driver.run("k_table", "tiny", over, sweeps_dir=sweeps, evaluate_in="elsewhere")


def test_train_false_names_the_models_missing_and_trains_nothing(tmp_path, monkeypatch):
    """train=false fills the tables from the models the store holds: one missing is one error naming it, before
    anything trains (make bench-tables-eval fills tables this way; its test runs it on a trained store)."""
    sweeps = k_table(tmp_path, monkeypatch)
    multiruns = in_process(monkeypatch)
    with pytest.raises(ConfigError, match=r"train=false: the store \S+ lacks 2 model\(s\) that k_table need\(s\) "
                                          r"\(alpha=0.25 seed=0, alpha=0.25 seed=1\); train them"):
        driver.run("k_table", "tiny", [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"],
                   autoattack="off", sweeps_dir=sweeps, train=False)
    with pytest.raises(ConfigError, match=r"train=false: the store \S+ lacks 2 model\(s\)"):  # estimated: refused too
        driver.run("k_table", "tiny", [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"],
                   autoattack="off", sweeps_dir=sweeps, train=False, estimate=True)
    assert multiruns == []


def test_an_unknown_table_or_scale_is_named(tmp_path):
    from robust_ensembles.core.errors import ConfigError
    with pytest.raises(ConfigError, match=r"table=tabel1: no sweep .*table1"):
        TableRun("tabel1", "cpu", [])
    with pytest.raises(ConfigError, match="scale=huge is not declared"):
        TableRun("table1", "huge", [])


def test_table1_chooses_alpha_on_validation_before_touching_the_test_set(tmp_path, monkeypatch):
    """The smallest candidate whose ensemble matches the single model at the target eps, judged on the
    validation split only, and every validation evaluation comes before any test-set evaluation."""
    from robust_ensembles.evaluation.curves import Curve
    from robust_ensembles.tables import table1

    val_acc = {0.5: 0.40, 0.25: 0.38, 0.3: 0.41, 0.4: 0.45}  # at eps 0.5 on validation: 0.3 is the first to match
    calls = []

    def fake_row(overrides, autoattack=True):
        o = dict(x.split("=", 1) for x in overrides)
        split = o.get("evaluation.split", "test")
        calls.append((split, o.get("alpha"), o.get("K")))
        acc = val_acc[float(o["alpha"])] if split == "val" else 0.3
        grid, accs = [0.0, 0.22, 0.35, 0.5], [0.8, 0.6, 0.5, acc]
        curve = Curve(grid, accs, None, 100)
        # per point the smallest flipping radius, consistent with the curve (100 points)
        standing = [round(a * 100) for a in accs] + [0]
        min_flip = [None] * standing[-2] + [e for i, e in reversed(list(enumerate(grid[1:], 1)))
                                            for _ in range(standing[i - 1] - standing[i])]
        min_flip += [0.0] * (100 - len(min_flip))
        return {"curve": curve.to_dict(), "n": 100, "members": [{"seed": 0}], "per_point": {"min_flip": min_flip}}

    t = TableRun("table1", "tiny", [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"], "off")
    monkeypatch.setattr(t, "evaluate_row", fake_row)
    trained = []
    monkeypatch.setattr(t, "train", lambda jobs, comps: trained.extend(jobs) or [f"alpha={a} seed={s}" for a, s in jobs])
    filled = table1.fill(t)
    # the chosen alpha's seed blocks (and claim (5)'s single models) trained once the choice is made
    assert {(0.3, s) for s in range(4)} <= set(trained) and {(0.4, 0), (0.4, 1)} <= set(trained)
    first_test = next(i for i, c in enumerate(calls) if c[0] == "test")
    assert all(c[0] == "val" for c in calls[:first_test]) and all(c[0] == "test" for c in calls[first_test:])
    assert calls[:first_test] == [("val", "0.5", "1"), ("val", "0.25", "2"), ("val", "0.3", "2")]  # stops at the match
    labels = [r["model"] for r in filled.rows]
    assert "Robust model eps=0.3" in labels and "2-Robust eps=0.3" in labels
    assert filled.notes[0].startswith("alpha=0.3 chosen on the validation split among [0.25, 0.3, 0.4]")
    with pytest.raises(Exception, match="at least three alphas"):
        monkeypatch.setattr(t.s, "alpha_candidates", [0.25, 0.3])
        table1.fill(t)


def test_estimate_takes_the_reference_of_its_threads_and_places_the_jobs_on_the_slots_run_at_once(tmp_path, capsys):
    from robust_ensembles.evaluation.records import this_device
    ref = lambda threads, fit: (f"{{device: '{this_device()}', measured: 'a test with {threads} thread(s)', "
                                f"threads: {threads}, fit_seconds: {{natural: {fit}, adversarial: {2 * fit}, composite: "
                                f"{3 * fit}}}, seconds_per_member_point: {{curve: 0.5, autoattack: 1.0}}}}")
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store", f"+reference_costs=[{ref(2, 10)},{ref(1, 12)}]"]
    lines = {}
    for threads in (1, 2):
        driver.run("all", "tiny", [*over, f"threads={threads}"], estimate=True)
        lines[threads] = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("all (tiny)"))
    # 1 natural, 13 adversarial (Table 1's chosen alpha's second seed block included), 2 composites:
    # 10 + 260 + 60 s with 2 threads, 12 + 312 + 72 s with 1
    assert "about 0.09 h of training" in lines[2] and "adversarial 0.3 min, reference of a test with 2 thread(s)" in lines[2]
    assert "about 0.11 h of training" in lines[1] and "adversarial 0.4 min, reference of a test with 1 thread(s)" in lines[1]
    driver.run("all", "tiny", [*over, "threads=3"], estimate=True)  # no reference with 3 threads: none taken
    assert "no natural or adversarial or composite job of this setup has run yet" in capsys.readouterr().out
    assert estimate.total_text(7200, 3600) == "; in all about 3.00 h"
    queued = " (each multirun's jobs start as slots free and it ends with its last)"
    assert estimate.total_text(3600, 3600, 2) == "; in all about 2.00 h with 2 training jobs at a time" + queued
    assert estimate.total_text(3600, 1800, 2, 2) == ("; in all about 1.50 h with 2 training jobs at a time and 2 "
                                                   "evaluation jobs at a time" + queued)
    assert estimate.total_text(0, 3600, 2) == "; in all about 1.00 h"   # nothing to train: nothing spread


def test_a_multirun_lasts_until_its_last_job_and_evaluation_jobs_start_longest_first():
    """makespan: each job starts on the first free slot in launch order, one slot is the sum. Evaluation
    jobs (one per missing curve, with its AutoAttack record) are launched longest first: two slots finish
    8 units of work in 4, where the long job last and alone (as sorted overrides launched it) took 6."""
    from types import SimpleNamespace as NS

    from robust_ensembles.evaluation.records import AUTOATTACK, CURVE

    assert estimate.makespan([3, 3, 3], 1) == 9 and estimate.makespan([], 2) == 0
    assert estimate.makespan([1, 1, 2, 5], 2) == 6   # 1 | 1, then 2 after a 1, then 5 after the other 1
    assert estimate.makespan([1, 1, 1, 1, 4], 2) == 6 and estimate.makespan([4, 1, 1, 1, 1], 2) == 4

    def row(key, split, curve=None, aa=None):
        costs = {**({CURVE: (curve, None)} if curve is not None else {}),
                 **({AUTOATTACK: (aa, "autoattack (reference of a test)")} if aa is not None else {})}
        return {"curve_key": key, "curve_missing": curve is not None, "autoattack_key": f"aa-{key}",
                "autoattack_todo": aa is not None,
                "autoattack_missing": aa is not None, "costs": costs, "overrides": [f"row={key}"],
                "cfg": NS(evaluation=NS(split=split))}

    plan = [row("a", "test", 1), row("b", "test", 1), row("c", "test", 1), row("d", "test", 1), row("e", "test", 3),
            row("e", "test", 3, aa=1),          # the same curve, with its AutoAttack record: one job of 4
            row("f", "test"),                   # nothing missing: no job
            row("v", "val", 2)]
    jobs = estimate.evaluation_job_list(plan, "test")
    assert [(j["overrides"], j["seconds"]) for j in jobs] == [(["row=e"], 4), (["row=a"], 1), (["row=b"], 1),
                                                              (["row=c"], 1), (["row=d"], 1)]
    assert [j["overrides"] for j in estimate.evaluation_job_list(plan, "val")] == [["row=v"]]
    text, wall = estimate.estimate_evaluation(NS(), plan, slots=2)
    assert wall == 2 + 4   # validation (2, alone), then test: e | a b c d
    assert estimate.estimate_evaluation(NS(), plan)[1] == 2 + 8
    assert "about 0.00 h" in text and "where none is stored yet: autoattack (reference of a test)" in text
    # a second AutoAttack record of curve e: the job carries one, the other is computed afterwards, alone
    second = {**row("e", "test", 3, aa=5), "autoattack_key": "aa-e2"}
    assert estimate.estimate_evaluation(NS(), [*plan, second], slots=2)[1] == 2 + (3 + 5) + 1
    # training: one multirun per distinct seed list (alpha outer, as Hydra's sweeper launches them)
    assert launch.multirun_groups([(0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1), (0.0, 0)]) == [([0.25, 0.5], [0, 1]),
                                                                                            ([0.0], [0])]


def test_a_cpu_measurement_counts_only_for_its_own_threads_and_a_gpus_for_any():
    from robust_ensembles.core.job_setup import measured_with
    assert measured_with(1, {"device": "cpu", "threads": 1}) and not measured_with(2, {"device": "cpu", "threads": 1})
    assert measured_with(torch.get_num_threads(), {"device": "cpu"})   # before threads were recorded: the default
    assert not measured_with(torch.get_num_threads() + 1, {"fit_seconds": 5.0})
    assert measured_with(1, {"device": "NVIDIA H200", "threads": 4})


def test_an_unknown_launcher_is_refused_before_anything_runs(tmp_path):
    assert launch.parallel_jobs([]) == 1
    with pytest.raises(ConfigError, match=r"launcher overrides \['hydra/launcher=nope'\]: .*Could not find"):
        driver.run("all", "tiny", [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"],
                   launcher=["hydra/launcher=nope"])
    assert not (tmp_path / "store").exists()


def test_estimate_from_an_empty_store_uses_the_presets_reference_costs_and_says_so(tmp_path, capsys):
    from robust_ensembles.evaluation.records import this_device
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store",
            f"+reference_costs={{device: '{this_device()}', measured: 'a test', fit_seconds: {{natural: 10, adversarial: 20, "
            "composite: 30}, seconds_per_member_point: {curve: 0.5, autoattack: 1.0}}"]
    driver.run("all", "tiny", over[:2], estimate=True)
    assert "no natural or adversarial or composite job of this setup has run yet" in capsys.readouterr().out
    driver.run("all", "tiny", over, estimate=True)
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("all (tiny)"))
    # 1 natural, 13 adversarial (alpha=0.05 seed 0, 3 alphas x 2 seeds, 4 seeds at 0.5, and the second seed block
    # of Table 1's chosen alpha, planned at the smallest candidate), 2 composites: 10 + 260 + 60 s
    assert "14 distinct training jobs and 2 composites missing; about 0.09 h of training" in line
    assert "natural 0.2 min, reference of a test" in line and "composite 0.5 min, reference of a test" in line
    # nothing stored to cost an evaluation from: the reference figures alone, said so
    assert ("h at the preset's reference cost per member and point: autoattack (reference of a test), curve "
            "(reference of a test)") in line and "stored records" not in line
    train_h = float(re.search(r"about ([\d.]+) h of training", line).group(1))
    eval_h = float(re.search(r"about ([\d.]+) h at the preset's reference cost", line).group(1))
    assert eval_h > 0 and float(re.search(r"in all about ([\d.]+) h", line).group(1)) == pytest.approx(
        train_h + eval_h, abs=0.011)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))  # nothing written


def test_paper_scale_estimate_on_an_empty_store_prints_gpu_hours_from_the_presets_gpu_reference(tmp_path, capsys):
    """The paper preset's reference costs are a GPU's (device: gpu): planned from a machine without one,
    training and evaluation of every table come out in GPU-hours, each part and the total."""
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    driver.run("all", "paper", over, estimate=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["table1", "table2_equivalence", "table2_size", "all"]
    for line in lines:
        train_h = float(re.search(r"about ([\d.]+) GPU-h of training", line).group(1))
        eval_h = float(re.search(r"about ([\d.]+) GPU-h at the", line).group(1))
        total = float(re.search(r"in all about ([\d.]+) GPU-h", line).group(1))
        assert train_h > 0 and eval_h > 0 and total == pytest.approx(train_h + eval_h, abs=0.011)
        assert "reference of an NVIDIA H200, scaled" in line and " h " not in line
        assert "GPU-h at the preset's reference cost per member and point" in line  # nothing stored to cost from
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))  # nothing written


def test_committed_reports_name_no_folder_of_the_machine_that_wrote_them():
    """What a user reads names the command they type, never a store or checkout path of another machine."""
    from robust_ensembles import PROJECT_ROOT
    machine = re.compile(r"(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\)")
    found = [f"{p.relative_to(PROJECT_ROOT)}: {m.group(0)}" for p in (PROJECT_ROOT / "reports").rglob("*")
             if p.is_file() and p.suffix in (".md", ".json", ".csv", ".tex") for m in [machine.search(p.read_text())] if m]
    assert not found, found


def test_value_overrides_compose_as_hydra_composes_them(tmp_path):
    """compose_config applies value overrides to the composition of the others: the same config as Hydra's own
    composition of all of them, for scalars, lists, null, dicts (merged), interpolations, and a group chosen
    beside them; a key the config lacks falls back to Hydra and is named."""
    base = ["experiment=tiny", f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    for overrides in (["alpha=0.3", "K=2", "seeds=[2,3]"], ["evaluation.eps_grid=[0]", "evaluation.auc_eps=null"],
                      ["evaluation.autoattack={eps: 0.5}", "members=composite", "composite=paper_b"],
                      ["alpha=${evaluation.auc_eps}", "evaluation.attack.steps=3"],
                      ["evaluation.attack.steps=2", "++evaluation.attack.steps=5"]):  # Hydra's order for ++
        fast = compose.compose_config("tables", [*base, *overrides])
        full = compose._compose("tables", [*base, *overrides], False)
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(full), overrides
    groups, values = compose.split_overrides(["members=composite", "alpha=0.5", "+x=1", "hydra/launcher=ray_cpu"])
    assert groups == ["members=composite", "+x=1", "hydra/launcher=ray_cpu"] and values == [("alpha", 0.5)]
    with pytest.raises(ConfigError, match="no_such_key"):
        compose.compose_config("tables", [*base, "evaluation.no_such_key=1"])


def test_a_chosen_alpha_without_candidates_is_one_error_before_anything_trains(tmp_path, monkeypatch):
    t = TableRun("table1", "tiny", [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"], "off")
    monkeypatch.setattr(t.s, "alpha_candidates", None)
    with pytest.raises(ConfigError, match="a row has alpha: chosen but the scale lists no alpha_candidates"):
        t.needs()


def test_the_choice_note_says_which_rule_chose_alpha():
    """The footer names the rule that applied: the smallest matching candidate, or the largest when none matched."""
    from types import SimpleNamespace as NS

    from robust_ensembles.tables.table1 import choice_note
    t = NS(s=NS(K=4, alpha_candidates=[0.3, 0.22, 0.25]), spec=NS(target_eps=0.5))
    assert "the smallest whose 4-ensemble is at least as accurate" in choice_note(t, 0.22)
    none = choice_note(t, 0.3, matched=False)
    assert "the largest, as none of their 4-ensembles was as accurate" in none and "the smallest" not in none


def test_reports_call_a_tree_dirty_only_for_changes_to_what_makes_the_numbers(tmp_path, monkeypatch):
    """A measurement written into docs/ (or a report into reports/) leaves the tree clean; a change to the package,
    its configs or sweeps does not."""
    from robust_ensembles.tables import reports

    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True)
    (tmp_path / "robust_ensembles").mkdir()
    (tmp_path / "robust_ensembles" / "m.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    monkeypatch.setattr(reports, "PROJECT_ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "bench.md.partial").write_text("a measurement being written\n")
    assert reports.written_by()["clean"] is True
    (tmp_path / "robust_ensembles" / "m.py").write_text("x = 2\n")
    assert reports.written_by()["clean"] is False
