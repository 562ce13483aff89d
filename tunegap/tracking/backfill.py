"""Bring MLflow up to date from a study's own records (Ray's results and the driver's journal).

The tracking callback logs while trials run; when the server was down for part of a study,
or a driver died before its logging thread caught up, some child runs miss epochs, their
outcome or their final status. `backfill_study` compares each trial's record with its child
run and logs only what is missing (steps beyond the largest one logged), so running it twice,
or after a run that logged everything, changes nothing. The study runner calls it at the end
of a study whose tracking failed and at the end of every `--resume`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param

from tunegap.names import EPOCH_METRICS, ERROR
from tunegap.text import clip, one_line
from tunegap.tracking.callback import ERROR_CHARS, result_batch, step_of
from tunegap.tracking.health import store_reachable
from tunegap.tracking.runs import TAG_ERROR, TAG_OUTCOME, StudyTracker

# MLflow's limits per log_batch call (mlflow.utils.validation).
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100


@dataclass
class BackfillReport:
    """What `backfill_study` did: trials it added to, and trials it could not log (with why)."""

    updated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    steps_logged: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed


def backfill_study(
    tracker: StudyTracker,
    records: Iterable[Mapping[str, Any]],
    *,
    metric_names: Sequence[str] = EPOCH_METRICS,
) -> BackfillReport:
    """Log what MLflow lacks of each trial record (`tunegap.runner.records.collect_records`).

    A trial that cannot be logged is kept in `BackfillReport.failed`; once the server stops
    answering, the remaining trials are not tried (each would wait out MLflow's retries).
    """
    report = BackfillReport()
    records = list(records)
    for index, record in enumerate(records):
        trial_id = str(record["trial_id"])
        try:
            steps = _backfill_trial(tracker, record, metric_names)
        except Exception as exc:
            report.failed[trial_id] = one_line(exc)
            if not store_reachable(tracker.tracking_uri):
                for rest in records[index + 1:]:
                    report.failed[str(rest["trial_id"])] = "the tracking server does not answer"
                break
            continue
        if steps is not None:
            report.updated.append(trial_id)
            report.steps_logged += steps
    return report


def _backfill_trial(
    tracker: StudyTracker, record: Mapping[str, Any], metric_names: Sequence[str]
) -> int | None:
    """Steps added to the trial's child run, or None where it was already complete."""
    client = tracker.client
    run_id, created = tracker.get_or_create_child(str(record["trial_id"]), record["config"])
    run = client.get_run(run_id)
    logged = [m.step for m in client.get_metric_history(run_id, "updates")]
    last_step = max(logged, default=-math.inf)
    params = set(run.data.params)
    metrics: list[Metric] = []
    new_params: list[Param] = []
    for row in _rows_by_step(record.get("history") or []):
        if step_of(row) <= last_step:
            continue
        row_metrics, row_params = result_batch(row, metric_names, params)
        metrics += row_metrics
        new_params += row_params
        params.update(p.key for p in row_params)
    for start in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _METRICS_PER_BATCH])
    for start in range(0, len(new_params), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new_params[start:start + _PARAMS_PER_BATCH])

    outcome = str(record["outcome"])
    status = "FAILED" if outcome == ERROR else "FINISHED"
    tags = run.data.tags
    closed = tags.get(TAG_OUTCOME) == outcome and run.info.status == status
    if not closed:
        extra = {TAG_OUTCOME: outcome}
        if outcome == ERROR and record.get("error") and TAG_ERROR not in tags:
            extra[TAG_ERROR] = clip(str(record["error"]), ERROR_CHARS)
        tracker.log_tags(run_id, extra)
        client.set_terminated(run_id, status=status)
    if created or metrics or new_params or not closed:
        return len({m.step for m in metrics})
    return None


def _rows_by_step(history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per step, the last report of a step winning (the driver's journal comes last
    in a record's history), in step order."""
    rows: dict[int, Mapping[str, Any]] = {}
    for row in history:
        rows[step_of(row)] = row
    return [rows[step] for step in sorted(rows)]


__all__ = ["BackfillReport", "backfill_study"]
