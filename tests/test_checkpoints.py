"""Trial checkpoints: read with weights_only=True, and a missing or damaged one never costs
the trial (Tune's retention race after a killed driver, a copy cut short)."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch
from ray import tune

# What Tune hands `Trainable.restore` has no public name in Ray 2.60 (see trainable.py).
from ray.train._internal.checkpoint_manager import _TrainingResult
from study_procs import HANG_S

from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.runner.trainable import CHECKPOINT_FILE, GapTrainable

EPOCHS = 8
KILL_AT = 4  # epochs reported before the driver is killed


def config(data_dir: Path, **changes: object) -> dict:
    base = {"workload": "mnist1d-cnn", "batch_size": 1024, "ghost_batch_size": 64,
            "lr_exponent": 0.5, "seed": 3, "epochs": EPOCHS, "device": "cpu",
            "data_dir": str(data_dir)}
    base.update(changes)
    return base


def strip(result: dict) -> dict:
    return {k: result[k] for k in ("epoch", "updates", "lr", "train_loss", "train_acc",
                                   "test_loss", "test_acc", "weight_distance", "done")}


@pytest.fixture(scope="module")
def straight(data_dir: Path) -> list[dict]:
    """Every epoch of the trial, trained without interruption."""
    trial = GapTrainable(config=config(data_dir))
    results = [strip(trial.train()) for _ in range(EPOCHS)]
    trial.stop()
    assert results[-1]["done"] and not results[-2]["done"]
    return results


class Planted:
    """A pickle that writes a file when it is unpickled (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the planted pickle ran"))


def save_epochs(trial: GapTrainable, trial_dir: Path, epochs: int) -> list[Path]:
    """Train `epochs` epochs, saving after each into Tune's `checkpoint_<index>` folders."""
    folders = []
    for index in range(epochs):
        trial.train()
        folder = trial_dir / f"checkpoint_{index:06d}"
        trial.save(str(folder))
        folders.append(folder)
    return folders


def named(folder: Path, iteration: int) -> _TrainingResult:
    """What Tune hands `restore` on resume: the checkpoint its experiment state names."""
    return _TrainingResult(checkpoint=tune.Checkpoint.from_directory(str(folder)),
                           metrics={"training_iteration": iteration, "time_total_s": 1.0})


# --- weights_only ---------------------------------------------------------------------------


def test_saved_checkpoint_loads_with_weights_only(data_dir, tmp_path):
    trial = GapTrainable(config=config(data_dir))
    trial.train()
    trial.save(str(tmp_path))
    trial.stop()
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 1 and state["updates"] == trial.engine.updates
    assert state["config"] == TrialConfig.from_dict(config(data_dir)).to_dict()
    assert isinstance(state["torch_rng"], torch.Tensor)


def test_numpy_values_in_the_state_are_saved_as_plain_ones(data_dir):
    # A plugin's regime or a Tune search can put numpy numbers into the optimizer's groups.
    engine = Engine(TrialConfig.from_dict(config(data_dir)))
    engine.optimizer.param_groups[0]["lr"] = np.float64(0.125)
    engine.optimizer.param_groups[0]["weight_decay"] = np.float32(0.5)
    buffer = io.BytesIO()
    torch.save(engine.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert type(group["lr"]) is float and group["lr"] == 0.125
    assert type(group["weight_decay"]) is float and group["weight_decay"] == 0.5
    # BatchNorm's version metadata survives the conversion.
    assert state["model"]._metadata == engine.model.state_dict()._metadata


def test_planted_pickle_is_refused_not_run(data_dir, tmp_path, caplog):
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "trial" / "checkpoint_000000"
    folder.mkdir(parents=True)
    torch.save({"model": Planted(marker)}, folder / CHECKPOINT_FILE)
    # The planted file is a working pickle: the old weights_only=False load ran it.
    torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    assert marker.exists()
    marker.unlink()

    trial = GapTrainable(config=config(data_dir))
    with pytest.raises(pickle.UnpicklingError):
        trial.load_checkpoint(str(folder))
    assert not marker.exists()
    # Tune's restore path: the trial starts over instead of running the pickle or failing.
    with caplog.at_level(logging.WARNING, logger="tunegap.runner.trainable"):
        trial.restore(named(folder, 1))
    assert not marker.exists()
    assert trial.engine.epoch == 0 and trial.iteration == 0
    assert "starts over from epoch 0" in caplog.text
    trial.stop()


# --- fallback inside restore (no driver) ----------------------------------------------------


def test_missing_named_checkpoint_falls_back_on_the_newest_that_loads(
    data_dir, tmp_path, straight, caplog
):
    first = GapTrainable(config=config(data_dir))
    folders = save_epochs(first, tmp_path / "trial", 3)
    first.stop()
    shutil.rmtree(folders[2])  # retention deleted the one the experiment state names
    (folders[1] / CHECKPOINT_FILE).write_bytes(b"")  # and the next one is empty

    resumed = GapTrainable(config=config(data_dir))
    with caplog.at_level(logging.WARNING, logger="tunegap.runner.trainable"):
        resumed.restore(named(folders[2], 3))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "checkpoint_000002" in warnings[0].getMessage()
    assert "resumed from" in warnings[0].getMessage()
    assert "checkpoint_000000" in warnings[0].getMessage()
    assert resumed.iteration == 1
    got = [strip(resumed.train()) for _ in range(EPOCHS - 1)]
    resumed.stop()
    assert got == straight[1:]


def test_no_loadable_checkpoint_restarts_the_trial_from_scratch(data_dir, tmp_path, straight):
    first = GapTrainable(config=config(data_dir))
    folders = save_epochs(first, tmp_path / "trial", 2)
    first.stop()
    path = folders[1] / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    shutil.rmtree(folders[0])

    resumed = GapTrainable(config=config(data_dir))
    resumed.restore(named(folders[1], 2))
    assert resumed.iteration == 0
    got = [strip(resumed.train()) for _ in range(EPOCHS)]
    resumed.stop()
    assert got == straight


def test_the_named_checkpoint_is_used_when_it_is_the_newest(data_dir, tmp_path, straight,
                                                             caplog):
    first = GapTrainable(config=config(data_dir))
    folders = save_epochs(first, tmp_path / "trial", 2)
    first.stop()
    resumed = GapTrainable(config=config(data_dir))
    with caplog.at_level(logging.WARNING, logger="tunegap.runner.trainable"):
        resumed.restore(named(folders[1], 2))
    assert not caplog.records
    assert resumed.iteration == 2
    assert strip(resumed.train()) == straight[2]
    resumed.stop()


def test_a_newer_checkpoint_than_the_named_one_is_preferred(data_dir, tmp_path, straight,
                                                            caplog):
    # Tune's state was saved before the trial's last checkpoint (a killed driver, or a state
    # file put back from its last good copy): the newer one saves training that epoch again.
    first = GapTrainable(config=config(data_dir))
    folders = save_epochs(first, tmp_path / "trial", 3)
    first.stop()
    resumed = GapTrainable(config=config(data_dir))
    with caplog.at_level(logging.WARNING, logger="tunegap.runner.trainable"):
        resumed.restore(named(folders[1], 2))
    (warning,) = caplog.records
    assert "saved a newer one" in warning.getMessage()
    assert "checkpoint_000002" in warning.getMessage()
    assert resumed.iteration == 3
    assert strip(resumed.train()) == straight[3]
    resumed.stop()
    # A newer one that does not load is passed over for the named one.
    path = folders[2] / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = GapTrainable(config=config(data_dir))
    again.restore(named(folders[1], 2))
    assert again.iteration == 2 and strip(again.train()) == straight[2]
    again.stop()


# --- a real Tune experiment whose driver was killed -----------------------------------------

DRIVER = '''
"""A study driver that SIGKILLs itself and its Ray once the trial has reported KILL_AT epochs."""
import json, os, signal, sys, threading, time
from pathlib import Path

import ray
from ray import tune

from tunegap.runner.trainable import GapTrainable

storage, config, kill_at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])


def kill_when_far_enough():
    while True:
        for result in Path(storage).glob("exp/*/result.json"):
            if len(result.read_text().splitlines()) >= kill_at:
                os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(0.02)


threading.Thread(target=kill_when_far_enough, daemon=True).start()
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
tune.Tuner(
    GapTrainable,
    param_space=config,
    run_config=tune.RunConfig(
        name="exp", storage_path=storage, verbose=0,
        # The trial's stdout/stderr go to files that are copied next to its checkpoints.
        log_to_file=True, sync_config=tune.SyncConfig(sync_artifacts=True),
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=1, checkpoint_at_end=True, num_to_keep=2
        ),
    ),
).fit()
'''


def killed_experiment(tmp_path: Path, data_dir: Path) -> Path:
    """A Tune experiment whose driver was SIGKILLed in the middle of its only trial."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    # The experiment state is written at every step, so it names a recent checkpoint.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    storage = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(script), str(storage), json.dumps(config(data_dir)), str(KILL_AT)],
        env=env, start_new_session=True, capture_output=True, text=True, timeout=HANG_S,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return storage / "exp"


def checkpoint_named_in_state(experiment: Path) -> Path:
    """The checkpoint Tune's experiment state says the trial resumes from."""
    (state_file,) = experiment.glob("experiment_state-*.json")
    ((_, runtime),) = json.loads(state_file.read_text())["trial_data"]
    runtime = json.loads(runtime) if isinstance(runtime, str) else runtime
    manager = ray.cloudpickle.loads(bytes.fromhex(runtime["checkpoint_manager"]["value"]))
    return Path(manager.latest_checkpoint_result.checkpoint.path)


def resume(experiment: Path) -> tuple[tune.ResultGrid, list[dict]]:
    """Resume as the study runner does; the grid and the trial's results (result.json)."""
    grid = tune.Tuner.restore(
        str(experiment), trainable=GapTrainable,
        resume_unfinished=True, resume_errored=False, restart_errored=False,
    ).fit()
    (result_file,) = experiment.glob("*/result.json")
    results = [json.loads(line) for line in result_file.read_text().splitlines()]
    return grid, results


def assert_completed_like_straight(grid, results, straight, gone: Path, used: Path) -> None:
    """The trial completed every epoch exactly as an uninterrupted one, and its log has one
    warning line naming the checkpoint Tune named and the one it resumed from instead: the
    named one was unusable, or the trial had saved a newer one (a kill after that save and
    before Tune's next state), which is preferred whatever the named one holds."""
    assert len(grid) == 1 and grid[0].error is None
    assert grid[0].metrics["epoch"] == EPOCHS and grid[0].metrics["done"]
    # Epochs after the restore point are reported again; the last report of each epoch is
    # what an uninterrupted trial reported.
    last_of = {r["epoch"]: strip(r) for r in results}
    assert sorted(last_of) == list(range(1, EPOCHS + 1))
    assert [last_of[e] for e in range(1, EPOCHS + 1)] == straight
    (stderr,) = gone.parent.glob("stderr*")
    lines = [ln for ln in stderr.read_text().splitlines()
             if "could not be restored" in ln or "saved a newer one" in ln]
    assert len(lines) == 1, stderr.read_text()[-3000:]
    assert gone.name in lines[0] and f"resumed from {used}" in lines[0]


def newest_other(gone: Path) -> Path:
    """The checkpoint the trial should fall back on: the newest other one on disk."""
    others = sorted(f for f in gone.parent.glob("checkpoint_*") if f != gone)
    # Retention keeps two, so the killed driver left at least one beside the named one.
    assert others, "the killed driver left no second checkpoint"
    return others[-1]


@pytest.mark.slow
def test_checkpoint_deleted_by_retention_does_not_cost_the_trial(
    ray_session, data_dir, tmp_path, straight
):
    experiment = killed_experiment(tmp_path, data_dir)
    gone = checkpoint_named_in_state(experiment)
    assert gone.is_dir()
    used = newest_other(gone)
    shutil.rmtree(gone)
    grid, results = resume(experiment)
    assert_completed_like_straight(grid, results, straight, gone, used)


@pytest.mark.slow
def test_truncated_newest_checkpoint_does_not_cost_the_trial(
    ray_session, data_dir, tmp_path, straight
):
    experiment = killed_experiment(tmp_path, data_dir)
    gone = checkpoint_named_in_state(experiment)
    used = newest_other(gone)
    # The copy of the named checkpoint to storage was cut short.
    path = gone / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    grid, results = resume(experiment)
    assert_completed_like_straight(grid, results, straight, gone, used)
