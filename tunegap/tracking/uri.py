"""Tracking URIs: normalised so every process writes to the same store, checked before any
trial runs, and kept free of credentials wherever they are stored, pickled or shown.
Imports neither torch nor Ray, so a URI can be checked cheaply.

Credentials
-----------
A URI may carry a user and password (``https://user:token@host``). `redact_uri` is its
form for messages and state files: the whole userinfo becomes ``***``
(``https://***@host``), so a reader sees that credentials were given and none of them.
`safe_tracking_uri` is its form for keeping (a `StudyTracker` pickled by Tune): for
http(s) the userinfo is removed and handed to MLflow through its documented environment
variables ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` of this process
(MLflow's REST client reads them on every request, ``mlflow.utils.credentials``); they win
over values already there and apply to every MLflow server this process talks to. Other
schemes (a database URI such as ``postgresql://user:pw@host/db``) cannot take credentials
from the environment: their safe form is the redacted one, which `tracking_client` maps back
to the full URI within this process only.

sqlite
------
A sqlite store is probed with the standard library first (a folder for a path, a file that
is not a database, a place sqlite cannot write), because MLflow retries a database it cannot
open for minutes. MLflow creates (and migrates) a new database's schema on the first client
use, without a lock across processes, so two studies starting on one new file would race;
`tracking_client` holds a file lock beside the database (``<db>.init.lock``, left there
afterwards) while a process first opens the store.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock, Timeout

from tunegap.text import one_line
from tunegap.tracking.health import health_problem

# scheme://userinfo@ — the last "@" before the path ends the userinfo.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
_USERINFO_ANYWHERE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_REDACTED = "***"
_HTTP_SCHEMES = ("http", "https")
# Longer than creating MLflow's schema from scratch takes (seconds), even on a slow disk.
SCHEMA_LOCK_TIMEOUT_S = 120.0

# Redacted URI -> the full one, for database URIs whose credentials MLflow cannot take from
# the environment; this process only, never pickled.
_FULL_URIS: dict[str, str] = {}
# URIs (as given to MLflow) whose sqlite schema this process has already seen created.
_SCHEMA_READY: set[str] = set()
_STATE_LOCK = threading.Lock()


class TrackingUnavailable(ValueError):
    """The MLflow tracking URI cannot be used (server down, folder missing, ...)."""


# --------------------------------------------------------------------------------------
# Credentials


def redact_uri(uri: str) -> str:
    """`uri` for messages and state files: any user name and password become ``***``
    (``http://user:pw@host:5000`` -> ``http://***@host:5000``); a URI without them is
    returned unchanged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{_REDACTED}@", uri, count=1)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """`uri` without its userinfo, and the user name and password it held (percent-decoded;
    None where absent)."""
    match = _USERINFO.match(uri)
    if match is None:
        return uri, None, None
    bare = match["scheme"] + uri[match.end() :]
    user, colon, password = match["userinfo"].partition(":")
    return bare, urllib.parse.unquote(user), urllib.parse.unquote(password) if colon else None


def safe_tracking_uri(uri: str) -> str:
    """The normalised form of `uri` that may be stored, pickled and shown: it holds no
    credentials, and `tracking_client` still opens it in this process (see the module's
    docstring). Hands http(s) credentials to MLflow's environment variables as a side
    effect, so call it in the process that will talk to MLflow."""
    uri = normalize_tracking_uri(uri)
    bare, user, password = split_credentials(uri)
    if user is None or _is_redacted(uri):
        return bare if _is_http(uri) else uri
    if _is_http(uri):
        _set_mlflow_credentials(user, password)
        return bare
    shown = redact_uri(uri)
    with _STATE_LOCK:
        _FULL_URIS[shown] = uri
    return shown


def _is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme.lower() in _HTTP_SCHEMES


def _is_redacted(uri: str) -> bool:
    match = _USERINFO.match(uri)
    return match is not None and match["userinfo"] == _REDACTED


def _set_mlflow_credentials(user: str, password: str | None) -> None:
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def _scrub(text: str, uri: str) -> str:
    """`text` with every URI's userinfo redacted and the secret of `uri` (its password, or
    its user where it has no password: a token) replaced, in case a library echoed them."""
    text = _USERINFO_ANYWHERE.sub(lambda m: f"{m['scheme']}{_REDACTED}@", text)
    _, user, password = split_credentials(uri)
    secret = password if password is not None else user
    if secret and secret != _REDACTED:
        text = text.replace(secret, _REDACTED)
    return text


# --------------------------------------------------------------------------------------
# Store locations


def normalize_tracking_uri(uri: str) -> str:
    """Make a relative sqlite path absolute, so a later resume from another folder (or a
    tracker unpickled by Tune) writes to the same database."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{path.absolute().as_posix()}" + (f"?{query}" if query else "")


def default_artifact_location(tracking_uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database; elsewhere the
    store's own default (the server decides, or the file store keeps them inside)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.absolute().parent / "mlartifacts" / name).as_uri()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = urllib.parse.unquote(uri[len("sqlite:///") :].partition("?")[0])
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


# --------------------------------------------------------------------------------------
# Clients and checks


def tracking_client(uri: str, *, timeout_s: float = 5.0) -> mlflow.MlflowClient:
    """An `mlflow.MlflowClient` for `uri` (full, or as `safe_tracking_uri` gave it).

    On this process's first use of a sqlite store the file is probed (`TrackingUnavailable`
    within seconds where sqlite cannot use it) and MLflow creates or checks its schema while
    a file lock beside the database is held, so concurrent studies do not race.
    """
    target = safe_tracking_uri(uri)
    with _STATE_LOCK:
        target = _FULL_URIS.get(target, target)
        ready = target in _SCHEMA_READY
    path = sqlite_path(target)
    if path is None or ready:
        return mlflow.MlflowClient(target)
    shown = redact_uri(target)
    _check_sqlite(path, shown, timeout_s)
    with _schema_lock(path, shown):
        # MLflow builds its store (creating or migrating the schema) when the client is made
        # or first used: both under the lock.
        client = mlflow.MlflowClient(target)
        client.search_experiments(max_results=1)
    with _STATE_LOCK:
        _SCHEMA_READY.add(target)
    return client


def check_tracking_uri(uri: str, *, timeout_s: float = 5.0) -> None:
    """Fail fast, before any trial runs, when `uri` cannot be used for tracking.

    http(s): the server must answer ``/health`` within `timeout_s` (a plain probe, because
    MLflow's own client retries a refused connection for minutes); credentials in the URI go
    to MLflow as `safe_tracking_uri` says. sqlite: the folder must exist and sqlite must be
    able to open or create the file and write to it. file stores: the folder must be
    writable. Then the client must be able to list experiments. Raises `TrackingUnavailable`
    with one line naming the URI, redacted by `redact_uri`, and what to do.
    """
    shown = redact_uri(uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in _HTTP_SCHEMES:
        _probe_http(split_credentials(uri)[0], shown, timeout_s)
    elif scheme in ("", "file"):
        _check_file_store(uri, shown)
    try:
        tracking_client(uri, timeout_s=timeout_s).search_experiments(max_results=1)
    except TrackingUnavailable:
        raise
    except Exception as exc:
        raise TrackingUnavailable(
            f"MLflow tracking at {shown} cannot be used: {_scrub(one_line(exc), uri)}"
        ) from exc


def _probe_http(bare_uri: str, shown: str, timeout_s: float) -> None:
    reason = health_problem(bare_uri, timeout_s=timeout_s)
    if reason is not None:
        raise TrackingUnavailable(
            f"MLflow server at {shown} cannot be reached ({one_line(reason)}): start it, e.g. "
            "`mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`, or pass a "
            "reachable tracking URI (sqlite:///mlflow.db works without a server)"
        )


def _check_sqlite(path: Path, shown: str, timeout_s: float) -> None:
    where = f"MLflow tracking at {shown}"
    folder = path.absolute().parent
    if not folder.is_dir():
        raise TrackingUnavailable(f"{where}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        # sqlite writes a journal beside the database, so the folder must be writable too.
        raise TrackingUnavailable(f"{where}: folder {folder} is not writable")
    if path.is_dir():
        raise TrackingUnavailable(
            f"{where}: {path} is a folder, not a database file; name a file in it, "
            f"e.g. sqlite:///{(path / 'mlflow.db').absolute().as_posix()}"
        )
    if path.is_file() and path.stat().st_size and not _has_sqlite_header(path):
        # sqlite would take a file shorter than its header for an empty database and write
        # MLflow's tables over the user's file.
        raise TrackingUnavailable(
            f"{where}: {path} is not an SQLite database; name a new file or an MLflow database"
        )
    try:
        _probe_sqlite(path, timeout_s)
    except sqlite3.Error as exc:
        raise TrackingUnavailable(f"{where}: {_sqlite_problem(path, exc)}") from None


def _has_sqlite_header(path: Path) -> bool:
    try:
        with open(path, "rb") as db:
            return db.read(16) == b"SQLite format 3\x00"
    except OSError:
        return True  # unreadable: sqlite's own probe says why


def _probe_sqlite(path: Path, timeout_s: float) -> None:
    """Open (or create, empty) the database, read its schema and take its write lock."""
    try:
        with closing(sqlite3.connect(path, timeout=timeout_s, isolation_level=None)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise
        # Another process is writing to it (creating the schema, say): a usable database.


def _sqlite_problem(path: Path, exc: sqlite3.Error) -> str:
    kind = getattr(exc, "sqlite_errorname", "")
    if kind == "SQLITE_NOTADB":
        return f"{path} is not an SQLite database ({exc}); name a new file or an MLflow database"
    if kind == "SQLITE_CANTOPEN":
        return f"sqlite cannot open or create {path} ({exc}); use a file in a writable folder"
    if kind == "SQLITE_READONLY":
        return f"{path} is read-only ({exc}); use a file in a writable folder"
    return f"{path} cannot be used as an SQLite database ({one_line(exc)})"


@contextmanager
def _schema_lock(path: Path, shown: str) -> Iterator[None]:
    lock = FileLock(f"{path.absolute()}.init.lock")
    try:
        lock.acquire(timeout=SCHEMA_LOCK_TIMEOUT_S)
    except Timeout:
        raise TrackingUnavailable(
            f"MLflow tracking at {shown}: lock {lock.lock_file} was not free within "
            f"{SCHEMA_LOCK_TIMEOUT_S:g} s (another process creating the database schema?); "
            "try again when it has finished"
        ) from None
    except OSError as exc:
        raise TrackingUnavailable(
            f"MLflow tracking at {shown}: cannot create lock file {lock.lock_file} ({exc})"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _check_file_store(uri: str, shown: str) -> None:
    parsed = urllib.parse.urlparse(uri)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else uri).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise TrackingUnavailable(
            f"MLflow tracking at {shown}: {existing or path} is not a writable folder"
        )


def store_name(tracking_uri: str) -> str:
    """The tracking store as state files and messages name it: absolute, no credentials."""
    return redact_uri(safe_tracking_uri(normalize_tracking_uri(tracking_uri)))
