"""The MLflow runs of a study: one experiment per study, a parent run per study run, a child
run per Tune trial. Everything goes through an explicit `mlflow.MlflowClient`; nothing here
touches MLflow's global tracking URI or active run, so several studies (or tests) can share
one process.

Layout
------
experiment ``tunegap/<study>``
    With a sqlite store its artifacts go next to the database, in
    ``<db folder>/mlartifacts/tunegap/<study>``, not in the current directory's ``./mlruns``.

parent run ``<study>-<YYYYmmdd-HHMMSS>`` (one per run of the study; a resume reopens it)
    tags    ``tunegap.study``, ``tunegap.role=parent``, the source tags MLflow's fluent API
            sets (`context_tags`: ``mlflow.source.name``, ``mlflow.source.type``,
            ``mlflow.user``, ``mlflow.source.git.commit`` where known), the runner's tags, ``tunegap.resumed_at`` after a resume,
            ``resumed.<param>`` for a param whose value changed on resume (params are
            immutable in MLflow).
    params  what the study runner passes (workload, search space as JSON, seeds, ...), plus
            ``code_version`` (git commit, ``+dirty`` with uncommitted changes to tracked
            files) and ``version.<torch|ray|mlflow|optuna|tunegap>``. A value longer than
            MLflow's limit is cut, and the whole of it is kept as ``params/<key>.txt``.
    artifacts and summary metrics: `StudyTracker.log_parent_artifacts` / `log_parent_metrics`.

child run ``B<batch>-g<ghost>-a<lr_exponent>-r<regime_multiplier>-s<seed>`` (one per trial)
    tags    ``mlflow.parentRunId`` (nests it under the parent in the UI), ``tunegap.study``,
            ``tunegap.trial_id`` (how a resumed study finds the run again), ``tunegap.role=trial``,
            ``outcome`` once the trial ends, ``error`` (the last failure's text, at most 5000
            characters: first line and tail) and ``tunegap.failures`` when it errored;
            a failure that Tune retries (``FailureConfig.max_failures``) sets
            ``tunegap.failures`` and ``tunegap.last_error`` and the run stays RUNNING.
    tags    also the parent's source tags (`context_tags`).
    params  every knob of the trial config (`config_param_value`: numbers stay numbers, so
            ``ghost_batch_size`` of plain BatchNorm is ``0``; any other None -> "none"),
            and from its first result the
            resolved regime: ``resolved_lr``, ``resolved_epochs``, ``resolved_decay_epochs``,
            ``resolved_multiplier``, ``resolved_total_updates``, ``resolved_lr_schedule`` and
            ``resolved_weight_decay_schedule`` ("epoch:value" where the value changes, e.g.
            "0:0.1,81:0.01").
    metrics one point per epoch, all in a single ``log_batch`` call: `EPOCH_METRICS` of
            `tunegap.tracking.callback` (``diverged`` as 0/1). NaN (a diverged epoch) is
            logged as NaN.

At the end of a study (`tunegap.tracking.results`) each child also gets the metric ``gap``
(its cell's gap = baseline - cell, in points), ``gap_ci_low`` / ``gap_ci_high`` (the
cell's Welch 90% interval) and the tags ``verdict`` / ``verdict_holm``; the parent gets
``summary.md`` as its description (``mlflow.note.content``), the figures as MLflow images,
and every run the study's data set as an input.

Step convention: ``step = updates`` (weight updates so far), so the curves of different batch
sizes line up by updates, the way the paper compares them. ``epoch`` is a metric too.

The child runs' outcomes, statuses and resume rules are the callback's: see
`tunegap.tracking.callback`.
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from tunegap.text import one_line
from tunegap.tracking.provenance import code_version, context_tags, package_versions
from tunegap.tracking.uri import default_artifact_location, safe_tracking_uri, tracking_client

# The tags of tracking's runs, the parent's and the children's, named here and nowhere else.
TAG_STUDY = "tunegap.study"
TAG_TRIAL_ID = "tunegap.trial_id"
TAG_ROLE = "tunegap.role"
TAG_OUTCOME = "outcome"
TAG_ERROR = "error"
TAG_FAILURES = "tunegap.failures"
TAG_LAST_ERROR = "tunegap.last_error"
TAG_RESUMED_AT = "tunegap.resumed_at"
TAG_PARENT = "mlflow.parentRunId"
# Values of TAG_ROLE.
ROLE_PARENT, ROLE_TRIAL = "parent", "trial"

PARENT_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation); a batch above them is refused as a whole.
_MAX_PARAM_CHARS = 6000
_MAX_TAG_CHARS = 8000
_MAX_PARAMS_PER_BATCH = 100


# --------------------------------------------------------------------------------------
# Experiments


def experiment_name(study: str) -> str:
    """The MLflow experiment of a study."""
    if not study or not study.strip():
        raise ValueError("a study needs a non-empty name")
    return f"tunegap/{study}"


def ensure_experiment(
    client: mlflow.MlflowClient, name: str, *, artifact_location: str | None = None
) -> str:
    """The id of experiment `name`: created if missing, restored if it was deleted (MLflow
    refuses to create a second experiment under a deleted one's name)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location or default_artifact_location(client.tracking_uri, name)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another process may have created it between the look-up and the create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --------------------------------------------------------------------------------------
# Values


def param_value(value: Any) -> str:
    """A config or study value as an MLflow param string (None -> "none")."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple | set):
        items = sorted(value, key=str) if isinstance(value, set) else value
        return json.dumps(items, sort_keys=True, default=str)
    return str(value)


# Knobs whose None has a number of its own: plain BatchNorm is a ghost batch size of 0, so
# the UI's charts and parallel coordinates sort the column as numbers, not text.
NONE_AS_NUMBER: dict[str, int] = {"ghost_batch_size": 0}


def config_param_value(key: str, value: Any) -> str:
    """A trial config value as a child run param: like `param_value`, except that a knob of
    `NONE_AS_NUMBER` logs its None as that number (``ghost_batch_size`` None -> "0")."""
    if value is None and key in NONE_AS_NUMBER:
        return str(NONE_AS_NUMBER[key])
    return param_value(value)


def metric_value(value: Any) -> float | None:
    """A result value as an MLflow metric (bool -> 0/1), or None where it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars, 0-d arrays
        try:
            return metric_value(value.item())
        except (TypeError, ValueError):
            return None
    return None


def now_ms() -> int:
    """The time as MLflow stamps metrics: milliseconds since the epoch."""
    return int(time.time() * 1000)


def run_name_for(config: Mapping[str, Any]) -> str:
    """The child run name of a trial, e.g. ``B1024-g128-a0.5-rmatched-s0``."""
    keys = ("batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier", "seed")
    b, g, a, r, s = (_short(config.get(k)) for k in keys)
    return f"B{b}-g{g}-a{a}-r{r}-s{s}"


def _short(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------------------
# The study's runs


class StudyTracker:
    """The MLflow runs of one study: its experiment, the parent run and a child per trial.

    Made by the study runner in the driver. Picklable (Tune pickles its callbacks): the
    client is made again on first use, and an unpickled tracker looks its child runs up in
    MLflow before it creates any, so a restored Tuner never duplicates them.

    `tracking_uri` keeps no credentials (`safe_tracking_uri`): those of an http(s) URI go to
    MLflow's environment variables in this process, so the tracker Tune pickles holds none,
    and an unpickled one in the same driver (or one whose driver made a tracker from the full
    URI first, as a resume does) still authenticates.
    """

    def __init__(self, tracking_uri: str, study: str, *, parent_run_id: str | None = None):
        self.tracking_uri = safe_tracking_uri(tracking_uri)
        self.study = study
        self.experiment_name = experiment_name(study)
        self.parent_run_id = parent_run_id
        self._client: mlflow.MlflowClient | None = None
        self._experiment_id: str | None = None
        self._run_ids: dict[str, str] = {}
        self._context_tags: dict[str, str] | None = None
        # True once _run_ids holds every child that MLflow has under the parent.
        self._children_known = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_children_known"] = False
        # `mlflow.user` may be the tracking server's login (MLflow takes it from
        # MLFLOW_TRACKING_USERNAME): Tune's files must not hold it; worked out again on use.
        state["_context_tags"] = None
        return state

    @property
    def client(self) -> mlflow.MlflowClient:
        """The MLflow client, made on first use (a new sqlite store's schema is created
        under a file lock then: `tracking_client`)."""
        if self._client is None:
            self._client = tracking_client(self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            if self.parent_run_id is not None:
                self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
            else:
                self._experiment_id = ensure_experiment(self.client, self.experiment_name)
        return self._experiment_id

    @property
    def source_tags(self) -> dict[str, str]:
        """`context_tags` of this process, worked out once (the git call takes a moment)."""
        if self._context_tags is None:
            self._context_tags = context_tags(code_version())
        return self._context_tags

    # -- parent --------------------------------------------------------------------

    def start_parent(self, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> str:
        """Create the parent run, or reopen it (status RUNNING) when the tracker was given
        `parent_run_id`. Returns its run id. `params` get `code_version` and package
        versions added; on a resume, params already logged are kept and a changed value is
        recorded as tag ``resumed.<key>``."""
        values = {k: param_value(v) for k, v in params.items()}
        if "code_version" not in values:
            values["code_version"] = code_version()
        for key, version in package_versions().items():
            values.setdefault(key, version)
        run_tags = {k: param_value(v) for k, v in (tags or {}).items()}
        if self.parent_run_id is None:
            return self._create_parent(values, run_tags)
        return self._reopen_parent(values, run_tags)

    def adopt_parent(self, parent_run_id: str) -> None:
        """Switch to another parent run (the one a restored Tune state names): its experiment
        and children are looked up again on next use."""
        self.parent_run_id = parent_run_id
        self._experiment_id = None
        self._run_ids.clear()
        self._children_known = False

    def _create_parent(self, params: dict[str, str], tags: dict[str, str]) -> str:
        self._experiment_id = ensure_experiment(self.client, self.experiment_name)
        self._context_tags = context_tags(params["code_version"])
        system_tags = {**self._context_tags, TAG_STUDY: self.study, TAG_ROLE: ROLE_PARENT}
        run = self.client.create_run(
            self._experiment_id,
            run_name=f"{self.study}-{datetime.now():%Y%m%d-%H%M%S}",
            tags={**tags, **system_tags},
        )
        self.parent_run_id = run.info.run_id
        self._children_known = True  # a new parent has no children yet
        self._log_params(self.parent_run_id, params)
        return self.parent_run_id

    def _reopen_parent(self, params: dict[str, str], tags: dict[str, str]) -> str:
        run_id = self._require_parent()
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            raise ValueError(
                f"parent run {run_id} cannot be resumed: {one_line(exc.message)}"
            ) from exc
        study = run.data.tags.get(TAG_STUDY)
        if study != self.study or run.data.tags.get(TAG_ROLE) != ROLE_PARENT:
            raise ValueError(
                f"run {run_id} is not a parent run of study {self.study!r} "
                f"(its study tag is {study!r}): pass the parent run id of this study"
            )
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        self._experiment_id = run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        logged = run.data.params
        changed = {f"resumed.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
        tags = {**tags, **changed, TAG_RESUMED_AT: datetime.now().isoformat("T", "seconds")}
        self.log_tags(run_id, tags)
        self._log_params(run_id, {k: v for k, v in params.items() if k not in logged})
        return run_id

    def finish_parent(self, status: str = "FINISHED") -> None:
        """End the parent run with status FINISHED, FAILED or KILLED."""
        if status not in PARENT_STATUSES:
            raise ValueError(f"status {status!r} is not allowed: use {', '.join(PARENT_STATUSES)}")
        self.client.set_terminated(self._require_parent(), status=status)

    def discard_parent(self) -> None:
        """Delete the parent run of a study that stopped before any trial: its next start
        makes the study's only parent run."""
        self.client.delete_run(self._require_parent())

    def log_parent_artifacts(
        self, paths: Iterable[Path | str], artifact_path: str | None = None
    ) -> None:
        """Upload files and folders to the parent run; a folder keeps its name."""
        run_id = self._require_parent()
        paths = [Path(p) for p in paths]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"cannot log missing artifact(s): {', '.join(missing)}")
        for path in paths:
            if path.is_dir():
                where = f"{artifact_path}/{path.name}" if artifact_path else path.name
                self.client.log_artifacts(run_id, str(path), artifact_path=where)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_parent_metrics(self, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        """Summary numbers of the study (e.g. how many cells closed the gap), in one call."""
        now = now_ms()
        points = [
            Metric(k, value, now, step)
            for k, v in metrics.items()
            if (value := metric_value(v)) is not None
        ]
        if points:
            self.client.log_batch(self._require_parent(), metrics=points)

    # -- children ------------------------------------------------------------------

    def child_run_for(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """The child run of a trial: found by its ``tunegap.trial_id`` tag under the parent
        when there is one (resume), else created with the config's knobs as params."""
        return self.get_or_create_child(trial_id, config)[0]

    def get_or_create_child(self, trial_id: str, config: Mapping[str, Any]) -> tuple[str, bool]:
        """Like `child_run_for`, and whether this call created the run (then it holds the
        config's params and nothing else yet)."""
        found = self.find_child_run(trial_id)
        if found is not None:
            return found, False
        parent = self._require_parent()
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name_for(config),
            tags={
                **self.source_tags,
                TAG_PARENT: parent,
                TAG_STUDY: self.study,
                TAG_TRIAL_ID: trial_id,
                TAG_ROLE: ROLE_TRIAL,
            },
        )
        run_id = run.info.run_id
        self._run_ids[trial_id] = run_id
        self._log_params(run_id, {k: config_param_value(k, v) for k, v in config.items()})
        return run_id, True

    def find_child_run(self, trial_id: str) -> str | None:
        """The child run of a trial if it has one already; never creates one."""
        if trial_id not in self._run_ids and not self._children_known:
            self._load_children()
        return self._run_ids.get(trial_id)

    def mlflow_run_ids(self) -> dict[str, str]:
        """Trial id -> child run id, read from MLflow, so it also holds the runs that a
        callback unpickled by a restored Tuner made."""
        if self.parent_run_id is None:
            return {}
        self._load_children()
        return dict(self._run_ids)

    def _load_children(self) -> None:
        parent = self._require_parent()
        query = f"tags.`{TAG_PARENT}` = '{parent}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=query,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page:
                trial_id = run.data.tags.get(TAG_TRIAL_ID)
                if trial_id:
                    self._run_ids.setdefault(trial_id, run.info.run_id)
            token = page.token
            if not token:
                break
        self._children_known = True

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("the study has no parent run yet: call start_parent() first")
        return self.parent_run_id

    # -- logging within MLflow's limits --------------------------------------------

    def log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on any run of the study; a value over MLflow's limit is cut."""
        items = [RunTag(k, v[:_MAX_TAG_CHARS]) for k, v in tags.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start : start + _MAX_PARAMS_PER_BATCH])

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = []
        for key, value in params.items():
            if len(value) > _MAX_PARAM_CHARS:
                # MLflow refuses the whole batch for one long value; keep it as a file.
                where = f"params/{key}.txt"
                self.client.log_text(run_id, value, where)
                note = f"… (whole value: artifact {where})"
                value = value[: _MAX_PARAM_CHARS - len(note)] + note
            items.append(Param(key, value))
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + _MAX_PARAMS_PER_BATCH])
