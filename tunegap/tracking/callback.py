"""The Ray Tune callback that logs each trial to its child run under the study's parent run
(the runs' layout: `tunegap.tracking.runs`).

Outcomes and run statuses
-------------------------
=============  =========  ==========================================================
outcome        status     when
=============  =========  ==========================================================
completed      FINISHED   the trial ran all its epochs
diverged       FINISHED   its last result had ``diverged=True``. A divergence is a
                          result of the study, not a fault, so FAILED is kept for errors.
stopped        FINISHED   a scheduler, stopper or time budget ended it before its last
                          epoch (its last ``epoch`` < ``resolved_epochs``)
error          FAILED     the trainable raised; tag ``error`` holds the message, and the
                          error file is an artifact under ``error/``
interrupted    KILLED     the experiment ended while the trial still ran (Ctrl-C)
=============  =========  ==========================================================

Resume
------
A resumed study reopens its parent run (``StudyTracker(..., parent_run_id=...)`` then
`StudyTracker.start_parent`) and never makes a second child run for a trial: the child is
found again by its ``tunegap.trial_id`` tag, reopened (status RUNNING, ``outcome`` and
``error`` tags removed) and only results with ``updates`` beyond the largest step already
logged are added. Note that `ray.tune.Tuner.restore` uses the callbacks pickled into
``tuner.pkl`` when the Tuner was first built, not new ones; the callback therefore carries
the tracking URI, the study and the parent run id with it (call `start_parent` before
building the Tuner), and its ``get_state`` keeps the parent run id in Tune's experiment
state as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from ray.tune import Callback

from tunegap.names import (
    DIVERGED,
    EPOCH_METRICS,
    ERROR,
    OPTIONAL_METRICS,
    RESOLVED_PREFIX,
    ended_outcome,
)
from tunegap.text import clip, one_line
from tunegap.tracking.health import store_reachable
from tunegap.tracking.runs import (
    TAG_ERROR,
    TAG_FAILURES,
    TAG_LAST_ERROR,
    TAG_OUTCOME,
    StudyTracker,
    metric_value,
    now_ms,
    param_value,
)

logger = logging.getLogger(__name__)
ERROR_CHARS = 5000
# The outcome only a run's tag records, beside `tunegap.names.OUTCOMES`: a trial still
# running when the experiment ended.
INTERRUPTED = "interrupted"

# The metric that tells how far a run got: always present and finite, equal to the step.
_PROGRESS_METRIC = "updates"
_PLANNED_EPOCHS = f"{RESOLVED_PREFIX}epochs"


@dataclass
class _TrialLog:
    """What the callback knows about a trial's child run in this process."""

    run_id: str
    last_step: float = -math.inf
    params: set[str] = field(default_factory=set)
    open: bool = True


class MlflowTrackingCallback(Callback):
    """Logs each Tune trial to its child run under the study's parent run.

    One ``log_batch`` per result (per epoch), from one logging thread in the driver (so
    Tune never waits on MLflow); nothing runs inside trials. `flush` waits for it.
    A tracking failure is logged as a warning and kept in `errors` instead of stopping the
    study (`raise_errors=True` re-raises, for tests). When the tracking server stops
    answering, the callback stops calling it (each call would wait out MLflow's retries) and
    keeps the trials it could not log in `unlogged`; the study's end logs them from its own
    records (`tunegap.tracking.backfill`). See the module docstring for outcomes and
    statuses, and `tunegap.tracking.runs` for tags.
    """

    def __init__(
        self,
        tracker: StudyTracker,
        *,
        metric_names: Sequence[str] = EPOCH_METRICS,
        raise_errors: bool = False,
    ) -> None:
        self.tracker = tracker
        self.metric_names = tuple(metric_names)
        self.raise_errors = raise_errors
        self.errors: list[str] = []
        self.unlogged: set[str] = set()
        self.store_down = False
        self._trials: dict[str, _TrialLog] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Progress is re-read from MLflow after unpickling; a pickled copy would be stale.
        state["_trials"] = {}
        state["_pool"] = None
        state["_pending"] = []
        state["errors"], state["unlogged"], state["store_down"] = [], set(), False
        return state

    # -- Tune hooks ----------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("start", trial, self._open, trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("restore", trial, self._open, trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._safely("result", trial, self._log_result, trial, dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("complete", trial, self._complete, trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("recover", trial, self._recover, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("error", trial, self._error, trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        # Tune's clean-up stops running trials without on_trial_complete (Ctrl-C, a
        # failing experiment); without this their runs would stay RUNNING for ever.
        for trial_id, log in self._trials.items():
            if log.open:
                self._run_safely("end", trial_id, self._close, log, INTERRUPTED, "KILLED")

    def get_state(self) -> dict | None:
        if self.tracker.parent_run_id is None:
            return None
        return {"parent_run_id": self.tracker.parent_run_id}

    def set_state(self, state: dict) -> None:
        parent = state.get("parent_run_id")
        if parent and parent != self.tracker.parent_run_id:
            if self.tracker.parent_run_id is not None:
                logger.warning(
                    "restored Tune state names parent run %s, the callback %s: using %s",
                    parent,
                    self.tracker.parent_run_id,
                    parent,
                )
            self.tracker.adopt_parent(parent)

    # -- work ----------------------------------------------------------------------

    @property
    def _client(self) -> mlflow.MlflowClient:
        return self.tracker.client

    def _open(self, trial: Any) -> _TrialLog:
        log = self._trials.get(trial.trial_id)
        if log is None:
            run_id, created = self.tracker.get_or_create_child(trial.trial_id, dict(trial.config))
            log = _TrialLog(run_id, params=set(trial.config)) if created else self._resync(run_id)
            self._trials[trial.trial_id] = log
        elif not log.open:
            self._reopen(log.run_id, self._client.get_run(log.run_id).data.tags)
            log.open = True
        return log

    def _resync(self, run_id: str) -> _TrialLog:
        """A run this process did not make (resume): how far it got and what it holds."""
        run = self._client.get_run(run_id)
        steps = [m.step for m in self._client.get_metric_history(run_id, _PROGRESS_METRIC)]
        self._reopen(run_id, run.data.tags, status=run.info.status)
        return _TrialLog(
            run_id, last_step=max(steps, default=-math.inf), params=set(run.data.params)
        )

    def _reopen(self, run_id: str, tags: Mapping[str, str], status: str | None = None) -> None:
        if status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        for key in (TAG_OUTCOME, TAG_ERROR):
            if key in tags:
                self._client.delete_tag(run_id, key)

    def _log_result(self, trial: Any, result: Mapping[str, Any]) -> None:
        log = self._open(trial)
        step = step_of(result)
        if step <= log.last_step:
            return  # re-reported after a restore from an older checkpoint: already logged
        metrics, params = result_batch(result, self.metric_names, log.params)
        self._client.log_batch(log.run_id, metrics=metrics, params=params)
        log.params.update(p.key for p in params)
        log.last_step = step

    def _complete(self, trial: Any) -> None:
        last = trial.last_result or {}
        known = trial.trial_id in self._trials
        if not known and self.tracker.find_child_run(trial.trial_id) is None:
            # Stopped before it ever started (e.g. a pending trial at the end of a budget).
            return
        self._close(self._open(trial), trial_outcome(last), "FINISHED")

    def _recover(self, trial: Any) -> None:
        log = self._open(trial)
        tags = {
            TAG_FAILURES: str(trial.num_failures),
            TAG_LAST_ERROR: clip(trial_error_text(trial), ERROR_CHARS),
        }
        self.tracker.log_tags(log.run_id, tags)

    def _error(self, trial: Any) -> None:
        log = self._open(trial)
        tags = {
            TAG_ERROR: clip(trial_error_text(trial), ERROR_CHARS),
            TAG_FAILURES: str(trial.num_failures),
        }
        self.tracker.log_tags(log.run_id, tags)
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            self._client.log_artifact(log.run_id, error_file, artifact_path="error")
        self._close(log, ERROR, "FAILED")

    def _close(self, log: _TrialLog, outcome: str, status: str) -> None:
        self.tracker.log_tags(log.run_id, {TAG_OUTCOME: outcome})
        self._client.set_terminated(log.run_id, status=status)
        log.open = False

    def _safely(self, what: str, trial: Any, work: Any, *args: Any) -> None:
        """Queue `work` for the logging thread, with a snapshot of the trial as it is now.

        MLflow calls take tens of milliseconds (a sqlite commit, an HTTP round trip); Tune
        waits for its callbacks before it asks the trial for its next epoch, so logging in
        the callback itself would slow every trial. One worker thread keeps the calls in
        order; `flush` waits for them.
        """
        snapshot = _TrialSnapshot.of(trial) if hasattr(trial, "trial_id") else trial
        args = tuple(snapshot if a is trial else a for a in args)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunegap-mlflow")
        self._pending.append(self._pool.submit(self._run_safely, what, snapshot, work, *args))

    def flush(self) -> None:
        """Wait until everything queued so far is in MLflow (re-raises with raise_errors)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _run_safely(self, what: str, trial: Any, work: Any, *args: Any) -> None:
        trial_id = str(getattr(trial, "trial_id", trial))
        if self.store_down:
            self.unlogged.add(trial_id)
            return
        try:
            work(*args)
        except Exception as exc:
            if self.raise_errors:
                raise
            self.unlogged.add(trial_id)
            message = f"MLflow tracking ({what}) for trial {trial_id} failed: {one_line(exc)}"
            self.errors.append(message)
            logger.warning(message)
            if not store_reachable(self.tracker.tracking_uri):
                self.store_down = True
                logger.warning(
                    "MLflow at %s does not answer: no more logging until the study ends",
                    self.tracker.tracking_uri,
                )


@dataclass(frozen=True)
class _TrialSnapshot:
    """The parts of a Tune trial the logging thread reads, copied when the hook ran."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any]
    num_failures: int
    error_file: str | None

    @classmethod
    def of(cls, trial: Any) -> _TrialSnapshot:
        return cls(
            trial_id=trial.trial_id,
            config=dict(trial.config),
            last_result=dict(trial.last_result or {}),
            num_failures=int(getattr(trial, "num_failures", 0) or 0),
            error_file=getattr(trial, "error_file", None),
        )


def trial_error_text(trial: Any) -> str:
    """The last failure of a Tune trial (anything with ``error_file``) as Tune wrote it, whole;
    a fixed sentence where Tune left no error file."""
    error_file = getattr(trial, "error_file", None)
    text = ""
    if error_file and Path(error_file).is_file():
        text = Path(error_file).read_text(errors="replace")
        # Tune appends one "Failure # n (occurred at ...)" block per failure; keep the last.
        marker = text.rfind("Failure # ")
        if marker > 0:
            text = text[marker:]
    return text.strip() or "the trial failed; Tune left no error file"


def step_of(result: Mapping[str, Any]) -> int:
    """The MLflow step of a result: its weight updates so far (`updates`)."""
    updates = metric_value(result.get(_PROGRESS_METRIC))
    if updates is not None and math.isfinite(updates):
        return int(updates)
    # A trainable without an update count: fall back on Tune's iteration counter.
    return int(result.get("training_iteration", 0))


def result_batch(
    result: Mapping[str, Any], metric_names: Sequence[str], logged_params: set[str]
) -> tuple[list[Metric], list[Param]]:
    """One result as the metrics (at its step) and the resolved params not logged yet."""
    now, step = now_ms(), step_of(result)
    metrics = [
        Metric(key, value, now, step)
        for key in metric_names
        if key in result
        and (value := metric_value(result[key])) is not None
        # Probes that did not run this epoch report NaN: no point, not a NaN point.
        and not (key in OPTIONAL_METRICS and not math.isfinite(value))
    ]
    params = [
        Param(key, param_value(value))
        for key, value in result.items()
        if key.startswith(RESOLVED_PREFIX) and key not in logged_params
    ]
    return metrics, params


def trial_outcome(last: Mapping[str, Any]) -> str:
    """The outcome tag of a trial from its last result (`tunegap.names.ended_outcome`)."""
    return ended_outcome(diverged=bool(last.get(DIVERGED)),
                         epochs_done=metric_value(last.get("epoch")),
                         planned_epochs=metric_value(last.get(_PLANNED_EPOCHS)))
