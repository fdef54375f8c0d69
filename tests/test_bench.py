"""The benchmark runs end to end at smoke sizes (speed itself is measured by `make bench`, not here)."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
from hydra import compose, initialize_config_dir

from robust_ensembles import CONFIG_DIR
from robust_ensembles.bench.modes import bench
from robust_ensembles.core.errors import ConfigError

SMOKE = ["bench.batch_size=8", "bench.image_size=16", "bench.steps=[1,2]", "bench.repeats=2", "bench.warmup=1",
         "bench.inner=1", "bench.accuracy_source=synthetic", "bench.accuracy_n=16", "bench.ensemble_k=2",
         "bench.ensemble_batch=8", "model.width=4", "bench.device=cpu", "bench.cpu_jobs.processes=0"]


def compose_bench(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("bench", overrides=[*SMOKE, *overrides, f"paths.root_dir={tmp_path}"])


def test_ratio_table_is_produced_with_finite_ratios(tmp_path, capsys):
    out = tmp_path / "perf.md"
    rep = bench(compose_bench(tmp_path, f"bench.output={out}", "bench.torchattacks=false"))
    names = [r[0] for r in rep.rows]
    assert any(n.startswith("1. PGD-1") for n in names) and any(n.startswith("1. PGD-2") for n in names)
    assert any(n.startswith("2. common") for n in names) and not any(n.startswith("3.") for n in names)
    assert sum(n.startswith("4. K=2") for n in names) == 2
    assert all(math.isfinite(v) and v > 0 for r in rep.rows for v in r[1:4])
    assert any("fastest ensemble path" in n for n in rep.notes)
    text = out.read_text()
    assert "| measurement | median | min | max |" in text and "device: CPU" in text
    assert "| measurement" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("torchattacks") is None,
                    reason="needs torchattacks, the bench's baseline: make bench-deps (CI installs it)")
def test_torchattacks_comparison_gives_a_ratio_and_both_accuracies(tmp_path):
    rep = bench(compose_bench(tmp_path, "bench.torchattacks=true"))
    rows = [r for r in rep.rows if r[0].startswith("3. torchattacks")]
    assert len(rows) == 1 and all(math.isfinite(v) and v > 0 for v in rows[0][1:4])
    [note] = [n for n in rep.notes if n.startswith("3. accuracy")]
    assert "ours" in note and "torchattacks" in note and "1 SE" in note


GPU_EPOCH_SMOKE = ["bench.mode=gpu_epoch", "bench.allow_cpu=true", "bench.gpu_epoch.n_images=32",
                   "bench.gpu_epoch.batch_size=16", "bench.gpu_epoch.repeats=1", "bench.gpu_epoch.bf16=false"]


def test_gpu_epoch_logic_runs_on_the_cpu_at_small_size(tmp_path):
    rep = bench(compose_bench(tmp_path, *GPU_EPOCH_SMOKE, "bench.gpu_epoch.compile_modes=[]", "bench.gpu_epoch.processes=[]"))
    rows = {r[0]: r for r in rep.rows}
    assert rows["PGD-7 epoch / clean epoch (32 images, batch 16), eager"][1] > 0  # a ratio, not a timing bar (tiny sizes)
    eager = rows["PGD-7 epoch seconds, eager"]
    g = compose_bench(tmp_path).bench.gpu_epoch
    bar = g.target_s * rows["clean epoch seconds, eager"][1] / g.reference_clean_epoch_s
    assert "x clean epoch" in eager[4] and eager[5] == (eager[1] <= bar)
    assert rep.notes == ["fastest epoch: eager (module.compile=false)"]


@pytest.mark.slow
def test_gpu_epoch_compiles_each_mode_reports_a_failed_one_and_runs_seeds_side_by_side_on_the_cpu(tmp_path):
    """On the CPU (where torch skips CUDA graphs) each compile mode still trains; a bad mode is a line in the
    report, not a crash; two training processes share the device (about 1x on 2 cores, by construction)."""
    rep = bench(compose_bench(tmp_path, *GPU_EPOCH_SMOKE, "bench.gpu_epoch.compile_modes=[reduce-overhead,bogus]",
                              "bench.gpu_epoch.processes=[2]", "bench.gpu_epoch.process_epochs=1",
                              "bench.gpu_epoch.process_threads=1", "bench.threads=1"))
    names = [r[0] for r in rep.rows]
    assert "PGD-7 epoch seconds, compile reduce-overhead" in names and "  compile reduce-overhead / eager (alternating)" in names
    assert any(n.startswith("compile reduce-overhead: first epoch (compiling)") for n in rep.notes)
    assert any(n.startswith("compile bogus: **failed** (ConfigError: module.compile='bogus'") for n in rep.notes)
    [share] = [r for r in rep.rows if r[0].startswith("images/s, 2 seeds' processes")]
    assert share[1] > 0 and share[5] == (share[1] >= 1.8)


@pytest.mark.slow
def test_ratio_table_measures_one_thread_processes_together_against_one_alone_on_the_cpu(tmp_path):
    rep = bench(compose_bench(tmp_path, "bench.torchattacks=false", "bench.cpu_jobs.processes=2",
                              "bench.cpu_jobs.epoch.n_images=32", "bench.cpu_jobs.epoch.batch_size=8",
                              "bench.cpu_jobs.epoch.image_size=16", "bench.cpu_jobs.model.width=4", "bench.threads=2"))
    [row] = [r for r in rep.rows if r[0].startswith("5. 2 one-thread training processes / one 2-thread process")]
    assert row[1] > 0 and row[4] == ">= 1.2" and row[5] == (row[1] >= 1.2)
    assert any(n.startswith("5. images/s: one 2-thread process") for n in rep.notes)


def test_the_cpu_jobs_row_measures_the_cpu_presets_model_and_training_step(tmp_path):
    from tests.conftest import compose_train
    j, cpu = compose_bench(tmp_path).bench.cpu_jobs, compose_train(["experiment=cpu", "alpha=0.5"], tmp_path)
    assert all(cpu.model[k] == v for k, v in j.model.items())
    assert (j.epoch.batch_size, j.epoch.steps, j.epoch.eps, j.epoch.lr, j.epoch.nesterov, j.epoch.crop_padding) == (
        cpu.data.batch_size, cpu.attack.steps, cpu.alpha, cpu.module.optimizer.lr, cpu.module.optimizer.nesterov,
        cpu.data.augment.crop_padding)


def test_profile_mode_reports_where_the_time_goes(tmp_path):
    rep = bench(compose_bench(tmp_path, "bench.mode=profile", "bench.profile.calls=1", "bench.profile.row_limit=3"))
    names = [r[0] for r in rep.rows]
    assert names == ["profile: PGD-2 attack / clean step", "profile: one attack step / clean step"]
    assert rep.rows[0][1] > 0
    clean, attack = rep.notes
    assert clean.startswith("clean training step") and attack.startswith("PGD-2 attack only")
    assert "aten::" in clean and "aten::" in attack and "Self CPU" in attack  # the profiler's op tables


def test_gpu_epoch_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        bench(compose_bench(tmp_path, "bench.mode=gpu_epoch", "bench.device=auto"))


def test_alpha_search_mode_counts_models_per_strategy_and_finds_every_answer(tmp_path):
    rep = bench(compose_bench(tmp_path, "bench.mode=alpha_search", "bench.alpha_search.optuna=false",
                              "bench.alpha_search.crossings=[0.2,0.33]", "bench.alpha_search.slopes=[0.4]"))
    names = [r[0] for r in rep.rows]
    assert names == ["models trained, interpolate (K=4, 2 stand-in stores)", "models trained, bisect (K=4, 2 stand-in stores)"]
    assert all(r[4].endswith("missed the answer in 0 of 2") for r in rep.rows)
    assert all(r[2] >= 8 for r in rep.rows)  # at least the bracket's two ends (4 seeds each)


def test_eval_attacks_mode_compares_with_autoattack_point_by_point(tmp_path, monkeypatch):
    from robust_ensembles.train import train
    from tests.conftest import compose_train

    train(compose_train(["experiment=tiny", "alpha=0.25", "seed=0"], tmp_path))
    cfg = compose_bench(tmp_path, "bench.mode=eval_attacks", "bench.eval_attacks.n=16",
                        "bench.eval_attacks.compute_autoattack=true")
    e = cfg.bench.eval_attacks
    e.scale = "tiny"  # Table 1's tiny rows: experiment=tiny, its radius grid and a cheap custom AutoAttack
    e.overrides = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store", "logger=none"]
    e.rows = [["alpha=0.25", "K=1"]]
    e.autoattack_n = None  # AutoAttack's points: all 16
    e.baseline = ["evaluation.attack.target_classes=0", "evaluation.search=scan"]  # (the tiny rows set APGD-only keys: no PGD baseline here)
    e.reference = ["evaluation.search=scan"]  # the tiny rows' evaluation attack, scanning the grid
    e.candidates = {"apgd2": ["evaluation.attack.steps=2", "evaluation.attack.target_classes=1",
                              "evaluation.attack.targeted_steps=2", "evaluation.search=scan"],
                    "bisect": ["evaluation.search=bisect"],
                    "warm": ["evaluation.search=probe_bisect", "evaluation.warm_start=true"],
                    "guided": []}  # the tables' default search
    # a hand-made AutoAttack record: it flips the first 4 points and no other
    from robust_ensembles.evaluation import records
    monkeypatch.setattr(records, "autoattack_record", lambda *a, **k: {
        "autoattack_correct": [0] * 4 + [1] * 12, "autoattack_acc": 12 / 16})
    rep = bench(cfg)
    assert [r[0] for r in rep.rows] == [f"{c}: time / baseline over rows" for c in ("apgd2", "bisect", "warm", "guided")]
    assert all(math.isfinite(r[1]) and r[1] > 0 for r in rep.rows)
    table = [line for line in rep.notes[0].splitlines() if line.startswith("| alpha=0.25")]
    assert len(table) == 6  # the baseline, the reference and the candidates, on the same 16 points
    assert [line.split("|")[3].strip() for line in table] == ["scan", "scan", "scan", "bisect", "probe_bisect warm",
                                                              "guided x1"]
    for line in table[2:]:  # each candidate against the reference at every radius, point by point
        ref_gap, differ = line.split("|")[9].strip(), int(line.split("|")[10])
        assert " at " in ref_gap and 0 <= float(ref_gap.split()[0]) <= 100 and 0 <= differ <= 16
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")[:1] + line.strip("|").split("|")[2:]]
        acc, aa, gap, aa_only, ours_only = float(cells[2]), float(cells[3]), float(cells[4]), int(cells[5]), int(cells[6])
        assert aa == 75.0 and gap == pytest.approx(acc - aa, abs=0.011)
        ours = round(acc * 16 / 100)  # points the attack left standing
        # AutoAttack flipped exactly points 0-3: standing under the attack there = flipped by AA only
        assert ours_only <= 12 and aa_only <= 4 and ours - aa_only == 12 - ours_only


def test_eval_attacks_mode_refuses_more_autoattack_points_than_curve_points(tmp_path):
    """AutoAttack's points are the first of the curve's: a record on more points than the curves attack is
    refused with one line, before any model is loaded."""
    cfg = compose_bench(tmp_path, "bench.mode=eval_attacks", "bench.eval_attacks.n=16",
                        "bench.eval_attacks.autoattack_n=32")
    cfg.bench.eval_attacks.scale = "tiny"
    cfg.bench.eval_attacks.overrides = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    with pytest.raises(ConfigError, match="bench.eval_attacks.autoattack_n=32 must be between 1 and bench.eval_attacks.n=16"):
        bench(cfg)


def test_precision_mode_compares_each_precision_with_fp32_on_the_same_points(tmp_path):
    from robust_ensembles import store
    from robust_ensembles.evaluation.records import VERSIONS
    from robust_ensembles.train import train
    from tests.conftest import TINY, compose_train
    paths = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    train(compose_train([*TINY, "alpha=0.1", "seed=0"], tmp_path))
    row = [*TINY, "alpha=0.1", "K=1", *paths, "evaluation.attack.steps=2", "evaluation.attack.targeted_steps=2",
           "evaluation.attack.target_classes=1"]
    cfg = compose_bench(tmp_path, "bench.mode=precision", "bench.precision.eps=0.25")
    cfg.bench.precision.overrides = row
    rep = bench(cfg)
    [(name, est, _, _, target, met)] = rep.rows
    assert name.startswith("accuracy at 0.25: bf16-mixed - 32-true, points [") and "1 SE of 32-true" in target
    assert "|" not in name + target   # a Markdown table cell
    assert met == (abs(est) <= float(target.rsplit("= ", 1)[1]))
    records = store.records(f"{tmp_path}/store", "curve", VERSIONS["curve"])
    assert sorted(r["precision"] for r in records) == ["32-true", "bf16-mixed"]   # two records, keyed by precision
    assert len({r["n"] for r in records}) == 1 and len(rep.notes) == 2


def test_tables_eval_runs_each_setting_on_the_same_models_training_nothing_and_leaves_the_store_alone(
        tmp_path, monkeypatch, capsys):
    """bench.mode=tables_eval (make bench-tables-eval) on a miniature table: each setting's run starts from the
    store's trained models and AutoAttack records and no curve record, computes its curves, trains nothing,
    writes its reports to a scratch folder, and leaves the store it read as it was; the report compares the
    wall times and every table cell."""
    from robust_ensembles import store
    from robust_ensembles.evaluation.records import AUTOATTACK, VERSIONS
    from robust_ensembles.tables.table_run import TableRun
    from tests.test_tables import in_process, k_table

    sweeps = k_table(tmp_path, monkeypatch)
    source = tmp_path / "store"
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={source}"]
    trained = in_process(monkeypatch)
    TableRun("k_table", "tiny", over, "off", sweeps_dir=sweeps).train_missing()  # the models, no record
    assert len(trained) == 1
    store.put_record(source, AUTOATTACK, {"stand-in": 1}, VERSIONS[AUTOATTACK], {"wall_s": 7.0})  # kept, not recomputed
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    trained.clear()
    out = tmp_path / "tables-eval.md"
    rep = bench(compose_bench(tmp_path, "bench.mode=tables_eval", f"bench.output={out}", f"paths.store_dir={source}",
                              "bench.tables_eval.table=k_table", "bench.tables_eval.scale=tiny",
                              f"bench.tables_eval.sweeps_dir={sweeps}", "bench.tables_eval.launcher=[]",
                              "bench.tables_eval.evaluate_in=process", "bench.tables_eval.overrides=[]",
                              "bench.tables_eval.min_speedup=0.01"))
    assert trained == []  # nothing trained: the models are the store's
    [(name, med, lo, hi, target, met)] = rep.rows
    assert name == "tables' evaluation wall time, scan / guided" and med > 0 and med == lo == hi and met is True
    text = out.read_text()
    assert "from a store of the same trained models and 1 autoattack records (7 job-s when computed)" in text
    # each run computed the table's two curves itself, on a store of the same two models
    for setting in ("scan", "guided"):
        assert re.search(rf"- {setting} \(evaluation.search={setting}\): wall \d+ s \([\d.]+x the first\); 2 curve "
                         rf"records computed, \d+ job-s; 0 AutoAttack records computed, 0 job-s; 2 models\n", text), text
    # both runs' reports were read (in the scratch folder: reports_dir), cell by cell
    assert re.search(r"guided against scan: (\d+ of [1-9]\d* numeric table cells changed; the largest accuracy cell|"
                     r"none of [1-9]\d* numeric table cells changed)", text), text
    assert "guided against scan: 0 of 0 verdicts changed" in text and "not paired" not in text
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before  # the store it read: untouched
    assert not (tmp_path / "reports").exists()  # the reports went to the scratch folder, not <paths.root_dir>/reports
    assert not list(tmp_path.glob(".tables-eval-*"))  # and the scratch folder is gone

    with pytest.raises(ConfigError, match="holds no trained model"):
        bench(compose_bench(tmp_path, "bench.mode=tables_eval", f"paths.store_dir={tmp_path}/empty"))
    with pytest.raises(ConfigError, match="name at least two"):
        bench(compose_bench(tmp_path, "bench.mode=tables_eval", f"paths.store_dir={source}",
                            "~bench.tables_eval.settings.guided"))


def test_tables_eval_pairs_cells_by_position_and_claims_by_table_and_order(tmp_path):
    """A choice that came out otherwise (another row label, another claim text) is said, not dropped."""
    from robust_ensembles.bench.tables_eval import compare

    for run, (label, acc, auc, verdict) in {"a": ("Robust eps=0.3", "33.73 ± 1.50 (sd 0.34)", "0.461", "holds"),
                                            "b": ("Robust eps=0.25", "34.00 ± 1.50", "0.470", "inconclusive")}.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "t1.csv").write_text(f"model,eps=0.5,AUC(0.5),n\nNatural,1.90 ± 0.43,0.288,1000\n"
                                               f"{label},{acc},{auc},1000\n", encoding="utf-8")
        (tmp_path / run / "t1.claims.json").write_text(json.dumps({"claims": [
            {"claim": f"(1) 4-{label} is at least as robust", "verdict": verdict}]}))
    notes = compare("scan", "guided", tmp_path / "a", tmp_path / "b")
    assert notes[0] == ("guided against scan: 2 of 6 numeric table cells changed; the largest accuracy cell +0.27 "
                        "(t1 / Robust eps=0.3 / eps=0.5: 33.73 -> 34.00); AUC cell +0.009 (t1 / Robust eps=0.3 / "
                        "AUC(0.5): 0.461 -> 0.470)")
    assert "not paired: t1: row 'Robust eps=0.3' is 'Robust eps=0.25' in the other run" in notes[2]
    assert notes[3] == ("guided against scan: 1 of 1 verdicts changed: t1 #1 (1) 4-Robust eps=0.3 is at least as "
                        "robust: holds -> inconclusive (now: (1) 4-Robust eps=0.25 is at least as robust)")
