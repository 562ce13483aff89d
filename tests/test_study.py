"""End-to-end: tiny real studies on local Ray, MLflow on a temp sqlite file, real Parquet."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest

from tunegap import RunOptions, Study, StudyError, run_study
from tunegap.analysis.tables import read_tables
from tunegap.studies import ghost_size
from tunegap.study import is_baseline

pytestmark = pytest.mark.slow


def options(tmp_path, data_dir, **kw):
    base = dict(storage_path=str(tmp_path / "results"),
                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", device="cpu",
                data_dir=str(data_dir), quiet=True, checkpoint_every=1)
    base.update(kw)
    return RunOptions(**base)


def child_runs(client, parent_id):
    exp_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def ghost_study(tmp_path_factory, data_dir, ray_session):
    tmp = tmp_path_factory.mktemp("ghost")
    study = Study(
        name="ghost_size", workload="mnist1d-cnn", epochs=2, baseline_epochs=2,
        grid={"batch_size": (512, 2048), "ghost_batch_size": (None, 64), "lr_exponent": (0.5,)},
        # A learning rate this large overflows the weights: the cell must show as diverged.
        points=({"batch_size": 1024, "base_lr": 1e6},),
        figures=ghost_size.figures,
    )
    outcome = run_study(study, options=options(tmp, data_dir))
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return study, outcome, client


def test_one_child_run_per_trial_under_the_parent(ghost_study):
    study, outcome, client = ghost_study
    parent = client.get_run(outcome.parent_run_id)
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == "tunegap/ghost_size"
    assert parent.info.status == "FINISHED"
    children = child_runs(client, outcome.parent_run_id)
    assert len(children) == len(study.trial_configs()) == len(outcome.trials) == 6
    ids = {r.data.tags["tunegap.trial_id"] for r in children}
    assert ids == set(outcome.trials["trial_id"])
    assert set(outcome.trials["mlflow_run_id"]) == {r.info.run_id for r in children}


def test_child_params_metrics_steps_and_outcomes(ghost_study):
    _, outcome, client = ghost_study
    by_run = outcome.trials.set_index("mlflow_run_id")
    for run in child_runs(client, outcome.parent_run_id):
        row = by_run.loc[run.info.run_id]
        p = run.data.params
        assert int(p["batch_size"]) == row["batch_size"]
        assert p["ghost_batch_size"] == ("0" if pd.isna(row["ghost_batch_size"])
                                         else str(int(row["ghost_batch_size"])))
        assert "resolved_lr" in p and float(p["resolved_lr"]) == pytest.approx(row["resolved_lr"])
        assert run.data.tags["outcome"] == row["outcome"]
        history = client.get_metric_history(run.info.run_id, "test_acc")
        epochs = outcome.epochs[outcome.epochs["trial_id"] == row["trial_id"]]
        # One point per epoch, logged at step = updates, equal to the Parquet rows.
        assert [m.step for m in history] == epochs["updates"].tolist()
        for m, value in zip(history, epochs["test_acc"], strict=True):
            assert (math.isnan(m.value) and math.isnan(value)) or m.value == pytest.approx(value)


def test_divergence_is_logged_and_on_the_map(ghost_study):
    _, outcome, client = ghost_study
    diverged = outcome.trials[outcome.trials["outcome"] == "diverged"]
    assert len(diverged) == 1 and diverged["base_lr_override"].iloc[0] == 1e6
    run = client.get_run(diverged["mlflow_run_id"].iloc[0])
    assert run.data.tags["outcome"] == "diverged"
    assert "diverged" in set(outcome.cells["verdict"])
    assert "diverged" in outcome.table
    assert set(outcome.trials["outcome"]) == {"completed", "diverged"}


def test_artifacts_and_parquet_match(ghost_study, tmp_path):
    _, outcome, client = ghost_study
    names = {f.path for f in client.list_artifacts(outcome.parent_run_id)}
    assert {"trials.parquet", "epochs.parquet", "summary.md", "gap_map.png"} <= names
    for name in ("trials.parquet", "epochs.parquet"):
        client.download_artifacts(outcome.parent_run_id, name, str(tmp_path))
    trials_logged, epochs_logged = read_tables(tmp_path)
    trials, epochs = read_tables(outcome.run_dir)
    pd.testing.assert_frame_equal(trials_logged, trials)
    pd.testing.assert_frame_equal(epochs_logged, epochs)
    pd.testing.assert_frame_equal(trials, outcome.trials)
    assert len(epochs) == int(trials["epochs_done"].sum())
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "ghost_size" in summary
    assert "verdict per cell: Welch 90% interval of gap = baseline - cell" in summary
    # One seed a cell: nothing can be decided, and the summary and the parent run say so.
    assert "- cells: closed 0, open 0, at the margin 0, inconclusive 4, diverged 1, error 0" in summary
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.metrics["margin"] == 0.5 and "tolerance" not in parent.metrics
    assert (parent.metrics["cells_closed"], parent.metrics["cells_open"],
            parent.metrics["cells_inconclusive"]) == (0, 0, 4)
    assert parent.params["margin"] == "0.5" and parent.params["accuracy"] == "final"
    cells_csv = pd.read_csv(outcome.run_dir / "cells.csv")
    assert list(cells_csv.columns) == list(outcome.cells.columns)
    assert set(cells_csv["verdict"]) == {"baseline", "inconclusive", "diverged"}


def test_gap_is_measured_against_the_baseline(ghost_study):
    _, outcome, _ = ghost_study
    base = outcome.trials[outcome.trials["is_baseline"]]
    assert len(base) == 1 and base["batch_size"].iloc[0] == 32
    cells = outcome.cells.set_index(["batch_size", "ghost_batch_size"], drop=False)
    row = outcome.trials[(outcome.trials["batch_size"] == 2048)
                         & outcome.trials["ghost_batch_size"].isna()].iloc[0]
    cell = outcome.cells[(outcome.cells["batch_size"] == 2048)
                         & outcome.cells["ghost_batch_size"].isna()].iloc[0]
    assert cell["gap"] == pytest.approx(base["test_acc"].iloc[0] - row["test_acc"])
    assert len(cells) == 6


def test_optuna_search_runs_baseline_first_then_samples(tmp_path, data_dir, ray_session):
    from tunegap.studies import lr_scaling

    args = lr_scaling.parser().parse_args(
        ["--search", "optuna", "--num-samples", "4", "--epochs", "1", "--baseline-epochs", "1", "--batch-sizes",
         "512,2048"])
    study = lr_scaling.build(args)
    outcome = run_study(study, options=options(tmp_path, data_dir, max_concurrent=2))
    trials = outcome.trials
    assert len(trials) == 4
    base = trials[trials["is_baseline"]]
    assert len(base) >= 1 and set(base["batch_size"]) == {32}
    searched = trials[~trials["is_baseline"]]
    assert set(searched["batch_size"]) <= {32, 512, 2048}
    # Optuna drew continuous exponents and base lrs inside the ranges it was given.
    assert searched["lr_exponent"].between(0, 1).all()
    assert searched["base_lr_override"].between(0.005, 0.5).all()
    assert searched["lr_exponent"].nunique() == len(searched)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(child_runs(client, outcome.parent_run_id)) == 4


def test_run_options_moved_and_an_old_import_says_where():
    import tunegap
    from tunegap.runner import options

    assert tunegap.RunOptions is options.RunOptions
    with pytest.raises(ImportError, match=r"moved: import it from tunegap\.runner\.options"):
        from tunegap.study import RunOptions  # noqa: F401
    import tunegap.study

    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        tunegap.study.NoSuchName  # noqa: B018


def test_epochs_shortens_the_cells_never_the_baseline_silently():
    quick = Study(name="ghost_size", workload="mnist1d-cnn", epochs=2,
                  grid={"batch_size": (32, 256), "ghost_batch_size": (None, 32)})
    configs = quick.trial_configs()
    base = [c for c in configs if is_baseline(c.to_dict(), quick.trial_settings())]
    # B0 with plain BN (and B0's ghost 32, one ghost per batch) is the baseline, once, at the
    # workload's own 20 epochs; the large-batch cells train the 2 asked for.
    assert [(c.batch_size, c.epochs) for c in base] == [(32, None)]
    assert {(c.batch_size, c.epochs) for c in configs if c not in base} == {(256, 2)}
    assert quick.reference_epochs == 20 and quick.describe()["baseline_epochs"] == 20
    # A B0 trial shortened by --epochs is no seed of the full-length reference.
    shortened = {**base[0].to_dict(), "epochs": 2}
    assert not is_baseline(shortened, quick.trial_settings())
    assert is_baseline(shortened, quick.trial_settings(), epochs=2)

    asked = Study(name="ghost_size", workload="mnist1d-cnn", epochs=2, baseline_epochs=2,
                  grid={"batch_size": (256,)})
    assert asked.baseline_config(0).epochs == 2 and asked.describe()["baseline_epochs"] == 2
    with pytest.raises(StudyError, match="--baseline-epochs 0"):
        Study(name="s", workload="mnist1d-cnn", baseline_epochs=0)
    # Without --epochs the state file is unchanged, so older runs still resume.
    assert "baseline_epochs" not in Study(name="s", workload="mnist1d-cnn").describe()
