"""An Optuna search keeps its study in the run folder (optuna.db), which Optuna's own tools
open, and `--resume` continues that same study: real Optuna, real SQLite, real Ray."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from study_procs import HANG_S, kill_group, start, wait_for_epochs

from tunegap.analysis.tables import read_tables
from tunegap.runner.tuner import (
    OPTUNA_FILE,
    StoredOptunaSearch,
    optuna_storage_url,
    optuna_study_name,
)
from tunegap.studies import lr_scaling

SPACE = {"x": tune.uniform(0.0, 2.0)}


def searcher(db: Path) -> StoredOptunaSearch:
    search = StoredOptunaSearch(storage_url=f"sqlite:///{db}", study_name="s-run",
                                metric="test_acc", mode="max", seed=0,
                                points_to_evaluate=[{"x": 1.0}])
    search.set_search_properties(None, None, SPACE)
    return search


def stored_trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s-run", storage=f"sqlite:///{db}").get_trials()


def test_restored_searcher_continues_the_same_study_without_duplicates(tmp_path):
    db = tmp_path / OPTUNA_FILE
    first = searcher(db)
    assert first.suggest("t1") == {"x": 1.0}  # the queued first point
    first.suggest("t2")
    first.save(str(tmp_path / "searcher-state.pkl"))
    first.suggest("t3")  # asked after the last saved state: Tune never runs it
    first.on_trial_complete("t1", {"test_acc": 50.0, "epoch": 2, "resolved_epochs": 2})

    # What Tuner.restore does: set up the pickled searcher again, then load its state.
    resumed = searcher(db)
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    states = {t.number: t.state for t in stored_trials(db)}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.RUNNING, 2: TrialState.FAIL}

    # t2 was stopped by a scheduler after 1 of 2 epochs; t1 reports again after a restore.
    resumed.on_trial_result("t2", {"test_acc": 40.0, "training_iteration": 1})
    resumed.on_trial_complete("t2", {"test_acc": 40.0, "epoch": 1, "resolved_epochs": 2})
    resumed.on_trial_complete("t1", {"test_acc": 50.0, "epoch": 2, "resolved_epochs": 2})
    assert resumed.suggest("t4") != {"x": 1.0}
    trials = stored_trials(db)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.FAIL, TrialState.RUNNING]
    assert trials[0].value == 50.0
    assert sum(t.params == {"x": 1.0} for t in trials) == 1


def check_study_matches_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """Every Tune trial is one COMPLETE Optuna trial with its test accuracy, none open."""
    trials, _ = read_tables(run_dir)
    name = f"lr_scaling-{run_dir.name}"
    assert optuna.get_all_study_names(f"sqlite:///{run_dir / OPTUNA_FILE}") == [name]
    study = optuna.load_study(study_name=name, storage=optuna_storage_url(run_dir))
    stored = study.get_trials()
    complete = [t for t in stored if t.state == TrialState.COMPLETE]
    assert not [t for t in stored if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(complete) == len(trials)
    by_params = {(round(t.params["lr_exponent"], 9), t.params["batch_size"]): t.value
                 for t in complete}
    assert len(by_params) == len(complete)  # no trial told twice
    for row in trials.itertuples():
        value = by_params[(round(row.lr_exponent, 9), row.batch_size)]
        assert math.isclose(value, row.test_acc)
    return stored


@pytest.mark.slow
def test_optuna_search_leaves_a_study_optuna_opens(tmp_path, data_dir, ray_session):
    from tunegap import RunOptions, run_study

    args = lr_scaling.parser().parse_args(
        ["--search", "optuna", "--num-samples", "3", "--epochs", "1", "--baseline-epochs", "1", "--batch-sizes", "512"])
    study = lr_scaling.build(args)
    outcome = run_study(study, options=RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", data_dir=str(data_dir), quiet=True, max_concurrent=1))
    assert optuna_study_name(study, outcome.run_dir) == f"lr_scaling-{outcome.run_dir.name}"
    stored = check_study_matches_trials(outcome.run_dir)
    assert len(stored) == 3
    assert stored[0].params["batch_size"] == 32  # the baseline is Optuna's first point
    assert len(outcome.result_grid) == 3


def study_command(storage: Path, tracking_uri: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunegap.studies.lr_scaling", "--search", "optuna",
            "--num-samples", "4", "--epochs", "12", "--baseline-epochs", "12", "--batch-sizes", "256",
            "--max-concurrent", "1", "--storage-path", str(storage), "--tracking-uri",
            tracking_uri, "--device", "cpu", "--data-dir", str(data_dir),
            "--checkpoint-every", "2", "--quiet", *extra]


@pytest.mark.slow
def test_killed_optuna_study_resumes_the_same_optuna_study(tmp_path, data_dir):
    storage, tracking_uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    proc = start(study_command(storage, tracking_uri, data_dir), tmp_path / "first.log")
    # Past the first trial (12 epochs) and into the second.
    wait_for_epochs(proc, storage, 16, study="lr_scaling")
    kill_group(proc)
    resumed = subprocess.run(study_command(storage, tracking_uri, data_dir, "--resume"),
                             capture_output=True, text=True, timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run_dir,) = sorted((storage / "lr_scaling").glob("2*"))
    stored = check_study_matches_trials(run_dir)
    assert len([t for t in stored if t.state == TrialState.COMPLETE]) == 4
