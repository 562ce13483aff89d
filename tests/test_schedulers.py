"""`--scheduler asha|median`: trials stopped early are kept as "stopped" in MLflow and Parquet
and never count as seeds of a verdict. Real Ray, real MLflow, real Parquet."""

from __future__ import annotations

import importlib

import mlflow
import pandas as pd
import pytest
from gap_records import study_records, trial
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
from study_procs import refused_line

import tunegap.runner.run as run_module
from tunegap import RunOptions, Study, run_study
from tunegap.analysis.cells import compute_cells
from tunegap.analysis.tables import build_tables, read_tables
from tunegap.names import OUTCOMES, STOPPED
from tunegap.runner.records import trial_outcome
from tunegap.runner.tuner import build_scheduler
from tunegap.study import StudyError


def stopped_record(tid, batch, seed, acc):
    record = trial(tid, batch, None, 0.0, 1.0, seed, acc)
    record["outcome"] = STOPPED
    record["history"] = record["history"][:1]  # stopped after its first of three epochs
    return record


def test_stopped_trials_are_no_seeds_of_their_cell():
    records = [
        *study_records(),
        stopped_record("lbs2", 1024, 2, 10.0),  # a stopped third seed of the plain large batch
        stopped_record("bs3", 32, 3, 10.0),  # and a stopped baseline seed
        stopped_record("only0", 2048, 0, 10.0),  # a cell with nothing but stopped trials
    ]
    records[-2]["is_baseline"] = True
    trials, _ = build_tables(records, study="s")
    assert (trials["outcome"] == STOPPED).sum() == 3
    cells = compute_cells(trials, margin=0.5)
    without = compute_cells(trials[trials["outcome"] != STOPPED], margin=0.5)
    plain = cells[(cells["batch_size"] == 1024) & cells["ghost_batch_size"].isna()
                  & (cells["lr_exponent"] == 0.0)].iloc[0]
    assert (plain["n_seeds"], plain["n_used"], plain["n_diverged"], plain["n_stopped"]) == (2, 2, 0, 1)
    assert plain["gap"] == pytest.approx(16.0)
    base = cells[cells["is_baseline"]].iloc[0]
    assert (base["n_seeds"], base["n_stopped"], base["baseline_n_seeds"]) == (3, 1, 3)
    only = cells[cells["batch_size"] == 2048].iloc[0]
    assert (only["n_seeds"], only["n_stopped"], only["verdict"]) == (0, 1, "inconclusive")
    # Every other number is what the same table without the stopped trials gives.
    shared = [c for c in without.columns if c != "n_stopped"]
    pd.testing.assert_frame_equal(cells[cells["batch_size"] != 2048][shared].reset_index(drop=True),
                                  without[shared])


def test_outcome_of_a_trial_the_scheduler_ended():
    assert STOPPED in OUTCOMES
    resolved = {"resolved_epochs": 4}
    assert trial_outcome("TERMINATED", [{"epoch": 1}, {"epoch": 2}], resolved) == STOPPED
    assert trial_outcome("TERMINATED", [{"epoch": 4}], resolved) == "completed"
    assert trial_outcome("TERMINATED", [{"epoch": 2, "diverged": True}], resolved) == "diverged"
    assert trial_outcome("ERROR", [{"epoch": 1}], resolved) == "error"


def test_schedulers_measure_time_in_updates():
    base = dict(name="s", workload="mnist1d-cnn", grid={"batch_size": (256,)})
    asha = build_scheduler(Study(**base, scheduler="asha", grace_updates=3, reduction_factor=3))
    assert isinstance(asha, ASHAScheduler)
    # Ray 2.60's schedulers expose none of their settings publicly: their own attributes are
    # the only way to see what tunegap built.
    assert (asha._time_attr, asha._metric, asha._mode) == ("updates", "test_acc", "max")
    assert asha._brackets[0]._rungs[-1][0] == 3 and asha._reduction_factor == 3
    median = build_scheduler(Study(**base, scheduler="median"))
    assert isinstance(median, MedianStoppingRule) and median._time_attr == "updates"
    assert build_scheduler(Study(**base)) is None
    assert Study(**base, scheduler="asha").describe()["scheduler"] == "asha"
    assert "scheduler" not in Study(**base).describe()


@pytest.mark.parametrize("kw, named", [
    ({"scheduler": "hyperband"}, "--scheduler 'hyperband' is not allowed"),
    ({"scheduler": "asha", "seeds": "auto"}, "--scheduler asha with --seeds auto"),
    ({"scheduler": "asha", "reduction_factor": 1}, "reduction_factor 1"),
    ({"scheduler": "median", "grace_updates": 0}, "grace_updates 0"),
])
def test_study_refuses_a_bad_scheduler(kw, named):
    with pytest.raises(StudyError, match=named):
        Study(name="s", workload="mnist1d-cnn", grid={"batch_size": (256,)}, **kw)


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(options):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(run_module, "init_ray", refuse)


@pytest.mark.parametrize("name, argv, named", [
    ("ghost_size", ["--scheduler", "asha", "--seeds", "auto"], "--scheduler asha with --seeds auto"),
    ("ghost_size", ["--scheduler", "median", "--seeds", "auto"], "--seeds auto"),
    ("frontier", ["--scheduler", "asha"], "--scheduler asha with --search frontier"),
    ("ghost_size", ["--scheduler", "hyperband"], "--scheduler"),
])
def test_scheduler_refusals_on_the_command_line(name, argv, named, tmp_path, no_ray, capsys):
    module = importlib.import_module(f"tunegap.studies.{name}")
    assert named in refused_line(module, argv, tmp_path, capsys)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_asha_stops_a_hopeless_trial_and_the_map_leaves_it_out(tmp_path, data_dir, ray_session):
    # One trial at B=256 learns; one at the same batch size with a learning rate of 1e-6
    # cannot, and is compared with the first at the same number of updates: ASHA stops it.
    study = Study(name="asha_check", workload="mnist1d-cnn", epochs=4, baseline_epochs=4,
                  grid={"batch_size": (256,)}, points=({"batch_size": 256, "base_lr": 1e-6},),
                  scheduler="asha", grace_updates=1, reduction_factor=2)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_study(study, options=RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=tracking_uri, device="cpu",
        data_dir=str(data_dir), quiet=True, max_concurrent=1, checkpoint_every=1))
    trials, _ = read_tables(outcome.run_dir)
    assert len(trials) == 3
    stopped = trials[trials["outcome"] == STOPPED]
    assert len(stopped) >= 1
    assert (stopped["epochs_done"] < stopped["resolved_epochs"]).all()
    hopeless = trials[trials["base_lr_override"] == 1e-6].iloc[0]
    assert hopeless["outcome"] == STOPPED
    # In MLflow too: the child run stays, tagged stopped.
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(hopeless["mlflow_run_id"])
    assert run.data.tags["outcome"] == STOPPED
    assert run.data.tags["tunegap.trial_id"] == hopeless["trial_id"]
    # In the map it is no seed.
    cells = outcome.cells
    cell = cells[cells["base_lr_override"] == 1e-6].iloc[0]
    assert (cell["n_seeds"], cell["n_used"], cell["n_stopped"]) == (0, 0, 1)
    assert cell["verdict"] == "inconclusive"
    assert cells["n_seeds"].sum() == (trials["outcome"] != STOPPED).sum()
    # Tune's own ResultGrid comes back with the outcome, one result per trial.
    grid = outcome.result_grid
    assert len(grid) == 3 and grid.num_errors == 0
    assert set(grid.get_dataframe()["trial_id"]) == set(trials["trial_id"])
