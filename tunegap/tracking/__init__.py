"""MLflow tracking for studies: one experiment per study, a parent run per study run, a child
run per Tune trial.

`uri` checks and normalises tracking URIs and keeps credentials out of them
(`redact_uri` for messages and state files), `runs` makes the experiment and the runs
(`StudyTracker`), `callback` logs Tune trials to them (`MlflowTrackingCallback`); `text`
cuts messages and tags to size. The names below are the ones the rest of tunegap uses; they
also keep ``tunegap.tracking.MlflowTrackingCallback`` and ``tunegap.tracking.StudyTracker``
importable for Tuners pickled before this became a package.
"""

from tunegap.tracking.callback import MlflowTrackingCallback, trial_error_text
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
from tunegap.tracking.uri import (
    TrackingUnavailable,
    check_tracking_uri,
    redact_uri,
    tracking_client,
)

__all__ = [
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
    "redact_uri",
    "run_name_for",
    "tracking_client",
    "trial_error_text",
]
