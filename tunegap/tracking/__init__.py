"""MLflow tracking for studies: one experiment per study, a parent run per study run, a child
run per Tune trial.

`uri` checks and normalises tracking URIs, `runs` makes the experiment and the runs
(`StudyTracker`), `callback` logs Tune trials to them (`MlflowTrackingCallback`); `text`
cuts messages and tags to size. The names below are the ones the rest of tunegap uses; they
also keep ``tunegap.tracking.MlflowTrackingCallback`` and ``tunegap.tracking.StudyTracker``
importable for Tuners pickled before this became a package.
"""

from tunegap.tracking.callback import LOGGED_METRICS, MlflowTrackingCallback, trial_error_text
from tunegap.tracking.runs import (
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    StudyTracker,
    ensure_experiment,
    experiment_name,
    run_name_for,
)
from tunegap.tracking.uri import TrackingUnavailable, check_tracking_uri

__all__ = [
    "LOGGED_METRICS",
    "TAG_OUTCOME",
    "TAG_PARENT",
    "TAG_ROLE",
    "TAG_STUDY",
    "TAG_TRIAL_ID",
    "MlflowTrackingCallback",
    "StudyTracker",
    "TrackingUnavailable",
    "check_tracking_uri",
    "ensure_experiment",
    "experiment_name",
    "run_name_for",
    "trial_error_text",
]
