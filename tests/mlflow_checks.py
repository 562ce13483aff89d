"""What every recovered study must show in MLflow, shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterable

import mlflow
from mlflow.entities import Run


def trial_runs_logged_once(
    tracking_uri: str, experiment: str, trial_ids: Iterable[str]
) -> list[Run]:
    """Assert one finished parent run, one child run per trial id and no epoch logged twice
    in any child; returns the child runs for the caller's own checks."""
    client = mlflow.MlflowClient(tracking_uri)
    (exp,) = [e for e in client.search_experiments() if e.name == experiment]
    parents = client.search_runs([exp.experiment_id], "tags.`tunegap.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], "tags.`tunegap.role` = 'trial'")
    ids = list(trial_ids)
    assert len(children) == len(ids)
    assert {r.data.tags["tunegap.trial_id"] for r in children} == set(ids)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        assert steps == sorted(set(steps)), (
            f"trial {run.data.tags['tunegap.trial_id']} logged an epoch twice"
        )
    return children
