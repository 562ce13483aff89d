"""MLflow brought up to date from a study's records: only what is missing, never twice."""

from __future__ import annotations

import mlflow

from tunegap.config import TrialConfig
from tunegap.tracking import StudyTracker
from tunegap.tracking.backfill import backfill_study


def record(trial_id: str, epochs: int, *, outcome: str = "completed", seed: int = 0) -> dict:
    config = TrialConfig(workload="mnist1d-cnn", batch_size=512, seed=seed).to_dict()
    history = [
        {"epoch": e, "updates": 16 * e, "test_acc": 50.0 + e, "train_loss": 1.0 / e,
         "diverged": False, "resolved_epochs": epochs, "resolved_lr": 0.2}
        for e in range(1, epochs + 1)
    ]
    return {"trial_id": trial_id, "config": config, "outcome": outcome,
            "error": "boom" if outcome == "error" else None, "history": history}


def steps(client: mlflow.MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "test_acc"))


def test_backfill_logs_only_what_is_missing_and_is_idempotent(tmp_path):
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "backfill")
    tracker.start_parent(params={"workload": "mnist1d-cnn"})
    client = tracker.client
    partial = record("t-partial", 4)
    # The live callback got the first two epochs in before the server went away.
    run_id = tracker.child_run_for("t-partial", partial["config"])
    for row in partial["history"][:2]:
        client.log_metric(run_id, "test_acc", row["test_acc"], step=row["updates"])
        client.log_metric(run_id, "updates", row["updates"], step=row["updates"])
    # The journal repeats an epoch a restored trial reported again: one point per step.
    partial["history"].append(dict(partial["history"][-1]))
    records = [partial, record("t-missing", 3, seed=1), record("t-error", 2, outcome="error",
                                                                seed=2)]

    report = backfill_study(tracker, records)
    assert report.complete and sorted(report.updated) == ["t-error", "t-missing", "t-partial"]
    assert report.steps_logged == 2 + 3 + 2
    ids = tracker.mlflow_run_ids()
    assert ids["t-partial"] == run_id
    assert steps(client, run_id) == [16, 32, 48, 64]
    assert steps(client, ids["t-missing"]) == [16, 32, 48]
    for trial, status, outcome in [("t-partial", "FINISHED", "completed"),
                                   ("t-missing", "FINISHED", "completed"),
                                   ("t-error", "FAILED", "error")]:
        run = client.get_run(ids[trial])
        assert (run.info.status, run.data.tags["outcome"]) == (status, outcome)
        assert run.data.params["resolved_epochs"] in ("2", "3", "4")
    assert client.get_run(ids["t-error"]).data.tags["error"] == "boom"

    again = backfill_study(tracker, records)
    assert again.complete and again.updated == [] and again.steps_logged == 0
    assert steps(client, run_id) == [16, 32, 48, 64]


def test_backfill_against_a_dead_server_gives_up_at_once(tmp_path, monkeypatch):
    from study_procs import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = StudyTracker(f"http://127.0.0.1:{free_port()}", "backfill",
                           parent_run_id="0" * 32)
    records = [record(f"t{i}", 2, seed=i) for i in range(5)]
    report = backfill_study(tracker, records)
    # One call failed; the other four were not tried against a server that does not answer.
    assert sorted(report.failed) == [f"t{i}" for i in range(5)]
    assert list(report.failed.values())[1:] == ["the tracking server does not answer"] * 4
