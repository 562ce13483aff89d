"""Faults injected into running studies with real processes and signals: Ctrl-C, the MLflow
server SIGKILLed, the storage turned read-only. Each fault must cost no finished trial, and a
`--resume` must finish the study with every trial once in Parquet and in MLflow, no epoch
logged twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from ballast import fill
from mlflow_checks import trial_runs_logged_once
from study_procs import (
    HANG_S,
    MlflowServer,
    kill_group,
    regime_study,
    remount,
    run_dirs,
    signal_group,
    start,
    wait_for_epochs,
)

from tunegap.analysis.tables import read_tables

pytestmark = pytest.mark.slow
EXPERIMENT = "tunegap/regime_length"


def finish(proc: subprocess.Popen, timeout_s: float = HANG_S) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"the study did not end within {timeout_s} s") from None


def error_lines(log: Path | str) -> list[str]:
    """The lines a user reads as tunegap's verdict on the run (not Ray's or MLflow's logs),
    from a log file or from captured text."""
    text = log.read_text() if isinstance(log, Path) else log
    return [ln for ln in text.splitlines() if "tunegap.studies.regime_length:" in ln]


def full_disk_line(stderr: str) -> str:
    """The study's one line for a full disk, with no traceback beside it."""
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert "No space left" in line and "--resume" in line and "free space on it" in line
    assert "storage path the run folder" not in line  # a write without a file name
    return line


def resume_after_freeing(ballast: Path, command: list[str], storage: Path,
                         tracking_uri: str) -> None:
    """Free the space, run the same command with --resume: it finishes every trial once."""
    ballast.unlink()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert_complete(storage, tracking_uri)


def fill_before(function: str, command: list[str], mount: Path
                ) -> subprocess.CompletedProcess:
    """Run the study `command` through fill_before.py, which fills `mount` as the study
    calls `tunegap.runner.run.<function>`."""
    filler = [sys.executable, str(Path(__file__).with_name("fill_before.py")), *command[2:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNEGAP_TEST_FILL_MOUNT": str(mount),
           "TUNEGAP_TEST_FILL_BEFORE": function}
    return subprocess.run(filler, env=env, capture_output=True, text=True, timeout=HANG_S)


def assert_complete(storage: Path, tracking_uri: str) -> None:
    (run_dir,) = run_dirs(storage)
    trials, epochs = read_tables(run_dir)
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["outcome"]) == {"completed"}
    assert sorted(trials["epochs_done"]) == [2, 2, 80]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert trials["mlflow_run_id"].notna().all()
    children = trial_runs_logged_once(tracking_uri, EXPERIMENT, trials["trial_id"])
    client = mlflow.MlflowClient(tracking_uri)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
        steps = client.get_metric_history(run.info.run_id, "test_acc")
        assert len(steps) == int(run.data.params["resolved_epochs"])


def test_ctrl_c_stops_in_one_line_marks_the_parent_killed_and_resumes(tmp_path, data_dir):
    storage, uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    proc = start(command, tmp_path / "first.log")
    wait_for_epochs(proc, storage, 15)
    signal_group(proc, signal.SIGINT)
    assert finish(proc) == 130
    text = (tmp_path / "first.log").read_text()
    assert "Traceback" not in text
    (line,) = error_lines(tmp_path / "first.log")
    assert "interrupted" in line and "--resume" in line
    (run_dir,) = run_dirs(storage)
    # Nothing was computed from the unfinished trials.
    assert not (run_dir / "trials.parquet").exists() and not (run_dir / "summary.md").exists()
    client = mlflow.MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        "tags.`tunegap.role` = 'parent'",
    )
    assert parent.info.status == "KILLED"

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(storage, uri)


def test_tracking_server_killed_mid_study_loses_nothing(tmp_path, data_dir):
    server = MlflowServer(tmp_path).start()
    storage = tmp_path / "results"
    command = regime_study(storage, server.uri, data_dir)
    try:
        proc = start(command, tmp_path / "study.log")
        wait_for_epochs(proc, storage, 15)
        server.kill()
        started = time.monotonic()
        assert finish(proc) == 0, (tmp_path / "study.log").read_text()[-3000:]
        # It finished the training left, then told the user, without waiting out MLflow.
        assert time.monotonic() - started < 240
        text = (tmp_path / "study.log").read_text()
        assert "Traceback" not in text
        assert "could not be reached" in text and "--resume" in text
        (run_dir,) = run_dirs(storage)
        trials, _ = read_tables(run_dir)  # Parquet from Ray's own records
        assert len(trials) == 3 and set(trials["outcome"]) == {"completed"}
        assert sorted(trials["epochs_done"]) == [2, 2, 80]

        server.start()
        resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                                 timeout=HANG_S)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "logged what 3 trial run(s) missed" in resumed.stdout
        assert_complete(storage, server.uri)
    finally:
        server.kill()


def test_storage_turned_read_only_stops_in_one_line_and_resumes(tmp_path, data_dir,
                                                                small_mount):
    storage, uri = small_mount / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    proc = start(command, tmp_path / "first.log")
    wait_for_epochs(proc, storage, 15)
    remount(small_mount, "ro")
    assert finish(proc) == 1
    text = (tmp_path / "first.log").read_text()
    assert "Traceback" not in text
    (line,) = error_lines(tmp_path / "first.log")
    assert str(storage) in line and "--resume" in line

    remount(small_mount, "rw")
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(storage, uri)


def test_a_disk_that_fills_stops_in_one_line_and_resumes_after_space_is_freed(
        tmp_path, data_dir, small_mount):
    storage, uri = small_mount / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    proc = start(command, tmp_path / "first.log")
    wait_for_epochs(proc, storage, 15)
    # A few kilobytes left: Tune's next state file (tens of kilobytes) is cut short there.
    ballast = fill(small_mount, leave_bytes=8192)
    assert finish(proc) == 1
    line = full_disk_line((tmp_path / "first.log").read_text())
    assert str(storage) in line
    resume_after_freeing(ballast, command, storage, uri)


def test_a_full_disk_is_refused_in_one_line_before_ray_starts(tmp_path, data_dir, small_mount):
    # An empty file still fits on a full disk: the check writes data.
    fill(small_mount)
    storage = small_mount / "results"
    command = regime_study(storage, f"sqlite:///{tmp_path}/mlflow.db", data_dir)
    first = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert first.returncode == 2, first.stderr[-3000:]
    (line,) = error_lines(first.stderr)
    assert "No space left" in line and "free some space" in line
    assert "Traceback" not in first.stderr and "Started a local Ray" not in first.stderr
    assert not storage.exists()


def test_a_disk_that_fills_as_the_study_starts_stops_and_resume_starts_it(
        tmp_path, data_dir, small_mount):
    storage, uri = small_mount / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    first = fill_before("write_run_state", command, small_mount)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    (line,) = error_lines(first.stderr)
    assert "no trial was started; free space on it and run the same command" in line
    assert run_dirs(storage) == []  # nothing recorded: no folder for --resume to stumble on
    # The advice of every storage stop, "--resume", goes on here too: it starts the study.
    (small_mount / "ballast").unlink()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                             timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--resume: no earlier run of study regime_length" in resumed.stderr
    assert_complete(storage, uri)


def test_a_disk_that_fills_at_the_final_tables_stops_in_one_line_and_resumes(
        tmp_path, data_dir, small_mount):
    storage, uri = small_mount / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    first = fill_before("finish_study", command, small_mount)
    assert first.returncode == 1, first.stderr[-3000:]
    full_disk_line(first.stderr)
    resume_after_freeing(small_mount / "ballast", command, storage, uri)


def test_a_disk_that_fills_during_a_checkpoint_stops_in_one_line_and_resumes(
        tmp_path, data_dir, small_mount):
    storage, uri = small_mount / "results", f"sqlite:///{tmp_path}/mlflow.db"
    command = regime_study(storage, uri, data_dir)
    # fill_at_checkpoint/sitecustomize.py fills the mount inside the Ray worker, as the
    # 80-epoch trial saves its epoch-10 checkpoint.
    hook = str(Path(__file__).with_name("fill_at_checkpoint"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNEGAP_TEST_FILL_MOUNT": str(small_mount),
           "TUNEGAP_TEST_FILL_AT_EPOCH": "10",
           "PYTHONPATH": os.pathsep.join([hook, os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert (small_mount / "ballast").exists(), "the checkpoint hook never ran"
    assert first.returncode == 1, first.stderr[-3000:]
    full_disk_line(first.stderr)
    resume_after_freeing(small_mount / "ballast", command, storage, uri)
