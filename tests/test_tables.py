"""Tables: the equivalence definition, the writers, the Makefile targets, and a miniature Table 1."""

from __future__ import annotations

import math
import subprocess

import pytest

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.sweep import TABLES, Sweep, main
from robust_ensembles.tables import equivalent_eps, write_table

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


def test_equivalent_eps_takes_the_last_crossing():
    # + - + -: ahead again at 0.75, behind at 1.0 -> crossing between 0.75 and 1.0
    value, _ = equivalent_eps(GRID, [0.6, 0.3, 0.35, 0.1], [0.5, 0.4, 0.3, 0.2])
    assert 0.75 < value < 1.0


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
def test_make_dry_run_shows_the_sweep_command(target, table):
    out = subprocess.run(["make", "-n", target, "SCALE=paper", "ESTIMATE=1", "ARGS=hydra/launcher=gpus"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert (f"-m robust_ensembles.sweep {table} --scale paper --autoattack run --estimate -- hydra/launcher=gpus"
            in out.stdout)
    tables = subprocess.run(["make", "-n", "tables", "AUTOATTACK=stored"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True).stdout
    assert "-m robust_ensembles.sweep all --scale cpu --autoattack stored" in tables


def test_sweeps_declare_what_they_need(tmp_path):
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    t1 = Sweep("table1", "cpu", over)
    assert t1.seed_needs() == {0.0: 1, 0.05: 1, 0.25: 4, 0.3: 1, 0.4: 1, 0.5: 1}
    assert t1.composite_options() == ["paper", "paper_b"]
    assert Sweep("table2_size", "paper", over).seed_needs() == {0.5: 16}
    eq = Sweep("table2_equivalence", "cpu", over).seed_needs()
    assert eq[0.22] == 4 and eq[0.75] == 1 and eq[1.0] == 1 and eq[0.5] == 4
    jobs, comps = t1.missing()
    assert len(jobs) == 9 and comps == ["paper", "paper_b"]


def test_miniature_tables_end_to_end_autoattack_shared_and_reruns_train_nothing(tmp_path, capsys):
    """`all` trains the three tables' union once; the AutoAttack column can come later from the store,
    each distinct model attacked once however many tables show it; a rerun trains and attacks nothing."""
    over = [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store"]
    reports, records = tmp_path / "reports" / "tiny", tmp_path / "store" / "autoattack"
    tables = ["table1", "table2_size", "table2_equivalence"]

    assert main(["all", "--scale", "tiny", "--autoattack", "stored", "--", *over]) == 0
    out = capsys.readouterr().out
    assert "all tables: trained this run: 10 (" in out  # 8 models + 2 composites, each once
    for t in tables:
        assert f"{t}: trained this run: 0 (nothing)" in out
        md = (reports / f"{t}.md").read_text()
        assert "pending" in md and "AutoAttack column: pending" in md
    assert not records.exists()

    assert main(["all", "--scale", "tiny", "--", *over]) == 0
    out = capsys.readouterr().out
    assert "all tables: trained this run: 0 (nothing)" in out
    # 10 table rows, 3 of them the same model at the same eps on the same points: 7 AutoAttack records
    assert len(list(records.glob("*.json"))) == 7
    md = {t: (reports / f"{t}.md").read_text() for t in tables}
    for t in tables:
        assert "pending" not in md[t] and "AA eps=0.5" in md[t] and "records computed on cpu (" in md[t]
        for ext in ("csv", "tex", "png"):
            assert (reports / f"{t}.{ext}").is_file()
    for label in ["Natural model", "Robust model eps=0.25", "Robust model eps=0.5", "2-Robust eps=0.25",
                  "1-composite (0.4, 0.05)", "2X 1-composite weighted average", "AUC(0.5)", "validation"]:
        assert label in md["table1"]
    assert "single-robust-equivalent eps" in md["table2_equivalence"]
    assert "under AutoAttack at eps=0.5 on the same 8 points, the single model trained at 0.5" in md["table2_equivalence"]
    for t in ("table2_size", "table2_equivalence"):
        assert "| seeds |" in md[t].splitlines()[2] and "| 0,1 |" in md[t]  # the 2-model rows' seeds
    assert "PGD(eps=" not in md["table1"] and "PGD(norm=l2, steps=2," in md["table1"]  # radius is per call

    stamps = {p: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert main(["all", "--scale", "tiny", "--autoattack", "stored", "--", *over]) == 0
    assert "all tables: trained this run: 0 (nothing)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in records.glob("*.json")}  # nothing recomputed
    for t in tables:
        assert md[t].split("- written")[0] == (reports / f"{t}.md").read_text().split("- written")[0]

    # the equivalence plot shows, beside the ensembles' curves, each single model at its own eps: the
    # points the equivalent eps compares with; the table's AutoAttack records include the reference single
    filled = TABLES["table2_equivalence"](Sweep("table2_equivalence", "tiny", over, "stored"))
    [(label, points)] = filled.points.items()
    assert label.startswith("single model trained at e") and [e for e, _, _ in points] == [0.25, 0.5]
    for e, acc, se in points:
        assert f"{e:g}: {100 * acc:.2f}%" in md["table2_equivalence"] and 0 <= se < 0.5
    assert len(filled.autoattack) == 3 and list(filled.curves) == ["2x alpha=0.25", "2x alpha=0.5"]
