"""Tracking: real MLflow on a sqlite file, real Ray Tune runs of a stand-in trainable
(Ray from the session fixture `ray_session` in conftest.py)."""

from __future__ import annotations

import math
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
from ray import cloudpickle, tune

from tunegap.config import TrialConfig
from tunegap.names import EPOCH_METRICS, METRIC_NAMES
from tunegap.tracking import (
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    MlflowTrackingCallback,
    StudyTracker,
    TrackingUnavailable,
    check_tracking_uri,
    ensure_experiment,
    experiment_name,
    run_name_for,
)

EPOCHS = 3
N_EXAMPLES = 1000
FAIL_KEEP = "fail"  # the trial raises in epoch 3 while this file exists
FAIL_ONCE = "fail-once"  # the trial raises in epoch 3 and removes the file

# Ray workers cannot import this test module (it is not on their path): ship its trainable
# by value instead of by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


class FakeGapTrainable(tune.Trainable):
    """Reports GapTrainable's result keys, one epoch per step, without training.

    seed 1 diverges in epoch 2 (NaN losses), seed 2 raises in epoch 2. With `data_dir` set
    it raises in epoch 3 while `data_dir/fail` or `data_dir/fail-once` exists (removing the
    latter), and it checkpoints after epoch 1 only, so a restored trial re-reports epoch 2.
    """

    def setup(self, config: dict[str, Any]) -> None:
        self.epoch = 0
        self.per_epoch = math.ceil(N_EXAMPLES / config["batch_size"])

    def step(self) -> dict[str, Any]:
        self.epoch += 1
        config = self.config
        if config["seed"] == 2 and self.epoch == 2:
            raise RuntimeError("boom: the fake trainable failed")
        if config["data_dir"] and self.epoch == 3:
            folder = Path(config["data_dir"])
            if (folder / FAIL_ONCE).exists():
                (folder / FAIL_ONCE).unlink()
                raise RuntimeError("fails once")
            if (folder / FAIL_KEEP).exists():
                raise RuntimeError("fails until the marker is removed")
        diverged = config["seed"] == 1 and self.epoch >= 2
        loss = math.nan if diverged else 1.0 / self.epoch
        return {
            "epoch": self.epoch,
            "updates": self.epoch * self.per_epoch,
            "lr": 0.1,
            "train_loss": loss,
            "train_acc": 0.5 + 0.1 * self.epoch,
            "test_loss": loss,
            "test_acc": math.nan if diverged else 0.4 + 0.1 * self.epoch,
            "train_test_gap": 0.1,
            "weight_distance": float(self.epoch),
            "seconds": 0.01,
            "diverged": diverged,
            "resolved_lr": 0.1,
            "resolved_epochs": EPOCHS,
            "resolved_decay_epochs": "2",
            "resolved_multiplier": 1.0,
            "resolved_total_updates": EPOCHS * self.per_epoch,
            "done": diverged or self.epoch >= EPOCHS,
            "should_checkpoint": self.epoch == 1,
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        (Path(checkpoint_dir) / "epoch.txt").write_text(str(self.epoch))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.epoch = int((Path(checkpoint_dir) / "epoch.txt").read_text())


def _config(**changes: Any) -> dict[str, Any]:
    base = TrialConfig(workload="mnist1d-cnn", batch_size=100, lr_exponent=0.5, epochs=EPOCHS)
    return base.with_changes(**changes).to_dict()


def _tuner(tracker: StudyTracker, param_space: dict, storage: Path, **failure: Any) -> tune.Tuner:
    callback = MlflowTrackingCallback(tracker, raise_errors=True)
    return tune.Tuner(
        FakeGapTrainable,
        param_space=param_space,
        run_config=tune.RunConfig(
            name="study",
            storage_path=str(storage),
            callbacks=[callback],
            failure_config=tune.FailureConfig(**failure),
            verbose=0,
        ),
    )


def _children(client: mlflow.MlflowClient, tracker: StudyTracker) -> dict[str, Any]:
    runs = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{tracker.parent_run_id}'"
    )
    return {run.data.tags[TAG_TRIAL_ID]: run for run in runs}


def _steps(client: mlflow.MlflowClient, run_id: str, key: str = "test_acc") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# --- no Ray ---------------------------------------------------------------------------


def test_ensure_experiment_creates_and_restores(uri: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(uri)
    name = experiment_name("demo")
    assert name == "tunegap/demo"
    first = ensure_experiment(client, name)
    assert ensure_experiment(client, name) == first
    location = client.get_experiment(first).artifact_location
    assert location.startswith((tmp_path / "mlartifacts").as_uri())
    client.delete_experiment(first)
    assert ensure_experiment(client, name) == first
    assert client.get_experiment(first).lifecycle_stage == "active"


def test_unreachable_server_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"127\.0\.0\.1:9 cannot be reached"):
        check_tracking_uri("http://127.0.0.1:9")
    assert time.monotonic() - start < 60  # one probe; MLflow's own retries take minutes


def test_sqlite_uri_is_checked(uri: str, tmp_path: Path) -> None:
    check_tracking_uri(uri)
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_logged_metrics_cover_the_engine_metrics(data_dir) -> None:
    from tunegap.engine import Engine

    epoch = Engine(TrialConfig(workload="mnist1d-cnn", batch_size=4000, epochs=1, device="cpu",
                               data_dir=str(data_dir))).train_epoch()
    assert set(EPOCH_METRICS) == set(METRIC_NAMES) | {"diverged"}
    assert set(EPOCH_METRICS) <= set(epoch)


def test_run_name() -> None:
    config = _config(batch_size=1024, ghost_batch_size=128, regime_multiplier="matched")
    assert run_name_for(config) == "B1024-g128-a0.5-rmatched-s0"
    assert run_name_for(_config()) == "B100-gnone-a0.5-r1-s0"


def _trial(trial_id: str, config: dict, last: dict | None = None) -> SimpleNamespace:
    # The attributes of ray.tune.experiment.Trial that the callback reads.
    return SimpleNamespace(
        trial_id=trial_id, config=config, last_result=last or {}, error_file=None, num_failures=0
    )


def _result(epoch: int, *, per_epoch: int = 10) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "updates": epoch * per_epoch,
        "test_acc": 0.5,
        "train_loss": 1.0,
        "diverged": False,
        "resolved_lr": 0.1,
        "resolved_epochs": EPOCHS,
        "training_iteration": epoch,
    }


def test_resumed_tracker_refed_results_adds_nothing(uri: str, tmp_path: Path) -> None:
    tracker = StudyTracker(uri, "refeed")
    parent = tracker.start_parent({"workload": "mnist1d-cnn", "search_space": {"b": [1, 2]}})
    callback = MlflowTrackingCallback(tracker, raise_errors=True)
    trial = _trial("t0", _config())
    callback.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        callback.on_trial_result(0, [], trial, _result(epoch))
    callback.flush()  # the logging thread has written both epochs before the driver dies
    # The driver dies here: the run stays RUNNING, with two epochs logged.

    resumed = StudyTracker(uri, "refeed", parent_run_id=parent)
    assert (
        resumed.start_parent({"workload": "mnist1d-cnn", "search_space": '{"b": [1, 3]}'}) == parent
    )
    callback = MlflowTrackingCallback(resumed, raise_errors=True)
    trial = _trial("t0", _config(), last=_result(3))
    callback.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        callback.on_trial_result(0, [], trial, _result(epoch))
    callback.on_trial_complete(0, [], trial)
    # What Tune calls when fit() ends; it waits for the logging thread, as every study does.
    callback.on_experiment_end([trial])
    resumed.log_parent_metrics({"closed_cells": 2})
    note = tmp_path / "table.csv"
    note.write_text("a,b\n1,2\n")
    resumed.log_parent_artifacts([note], artifact_path="tables")
    resumed.finish_parent()

    client = mlflow.MlflowClient(uri)
    children = _children(client, resumed)
    assert list(children) == ["t0"]
    run_id = children["t0"].info.run_id
    assert resumed.mlflow_run_ids() == {"t0": run_id}
    assert _steps(client, run_id) == [10, 20, 30]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_OUTCOME] == "completed"
    assert run.data.params["resolved_lr"] == "0.1"
    assert run.data.params["ghost_batch_size"] == "0"  # plain BatchNorm
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params["search_space"] == '{"b": [1, 2]}'
    assert parent_run.data.tags["resumed.search_space"] == '{"b": [1, 3]}'
    assert parent_run.data.metrics["closed_cells"] == 2
    assert [a.path for a in client.list_artifacts(parent, "tables")] == ["tables/table.csv"]


def test_stopped_and_interrupted_trials(uri: str) -> None:
    tracker = StudyTracker(uri, "ends")
    tracker.start_parent({"workload": "mnist1d-cnn"})
    callback = MlflowTrackingCallback(tracker, raise_errors=True)
    stopped = _trial("early", _config(), last=_result(2))  # 2 of 3 epochs: a scheduler stop
    running = _trial("late", _config(seed=1))
    for trial in (stopped, running):
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, _result(1))
    callback.on_trial_complete(0, [], stopped)
    callback.on_experiment_end([])

    client = mlflow.MlflowClient(uri)
    runs = _children(client, tracker)
    assert (runs["early"].info.status, runs["early"].data.tags[TAG_OUTCOME]) == (
        "FINISHED",
        "stopped",
    )
    assert (runs["late"].info.status, runs["late"].data.tags[TAG_OUTCOME]) == (
        "KILLED",
        "interrupted",
    )


def test_tracker_and_callback_pickle_without_client(uri: str) -> None:
    tracker = StudyTracker(uri, "pickled")
    parent = tracker.start_parent({"workload": "mnist1d-cnn"})
    pickled = pickle.dumps(MlflowTrackingCallback(tracker))
    assert b"MlflowClient" not in pickled  # no client travels: each process makes its own
    callback = pickle.loads(pickled)
    assert callback.tracker.parent_run_id == parent
    assert callback.get_state() == {"parent_run_id": parent}


# --- real Tune runs -------------------------------------------------------------------


def test_study_logs_parent_children_and_outcomes(ray_session, uri: str, tmp_path: Path) -> None:
    tracker = StudyTracker(uri, "tune")
    parent = tracker.start_parent(
        {"workload": "mnist1d-cnn", "search_space": {"seed": [0, 1, 2]}, "seeds": [0, 1, 2]},
        {"purpose": "test"},
    )
    # seed 0 completes, seed 1 diverges, seed 2 raises.
    space = {**_config(), "seed": tune.grid_search([0, 1, 2])}
    _tuner(tracker, space, tmp_path / "ray").fit()
    tracker.finish_parent("FINISHED")

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 4
    children = _children(client, tracker)
    assert len(children) == 3
    assert tracker.mlflow_run_ids() == {t: r.info.run_id for t, r in children.items()}
    by_seed = {run.data.params["seed"]: run for run in children.values()}
    assert set(by_seed) == {"0", "1", "2"}
    for run in children.values():
        assert run.data.tags[TAG_STUDY] == "tune"
        assert run.data.tags[TAG_ROLE] == "trial"
        assert run.data.params["batch_size"] == "100"
        assert run.data.params["ghost_batch_size"] == "0"  # plain BatchNorm
        assert run.data.params["regime_multiplier"] == "1.0"

    ok, diverged, failed = by_seed["0"], by_seed["1"], by_seed["2"]
    assert (ok.info.status, ok.data.tags[TAG_OUTCOME]) == ("FINISHED", "completed")
    assert ok.info.run_name == "B100-gnone-a0.5-r1-s0"
    assert ok.data.params["resolved_total_updates"] == "30"
    assert ok.data.params["resolved_decay_epochs"] == "2"
    assert _steps(client, ok.info.run_id) == [10, 20, 30]
    assert _steps(client, ok.info.run_id, "diverged") == [10, 20, 30]

    assert (diverged.info.status, diverged.data.tags[TAG_OUTCOME]) == ("FINISHED", "diverged")
    history = client.get_metric_history(diverged.info.run_id, "test_loss")
    assert [m.step for m in history] == [10, 20]
    assert math.isnan(history[-1].value)
    assert diverged.data.metrics["diverged"] == 1.0

    assert (failed.info.status, failed.data.tags[TAG_OUTCOME]) == ("FAILED", "error")
    assert "boom: the fake trainable failed" in failed.data.tags["error"]
    assert len(failed.data.tags["error"]) <= 5000
    assert _steps(client, failed.info.run_id) == [10]
    assert [a.path for a in client.list_artifacts(failed.info.run_id, "error")]

    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags[TAG_ROLE] == "parent"
    assert parent_run.data.tags["purpose"] == "test"
    assert parent_run.data.params["seeds"] == "[0, 1, 2]"
    assert parent_run.data.params["version.mlflow"] == mlflow.__version__
    assert parent_run.data.params["code_version"]


def test_restored_tuner_reuses_the_child_run(ray_session, uri: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / FAIL_KEEP).touch()
    tracker = StudyTracker(uri, "resume")
    parent = tracker.start_parent({"workload": "mnist1d-cnn"})
    storage = tmp_path / "ray"
    _tuner(tracker, _config(data_dir=str(markers)), storage).fit()

    client = mlflow.MlflowClient(uri)
    (run,) = _children(client, tracker).values()
    assert (run.info.status, run.data.tags[TAG_OUTCOME]) == ("FAILED", "error")
    assert _steps(client, run.info.run_id) == [10, 20]

    # A new driver: reopen the parent, restore the Tuner (its callback comes from tuner.pkl).
    (markers / FAIL_KEEP).unlink()
    resumed = StudyTracker(uri, "resume", parent_run_id=parent)
    resumed.start_parent({"workload": "mnist1d-cnn"})
    tuner = tune.Tuner.restore(str(storage / "study"), FakeGapTrainable, resume_errored=True)
    tuner.fit()
    resumed.finish_parent()

    (again,) = _children(client, resumed).values()
    assert again.info.run_id == run.info.run_id
    assert (again.info.status, again.data.tags[TAG_OUTCOME]) == ("FINISHED", "completed")
    assert "error" not in again.data.tags
    # Epoch 2 was re-reported from the epoch-1 checkpoint and must not be logged twice.
    assert _steps(client, run.info.run_id) == [10, 20, 30]
    assert _steps(client, run.info.run_id, "updates") == [10, 20, 30]


def test_recovered_trial_logs_each_step_once(ray_session, uri: str, tmp_path: Path) -> None:
    (tmp_path / FAIL_ONCE).touch()
    tracker = StudyTracker(uri, "recover")
    tracker.start_parent({"workload": "mnist1d-cnn"})
    _tuner(tracker, _config(data_dir=str(tmp_path)), tmp_path / "ray", max_failures=1).fit()

    client = mlflow.MlflowClient(uri)
    (run,) = _children(client, tracker).values()
    assert (run.info.status, run.data.tags[TAG_OUTCOME]) == ("FINISHED", "completed")
    assert run.data.tags["tunegap.failures"] == "1"
    assert _steps(client, run.info.run_id) == [10, 20, 30]
