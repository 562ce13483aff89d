"""MLflow tracking for studies: one experiment per study, a parent run per study run, a
child run per Tune trial. Everything goes through an explicit `mlflow.MlflowClient`; nothing
here touches MLflow's global tracking URI or active run, so several studies (or tests) can
share one process.

Layout
------
experiment ``tunegap/<study>``
    With a sqlite store its artifacts go next to the database, in
    ``<db folder>/mlartifacts/tunegap/<study>``, not in the current directory's ``./mlruns``.

parent run ``<study>-<YYYYmmdd-HHMMSS>`` (one per run of the study; a resume reopens it)
    tags    ``tunegap.study``, ``tunegap.role=parent``, ``mlflow.source.git.commit``
            (where known), the runner's tags, ``tunegap.resumed_at`` after a resume,
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
    params  every knob of the trial config (None -> "none"), and from its first result the
            resolved regime: ``resolved_lr``, ``resolved_epochs``, ``resolved_decay_epochs``,
            ``resolved_multiplier``, ``resolved_total_updates``, ``resolved_lr_schedule`` and
            ``resolved_weight_decay_schedule`` ("epoch:value" where the value changes, e.g.
            "0:0.1,81:0.01").
    metrics one point per epoch, all in a single ``log_batch`` call: `LOGGED_METRICS`
            (``diverged`` as 0/1). NaN (a diverged epoch) is logged as NaN.

Step convention: ``step = updates`` (weight updates so far), so the curves of different batch
sizes line up by updates, the way the paper compares them. ``epoch`` is a metric too.

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

import json
import logging
import math
import numbers
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

from tunegap.metrics import METRIC_NAMES, OPTIONAL_METRICS

logger = logging.getLogger(__name__)

TAG_STUDY = "tunegap.study"
TAG_TRIAL_ID = "tunegap.trial_id"
TAG_ROLE = "tunegap.role"
TAG_OUTCOME = "outcome"
TAG_ERROR = "error"
TAG_FAILURES = "tunegap.failures"
TAG_PARENT = "mlflow.parentRunId"

# The engine's per-epoch metrics plus `diverged` as 0/1.
LOGGED_METRICS: tuple[str, ...] = (*METRIC_NAMES, "diverged")
RESOLVED_PREFIX = "resolved_"
PACKAGES = ("torch", "ray", "mlflow", "optuna", "tunegap")
PARENT_STATUSES = ("FINISHED", "FAILED", "KILLED")
ERROR_CHARS = 5000

# The metric that tells how far a run got: always present and finite, equal to the step.
_PROGRESS_METRIC = "updates"
# MLflow's limits (mlflow.utils.validation); a batch above them is refused as a whole.
_MAX_PARAM_CHARS = 6000
_MAX_TAG_CHARS = 8000
_MAX_PARAMS_PER_BATCH = 100


class TrackingUnavailable(ValueError):
    """The MLflow tracking URI cannot be used (server down, folder missing, ...)."""


# --------------------------------------------------------------------------------------
# Experiments and URIs


def experiment_name(study: str) -> str:
    """The MLflow experiment of a study."""
    if not study or not study.strip():
        raise ValueError("a study needs a non-empty name")
    return f"tunegap/{study}"


def normalize_tracking_uri(uri: str) -> str:
    """Make a relative sqlite path absolute, so a later resume from another folder (or a
    tracker unpickled by Tune) writes to the same database."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{path.absolute().as_posix()}" + (f"?{query}" if query else "")


def default_artifact_location(tracking_uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database; elsewhere the
    store's own default (the server decides, or the file store keeps them inside)."""
    path = _sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.absolute().parent / "mlartifacts" / name).as_uri()


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


def check_tracking_uri(uri: str, *, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial runs, when `uri` cannot be used for tracking.

    http(s): the server must answer ``/health`` within `timeout_s` (a plain probe, because
    MLflow's own client retries a refused connection for minutes). sqlite and file stores:
    the folder must exist and be writable. Then the client must be able to list experiments.
    Raises `TrackingUnavailable` with one line that says what to do.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _probe_http(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        _check_file_store(uri)
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailable(
            f"MLflow tracking at {uri} cannot be used: {_one_line(exc)}"
        ) from exc


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = urllib.parse.unquote(uri[len("sqlite:///") :].partition("?")[0])
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


def _probe_http(uri: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        # Something answered; whether it is a usable MLflow API is the client's check.
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(
            f"MLflow server at {uri} cannot be reached ({_one_line(reason)}): start it, e.g. "
            "`mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`, or pass a "
            "reachable tracking URI (sqlite:///mlflow.db works without a server)"
        ) from exc


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    folder = path.absolute().parent
    if not folder.is_dir():
        raise TrackingUnavailable(
            f"MLflow tracking at {uri}: folder {folder} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        # sqlite writes a journal beside the database, so the folder must be writable too.
        raise TrackingUnavailable(f"MLflow tracking at {uri}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise TrackingUnavailable(f"MLflow tracking at {uri}: {path} is not writable")


def _check_file_store(uri: str) -> None:
    parsed = urllib.parse.urlparse(uri)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else uri).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise TrackingUnavailable(
            f"MLflow tracking at {uri}: {existing or path} is not a writable folder"
        )


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


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars, 0-d arrays
        try:
            return _metric_value(value.item())
        except (TypeError, ValueError):
            return None
    return None


def _one_line(value: Any, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str, limit: int) -> str:
    """Keep the first line (where Ray names the trial) and the end (where the exception is)."""
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][:200]
    return f"{head}\n…\n{text[-(limit - len(head) - 3) :]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def code_version() -> str:
    """The git commit of the tunegap checkout (``+dirty`` with uncommitted changes to
    tracked files), or the package version where it is not a git checkout."""
    here = str(Path(__file__).resolve().parent)
    try:
        commit = _git(here, "rev-parse", "HEAD")
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return f"tunegap-{_package_version('tunegap')}"
    return commit + ("+dirty" if dirty else "")


def _git(folder: str, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", folder, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def package_versions() -> dict[str, str]:
    """``version.<package>`` params for the packages a result depends on."""
    return {f"version.{name}": _package_version(name) for name in PACKAGES}


# --------------------------------------------------------------------------------------
# The study's runs


class StudyTracker:
    """The MLflow runs of one study: its experiment, the parent run and a child per trial.

    Made by the study runner in the driver. Picklable (Tune pickles its callbacks): the
    client is made again on first use, and an unpickled tracker looks its child runs up in
    MLflow before it creates any, so a restored Tuner never duplicates them.
    """

    def __init__(self, tracking_uri: str, study: str, *, parent_run_id: str | None = None):
        self.tracking_uri = normalize_tracking_uri(tracking_uri)
        self.study = study
        self.experiment_name = experiment_name(study)
        self.parent_run_id = parent_run_id
        self._client: mlflow.MlflowClient | None = None
        self._experiment_id: str | None = None
        self._run_ids: dict[str, str] = {}
        # True once _run_ids holds every child that MLflow has under the parent.
        self._children_known = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_children_known"] = False
        return state

    @property
    def client(self) -> mlflow.MlflowClient:
        if self._client is None:
            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            if self.parent_run_id is not None:
                self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
            else:
                self._experiment_id = ensure_experiment(self.client, self.experiment_name)
        return self._experiment_id

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

    def _create_parent(self, params: dict[str, str], tags: dict[str, str]) -> str:
        self._experiment_id = ensure_experiment(self.client, self.experiment_name)
        system_tags = {TAG_STUDY: self.study, TAG_ROLE: "parent"}
        commit = re.match(r"[0-9a-f]{40}", params["code_version"])
        if commit:
            # The UI shows this system tag as the run's source version.
            system_tags["mlflow.source.git.commit"] = commit.group(0)
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
                f"parent run {run_id} cannot be resumed: {_one_line(exc.message)}"
            ) from exc
        study = run.data.tags.get(TAG_STUDY)
        if study != self.study or run.data.tags.get(TAG_ROLE) != "parent":
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
        tags = {**tags, **changed, "tunegap.resumed_at": datetime.now().isoformat("T", "seconds")}
        self._log_tags(run_id, tags)
        self._log_params(run_id, {k: v for k, v in params.items() if k not in logged})
        return run_id

    def finish_parent(self, status: str = "FINISHED") -> None:
        """End the parent run with status FINISHED, FAILED or KILLED."""
        if status not in PARENT_STATUSES:
            raise ValueError(f"status {status!r} is not allowed: use {', '.join(PARENT_STATUSES)}")
        self.client.set_terminated(self._require_parent(), status=status)

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
        now = _now_ms()
        points = [
            Metric(k, value, now, step)
            for k, v in metrics.items()
            if (value := _metric_value(v)) is not None
        ]
        if points:
            self.client.log_batch(self._require_parent(), metrics=points)

    # -- children ------------------------------------------------------------------

    def child_run_for(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """The child run of a trial: found by its ``tunegap.trial_id`` tag under the parent
        when there is one (resume), else created with the config's knobs as params."""
        return self._child_run(trial_id, config)[0]

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

    def _child_run(self, trial_id: str, config: Mapping[str, Any]) -> tuple[str, bool]:
        found = self.find_child_run(trial_id)
        if found is not None:
            return found, False
        parent = self._require_parent()
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name_for(config),
            tags={
                TAG_PARENT: parent,
                TAG_STUDY: self.study,
                TAG_TRIAL_ID: trial_id,
                TAG_ROLE: "trial",
            },
        )
        run_id = run.info.run_id
        self._run_ids[trial_id] = run_id
        self._log_params(run_id, {k: param_value(v) for k, v in config.items()})
        return run_id, True

    def _load_children(self) -> None:
        parent = self._require_parent()
        query = f"tags.`{TAG_PARENT}` = '{parent}' and tags.`{TAG_ROLE}` = 'trial'"
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

    # -- helpers -------------------------------------------------------------------

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

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, v[:_MAX_TAG_CHARS]) for k, v in tags.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start : start + _MAX_PARAMS_PER_BATCH])


# --------------------------------------------------------------------------------------
# The Tune callback


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
    study (`raise_errors=True` re-raises, for tests). See the module docstring for tags,
    outcomes and statuses.
    """

    def __init__(
        self,
        tracker: StudyTracker,
        *,
        metric_names: Sequence[str] = LOGGED_METRICS,
        raise_errors: bool = False,
    ) -> None:
        self.tracker = tracker
        self.metric_names = tuple(metric_names)
        self.raise_errors = raise_errors
        self.errors: list[str] = []
        self._trials: dict[str, _TrialLog] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Progress is re-read from MLflow after unpickling; a pickled copy would be stale.
        state["_trials"] = {}
        state["_pool"] = None
        state["_pending"] = []
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
                self._run_safely("end", trial_id, self._close, log, "interrupted", "KILLED")

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
            self.tracker.parent_run_id = parent
            self.tracker._experiment_id = None
            self.tracker._run_ids.clear()
            self.tracker._children_known = False

    # -- work ----------------------------------------------------------------------

    @property
    def _client(self) -> mlflow.MlflowClient:
        return self.tracker.client

    def _open(self, trial: Any) -> _TrialLog:
        log = self._trials.get(trial.trial_id)
        if log is None:
            run_id, created = self.tracker._child_run(trial.trial_id, dict(trial.config))
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
        step = _step_of(result)
        if step <= log.last_step:
            return  # re-reported after a restore from an older checkpoint: already logged
        now = _now_ms()
        metrics = [
            Metric(key, value, now, step)
            for key in self.metric_names
            if key in result
            and (value := _metric_value(result[key])) is not None
            # Probes that did not run this epoch report NaN: no point, not a NaN point.
            and not (key in OPTIONAL_METRICS and not math.isfinite(value))
        ]
        params = [
            Param(key, param_value(value))
            for key, value in result.items()
            if key.startswith(RESOLVED_PREFIX) and key not in log.params
        ]
        self._client.log_batch(log.run_id, metrics=metrics, params=params)
        log.params.update(p.key for p in params)
        log.last_step = step

    def _complete(self, trial: Any) -> None:
        last = trial.last_result or {}
        known = trial.trial_id in self._trials
        if not known and self.tracker.find_child_run(trial.trial_id) is None:
            # Stopped before it ever started (e.g. a pending trial at the end of a budget).
            return
        self._close(self._open(trial), _outcome(last), "FINISHED")

    def _recover(self, trial: Any) -> None:
        log = self._open(trial)
        tags = {
            TAG_FAILURES: str(trial.num_failures),
            "tunegap.last_error": _clip(_error_text(trial), ERROR_CHARS),
        }
        self.tracker._log_tags(log.run_id, tags)

    def _error(self, trial: Any) -> None:
        log = self._open(trial)
        tags = {
            TAG_ERROR: _clip(_error_text(trial), ERROR_CHARS),
            TAG_FAILURES: str(trial.num_failures),
        }
        self.tracker._log_tags(log.run_id, tags)
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            self._client.log_artifact(log.run_id, error_file, artifact_path="error")
        self._close(log, "error", "FAILED")

    def _close(self, log: _TrialLog, outcome: str, status: str) -> None:
        self.tracker._log_tags(log.run_id, {TAG_OUTCOME: outcome})
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
        try:
            work(*args)
        except Exception as exc:
            if self.raise_errors:
                raise
            trial_id = getattr(trial, "trial_id", trial)
            message = f"MLflow tracking ({what}) for trial {trial_id} failed: {_one_line(exc)}"
            self.errors.append(message)
            logger.warning(message)


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


def _step_of(result: Mapping[str, Any]) -> int:
    updates = _metric_value(result.get("updates"))
    if updates is not None and math.isfinite(updates):
        return int(updates)
    # A trainable without an update count: fall back on Tune's iteration counter.
    return int(result.get("training_iteration", 0))


def _outcome(last: Mapping[str, Any]) -> str:
    if last.get("diverged"):
        return "diverged"
    epoch = _metric_value(last.get("epoch"))
    planned = _metric_value(last.get("resolved_epochs"))
    if epoch is not None and planned is not None and epoch < planned:
        return "stopped"
    return "completed"


def _error_text(trial: Any) -> str:
    error_file = getattr(trial, "error_file", None)
    text = ""
    if error_file and Path(error_file).is_file():
        text = Path(error_file).read_text(errors="replace")
        # Tune appends one "Failure # n (occurred at ...)" block per failure; keep the last.
        marker = text.rfind("Failure # ")
        if marker > 0:
            text = text[marker:]
    return text.strip() or "the trial failed; Tune left no error file"
