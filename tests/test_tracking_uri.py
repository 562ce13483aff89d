"""Tracking URIs: unusable sqlite stores fail fast, concurrent studies on one new sqlite file
both run, and credentials in a URI reach MLflow but never a pickle or a message.

Real MLflow throughout: sqlite files in tmp_path, real processes for the schema race, and a
real `mlflow server` on 127.0.0.1 (without auth: this environment lacks MLflow's auth extra,
and such a server ignores credentials). What MLflow sends as credentials is read off the
wire by a plain recording HTTP server, which stands in for an auth-enabled MLflow server.
"""

from __future__ import annotations

import base64
import json
import pickle
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import mlflow
import pytest
from ray import cloudpickle
from study_procs import HANG_S, MlflowServer

from tunegap.tracking import (
    MlflowTrackingCallback,
    StudyTracker,
    TrackingUnavailable,
    check_tracking_uri,
    redact_uri,
)

USER, SECRET = "alice-7f3", "s3cr3t-pw-91"

# Ray workers cannot import this test module: ship its trainable by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def _restore_credential_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tracker hands URI credentials to MLflow's variables of this process: undo that.
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# --- redact_uri -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:pass@host:5000", "http://***@host:5000"),
        ("https://user:tok%40en@mlflow.example.org/path?x=1", "https://***@mlflow.example.org/path?x=1"),
        ("https://ghp_token@host", "https://***@host"),
        ("https://a:b@c@host:1/", "https://***@host:1/"),  # the last "@" ends the userinfo
        ("postgresql://bob:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("mlruns", "mlruns"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


# --- unusable sqlite stores ----------------------------------------------------------------


def _folder_as_path(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "store").mkdir()
    return tmp_path / "store", "is a folder, not a database file"


def _text_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    return tmp_path / "notes.txt", "is not an SQLite database"


def _under_proc(tmp_path: Path) -> tuple[Path, str]:
    return Path("/proc/tunegap-mlflow.db"), "sqlite cannot open or create /proc/tunegap-mlflow.db"


@pytest.mark.parametrize("case", [_folder_as_path, _text_file, _under_proc])
@pytest.mark.parametrize("via", ["check", "tracker"])
def test_unusable_sqlite_store_fails_in_seconds(tmp_path: Path, case, via: str) -> None:
    path, problem = case(tmp_path)
    uri = f"sqlite:///{path}"
    before = sorted(tmp_path.rglob("*"))
    content = path.read_bytes() if path.is_file() else None
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        if via == "check":
            check_tracking_uri(uri)
        else:
            StudyTracker(uri, "unusable").start_parent({"workload": "x"})
    assert time.monotonic() - start < 30  # MLflow itself retries such a file for ~100 s
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"MLflow tracking at {uri}: ")
    assert problem in message
    assert sorted(tmp_path.rglob("*")) == before  # no lock file, no database left behind
    assert not Path("/proc/tunegap-mlflow.db").exists()
    if content is not None:
        assert path.read_bytes() == content


def test_usable_sqlite_store_is_created(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/new.db"
    check_tracking_uri(uri)
    tables = sqlite3.connect(tmp_path / "new.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    ).fetchall()
    assert ("experiments",) in tables
    check_tracking_uri(uri)  # an existing MLflow database passes too


# --- concurrent studies on one new sqlite file ---------------------------------------------

# One study's start, in its own process: ready once imported, then it waits for "go", so
# that every process creates the schema at the same moment. Odd ones skip the check, so
# the tracker's own first use must take the lock too.
_STUDY_START = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tunegap.tracking import StudyTracker, check_tracking_uri

    uri, index, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    if index % 2 == 0:
        check_tracking_uri(uri)
    tracker = StudyTracker(uri, f"race{index}")
    tracker.start_parent({"workload": "mnist1d-cnn"})
    tracker.child_run_for("t0", {"seed": index})
    tracker.finish_parent()
    """
)


@pytest.mark.slow
def test_concurrent_studies_share_a_new_sqlite_file(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/shared.db"
    procs = 4
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _STUDY_START, uri, str(i), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(procs)
    ]
    try:
        deadline = time.monotonic() + HANG_S
        while len(list(tmp_path.glob("ready-*"))) < procs:
            assert all(p.poll() is None for p in started), "a study process died on import"
            assert time.monotonic() < deadline, "the study processes never got ready"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=HANG_S)[0] for p in started]
    finally:
        for p in started:
            p.kill()
    for proc, output in zip(started, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    client = mlflow.MlflowClient(uri)
    for i in range(procs):
        experiment = client.get_experiment_by_name(f"tunegap/race{i}")
        assert experiment is not None
        assert len(client.search_runs([experiment.experiment_id])) == 2  # parent and child


# --- credentials ---------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Answers like an MLflow server with nothing in it, and keeps each Authorization
    header it was sent."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = b"OK" if self.path.startswith("/health") else json.dumps({}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer  # the names http.server calls

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _api_auth(seen: list[tuple[str, str | None]]) -> set[str | None]:
    return {auth for path, auth in seen if path.startswith("/api/")}


def test_credentials_reach_mlflow_but_not_the_pickle(recorder) -> None:
    address, seen = recorder
    uri = f"http://{USER}:{SECRET}@{address}"
    basic = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    check_tracking_uri(uri)
    assert _api_auth(seen) == {basic}

    tracker = StudyTracker(uri, "creds")
    assert tracker.tracking_uri == f"http://{address}"
    frozen = pickle.dumps(MlflowTrackingCallback(tracker))
    assert USER.encode() not in frozen and SECRET.encode() not in frozen

    seen.clear()
    thawed = pickle.loads(frozen).tracker  # as Tune restores it, in the same driver
    thawed.client.search_experiments(max_results=1)
    assert _api_auth(seen) == {basic}


def test_database_uri_keeps_its_password_out_of_the_pickle() -> None:
    # MLflow cannot take a database's credentials from its environment: the tracker keeps
    # the redacted URI (and this process the full one).
    tracker = StudyTracker("postgresql://bob:pw-db-77@db.invalid:5432/mlflow", "pg")
    assert tracker.tracking_uri == "postgresql://***@db.invalid:5432/mlflow"
    assert b"pw-db-77" not in pickle.dumps(tracker)


def test_unreachable_server_message_hides_credentials() -> None:
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        check_tracking_uri(f"https://{USER}:{SECRET}@127.0.0.1:{port}")
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert f"https://***@127.0.0.1:{port} cannot be reached" in message
    assert SECRET not in message and USER not in message


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_real_server_with_credentials_in_the_uri(
    ray_session, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from ray import tune

    uri = mlflow_server.uri.replace("http://", f"http://{USER}:{SECRET}@")
    check_tracking_uri(uri)
    tracker = StudyTracker(uri, "server-creds")
    parent = tracker.start_parent({"workload": "mnist1d-cnn"})
    tuner = tune.Tuner(
        _one_epoch,
        param_space={"seed": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(
            name="study",
            storage_path=str(tmp_path / "ray"),
            callbacks=[MlflowTrackingCallback(tracker, raise_errors=True)],
            verbose=0,
        ),
    )
    tuner.fit()
    tracker.finish_parent()

    # Tune's own state (tuner.pkl, experiment state, trial results) holds no credentials.
    files = [p for p in (tmp_path / "ray").rglob("*") if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in files)
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and USER.encode() not in data, path

    client = mlflow.MlflowClient(mlflow_server.uri)
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(tracker.mlflow_run_ids()) == 2


def _one_epoch(config: dict) -> None:
    from ray import tune

    tune.report({"epoch": 1, "updates": 1, "test_acc": 0.5, "seed": config["seed"]})
