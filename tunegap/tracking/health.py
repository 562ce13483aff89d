"""Whether the tracking store answers now, and MLflow's HTTP retries kept short during a study.

MLflow's client retries a refused connection 7 times with exponential back-off (minutes in
all) before it gives up. During a study the Parquet tables, not MLflow, hold the results, so
a dead server must cost seconds, not minutes: the study bounds the retries, and after the
first failure asks `store_reachable` whether to go on logging at all.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

# Environment variables MLflow reads at each request (mlflow.environment_variables); a value
# the user set wins.
STUDY_HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def store_reachable(uri: str, *, timeout_s: float = 3.0) -> bool:
    """True unless `uri` is an MLflow server that does not answer within `timeout_s`.

    Local stores (sqlite, files) are always "reachable": their failures are errors of the
    call that failed, not of a server that went away.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme not in ("http", "https"):
        return True
    return health_problem(uri, timeout_s=timeout_s) is None


def health_problem(server_uri: str, *, timeout_s: float) -> object | None:
    """Why the MLflow server at `server_uri` does not answer `/health` within `timeout_s`
    (the error's reason), or None when something answered (an HTTP error is an answer:
    whether it is a usable MLflow API is the client's check)."""
    try:
        with urllib.request.urlopen(server_uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return getattr(exc, "reason", exc)


@contextmanager
def bounded_http_retries() -> Iterator[None]:
    """MLflow's HTTP retries bounded to about ten seconds while the block runs."""
    added = [key for key in STUDY_HTTP_SETTINGS if key not in os.environ]
    os.environ.update({key: STUDY_HTTP_SETTINGS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
