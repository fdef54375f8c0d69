"""Every entry point, run as a user runs it (`python -m ...`): bad input is one line and status 2,
and a multirun with a failing job finishes the others and ends with a one-line summary."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.core.cli import EXIT_USER_ERROR
from tests.conftest import TINY, run_module

# one bad input per entry point, as a user types it: (module and overrides, what the one line must say)
BAD_INPUTS = [
    (["robust_ensembles.train", "alpha=-0.1", *TINY[:4]], "alpha=-0.1 must be a number >= 0"),
    (["robust_ensembles.evaluate", "alpha=0.1", "K=999", *TINY[:4]], "K=999 needs 999 trained members"),
    (["robust_ensembles.finetune", "composite.robust.alpha=0.3", *TINY[:4]],
     "composite.robust: no trained backbone at alpha=0.3"),
    (["robust_ensembles.tables", "table=tabel1", "scale=tiny"], "table=tabel1: no sweep"),
    (["robust_ensembles.bench", "bench.mode=gpu_epoch"], "bench.mode=gpu_epoch measures a GPU"),
]


def _run(args, tmp_path, env=None):
    if args[0] == "make":  # a Makefile target, as a user types it, its ARGS last
        return subprocess.run([*args[:-1], f"{args[-1]} paths.root_dir={tmp_path} paths.store_dir={tmp_path}/store",
                               f"PYTHON={sys.executable}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    overrides, flags = (args[:args.index("--cfg")], args[args.index("--cfg"):]) if "--cfg" in args else (args, [])
    return run_module([*overrides, f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store", *flags],
                      env_extra=env)


def _one_error_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# every interpreter these tests start (about 7 s each, mostly imports), run two at a time on two cores
RUNS = {
    **{f"bad{i}": (args, None) for i, (args, _) in enumerate(BAD_INPUTS)},
    "multirun": (["robust_ensembles.train", "-m", "alpha=-1,0.1,0.2", *TINY], None),
    # every Makefile variable, and an override only the evaluation knows (it must not reach training)
    "make": (["make", "table2-size", "SCALE=tiny", "ESTIMATE=1", "AUTOATTACK=stored", "ARGS=evaluation.batch_size=100"],
             None),
    "cfg_job": (["robust_ensembles.tables", "table=table2_size", "scale=tiny", "--cfg", "job"], None),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry_points")
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(_run, args, root / name, env) for name, (args, env) in RUNS.items()}
        return {name: (f.result(), root / name) for name, f in futures.items()}


def test_bad_input_is_one_line_and_status_2_from_every_entry_point(ran):
    for i, (args, message) in enumerate(BAD_INPUTS):
        out, _ = ran[f"bad{i}"]
        errors = _one_error_line(out.stderr)
        assert out.returncode == EXIT_USER_ERROR, (args, out.stderr[-2000:])
        assert len(errors) == 1 and message in errors[0], (args, out.stderr[-2000:])
        assert "Traceback" not in out.stdout + out.stderr and "Error executing job" not in out.stderr, args


@pytest.mark.parametrize("task,overrides,message", [
    ("train", ["alpha=abc"], "alpha='abc' must be a number >= 0"),
    ("train", ["alpha=0.1", "data=cifar10_jpeg", "data.root=/nonexistent/cifar.tar.gz"],
     "CIFAR-10 not found: /nonexistent/cifar.tar.gz does not exist"),
    ("train", ["alpha=0.1", "data=cifar10_jpeg", "data.root={corrupt}"], "is corrupt"),
    ("train", ["alpha=0.1", "data.root=/my/cifar"],
     "data.root='/my/cifar' is set (on the command line or in conf/local/default.yaml), but data.source=synthetic"),
    ("evaluate", ["K=0"], "K=0 must be an integer >= 1"),
    ("evaluate", ["members=composite", "K=4"], "K=4 set, but members.kind=composites"),
    ("evaluate", ["members=paper_composites", "seeds=[0,1]"], "seeds=[0, 1] set, but members.kind=composites"),
    # refused by a constructor inside hydra's instantiate (wrapped in an InstantiationException there)
    ("evaluate", ["evaluation.attack.target_classes=-2"], "evaluation.attack.target_classes=-2 must be an integer >= 0"),
    ("train", ["attack.steps=0"], "attack.steps=0 must be an integer >= 1"),
    ("finetune", ["composite.eps=-0.4"], "composite.eps=-0.4 must be a number >= 0"),
    ("tables", ["scale=tiny"], "table is not set; name one: table=<one of ['table1',"),
    ("tables", ["table=table1", "scale=tiny", "train=maybe"], "train='maybe' must be true or false."),
    ("recommend", ["target_eps=-1"], "target_eps=-1 must be a number > 0"),
    ("recommend", ["target_eps=0.5", "search.margin=-0.1"], "search.margin=-0.1 must be >= 0"),
    ("recommend", ["target_eps=0.5", "evaluate_in=jobs"], "evaluate_in=jobs is not used by recommend"),
    ("evaluate_row", ["rows_file=/nonexistent.json", "row=0"], "rows_file=/nonexistent.json does not exist"),
])
def test_every_user_error_is_reported_the_same_way(tmp_path, capsys, task, overrides, message):
    """The entry points' task functions, wrapped as `cli.main` wraps them, on more bad inputs."""
    from robust_ensembles.core import cli
    from robust_ensembles.evaluate import evaluate
    from robust_ensembles.finetune import finetune
    from robust_ensembles.train import train
    from tests.conftest import compose_train

    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"not an archive")
    overrides = [o.format(corrupt=corrupt) for o in overrides]
    from robust_ensembles.recommend.recommender import recommend
    from robust_ensembles.tables.__main__ import tables
    from robust_ensembles.tables.evaluate_row import evaluate_row

    cfg = compose_train([*(TINY if task != "evaluate_row" else []), *overrides], tmp_path, config_name=task)
    fn = {"train": train, "evaluate": evaluate, "finetune": finetune, "tables": tables, "evaluate_row": evaluate_row,
          "recommend": lambda c: recommend(c, [f"paths.root_dir={tmp_path}", f"paths.store_dir={tmp_path}/store",
                                               *overrides])}[task]
    with pytest.raises(SystemExit) as exit_:
        cli.reporting_user_errors(fn)(cfg)
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert _one_error_line(err) == err.strip().splitlines()[-1:] and message in err


def test_hydra_full_error_still_shows_the_traceback(tmp_path, monkeypatch, capsys):
    """With HYDRA_FULL_ERROR=1 the error is re-raised, and Hydra prints it with its traceback."""
    from robust_ensembles.core import cli
    from robust_ensembles.core.errors import ConfigError
    from robust_ensembles.train import train
    from tests.conftest import compose_train

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="alpha=-0.1 must be a number >= 0"):
        cli.reporting_user_errors(train)(compose_train([*TINY, "alpha=-0.1"], tmp_path))
    assert "error:" not in capsys.readouterr().err


def test_a_multirun_with_a_failing_job_finishes_the_others_and_says_which_failed(ran):
    out, root = ran["multirun"]
    log = out.stdout + out.stderr
    assert out.returncode == 1, log[-3000:]
    assert log.count("error: alpha=-1 must be a number >= 0") == 1
    summary = [line for line in out.stderr.splitlines() if "job(s) of this multirun failed" in line]
    assert len(summary) == 1 and summary[0].startswith("error: 1 job(s)") and "alpha=-1" in summary[0]
    assert len(list((root / "store").glob("*/COMPLETE"))) == 2  # the jobs after the failing one ran
    assert "Traceback" not in log


def test_the_table_command_follows_hydra_conventions(ran):
    out, _ = ran["cfg_job"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert "table: table2_size" in out.stdout and "evaluation:" in out.stdout and "sweeps_dir:" in out.stdout


def test_a_makefile_table_target_runs_with_all_its_variables(ran):
    out, _ = ran["make"]
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "table2_size (tiny): 4 training jobs and 0 composites missing" in out.stdout  # K up to 4: seeds 0-3 at 0.5
