"""Tracking URIs: normalised so every process writes to the same store, and checked before
any trial runs. Imports neither torch nor Ray, so a URI can be checked cheaply."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow

from tunegap.tracking.text import one_line


class TrackingUnavailable(ValueError):
    """The MLflow tracking URI cannot be used (server down, folder missing, ...)."""


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
            f"MLflow tracking at {uri} cannot be used: {one_line(exc)}"
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
            f"MLflow server at {uri} cannot be reached ({one_line(reason)}): start it, e.g. "
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
