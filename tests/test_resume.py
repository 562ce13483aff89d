"""Kill a study's driver in the middle of a trial, resume it, compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow_checks import trial_runs_logged_once
from study_procs import HANG_S

from tunegap.analysis.tables import read_tables

pytestmark = pytest.mark.slow

KNOBS = ["batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier", "seed"]


def study_command(tmp: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tunegap.studies.regime_length", "--epochs", "2",
        "--baseline-epochs", "2",
        "--batch-size", "2048", "--multipliers", "1,40", "--max-concurrent", "1", "--seeds", "1",
        "--storage-path", str(tmp / "results"), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
        "--device", "cpu", "--data-dir", str(data_dir), "--checkpoint-every", "7", *extra,
    ]


def run_dir_of(tmp: Path) -> Path:
    (run_dir,) = list((tmp / "results" / "regime_length").glob("2*"))
    return run_dir


def longest_trial_progress(tmp: Path) -> int:
    try:
        run_dir = run_dir_of(tmp)
    except ValueError:
        return 0
    # The 80-epoch trial (multiplier 40) runs first: the runner starts the longest first.
    counts = [len(p.read_text().splitlines()) for p in run_dir.glob("*/result.json")]
    return max(counts, default=0)


def by_config(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    keyed = epochs.merge(trials[["trial_id", *KNOBS]], on="trial_id")
    keyed["ghost_batch_size"] = keyed["ghost_batch_size"].astype("float")
    cols = [*KNOBS, "epoch", "updates", "lr", "train_loss", "test_acc", "weight_distance"]
    return keyed[cols].sort_values([*KNOBS, "epoch"]).reset_index(drop=True)


def test_killed_study_resumes_every_trial_exactly_once(tmp_path, data_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir()
    straight.mkdir()

    proc = subprocess.Popen(study_command(killed, data_dir), start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + HANG_S
    while longest_trial_progress(killed) < 20 and proc.poll() is None:
        assert time.monotonic() < deadline, "the study never got going"
        time.sleep(0.2)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)  # let Ray's own processes notice their driver is gone
    interrupted_at = longest_trial_progress(killed)
    assert 20 <= interrupted_at < 80

    resumed = subprocess.run(study_command(killed, data_dir, "--resume"), env=env,
                             capture_output=True, text=True, timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plain = subprocess.run(study_command(straight, data_dir), env=env,
                           capture_output=True, text=True, timeout=HANG_S)
    assert plain.returncode == 0, plain.stderr[-3000:]

    trials, epochs = read_tables(run_dir_of(killed))
    trials_ref, epochs_ref = read_tables(run_dir_of(straight))
    # Baseline, multiplier 1 and multiplier 40: each once, each complete.
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["outcome"]) == {"completed"}
    assert sorted(trials["epochs_done"]) == [2, 2, 80]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    pd.testing.assert_frame_equal(by_config(trials, epochs), by_config(trials_ref, epochs_ref))

    tracking_uri = f"sqlite:///{killed}/mlflow.db"
    children = trial_runs_logged_once(tracking_uri, "tunegap/regime_length", trials["trial_id"])
    assert len(children) == 3
    client = mlflow.MlflowClient(tracking_uri)
    for run in children:
        steps = client.get_metric_history(run.info.run_id, "test_acc")
        assert len(steps) == int(run.data.params["resolved_epochs"])


def journal_rows(run_dir: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (run_dir / "epochs_journal.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["trial_id"], []).append(json.dumps(row, sort_keys=True))
    return rows


def test_a_driver_killed_while_tune_writes_its_state_resumes_from_the_last_good_copy(
        tmp_path, data_dir):
    finished_file = tmp_path / "finished.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNEGAP_TEST_KILL_AFTER": "1",
           "TUNEGAP_TEST_FINISHED_FILE": str(finished_file)}
    command = study_command(tmp_path, data_dir)
    killer = [sys.executable, str(Path(__file__).with_name("kill_at_state_write.py")),
              *command[2:]]
    proc = subprocess.run(killer, env=env, start_new_session=True, capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    time.sleep(2)  # let Ray's own processes notice their driver is gone
    run_dir = run_dir_of(tmp_path)
    (state,) = run_dir.glob("experiment_state-*.json")
    with pytest.raises(ValueError):
        json.loads(state.read_text())  # the kill left it cut short
    before = journal_rows(run_dir)
    finished = finished_file.read_text().split()
    assert finished, "no trial had finished when the driver was killed"

    resumed = subprocess.run(study_command(tmp_path, data_dir, "--resume"), env=env,
                             capture_output=True, text=True, timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume: {state.name} was cut short" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    trials, epochs = read_tables(run_dir)
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["outcome"]) == {"completed"}
    assert sorted(trials["epochs_done"]) == [2, 2, 80]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    after = journal_rows(run_dir)
    for trial in finished:
        # A finished trial is never trained again: any epoch it reports after the resume is
        # the same result (its wall seconds included) re-reported, not a new one.
        assert set(after[trial]) == set(before[trial]), trial
    for trial, rows in after.items():
        # A trial cut before its checkpoint trains those epochs again: the same numbers
        # (training is seeded), only the wall seconds differ.
        same = {json.dumps({**json.loads(r), "seconds": None}, sort_keys=True) for r in rows}
        assert len(same) == len({json.loads(r)["epoch"] for r in rows}), trial
