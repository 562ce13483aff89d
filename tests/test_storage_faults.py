"""A checkpoint the storage refuses stops the study in one line, resumable, instead of
ending its trial as `error` with Tune's traceback.

The refusal is real: a tmpfs remounted read-only by the trial itself between two epochs, so
the next checkpoint Tune persists fails while the driver's journal (kept elsewhere here)
still writes. That isolates the path CI once hit by chance in the read-only fault test."""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

import pytest
import ray
import study_procs
from ray import cloudpickle, tune
from study_procs import remount

from tunegap.runner.records import EpochJournal
from tunegap.runner.storage_faults import (
    QuietStorageFaults,
    StorageUnwritable,
    storage_fault,
    storage_write_error,
)

# The trainable below runs in Ray's workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(study_procs)


def test_refused_writes_are_told_from_other_errors():
    assert storage_write_error(OSError(errno.EROFS, "Read-only file system")) is not None
    assert storage_write_error(OSError(errno.ENOSPC, "No space left on device")) is not None
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Cannot create directory '/x'")
    assert storage_write_error(wrapped) is not None
    # Reading a missing data file, a bug, a diverged loss: not the storage's fault.
    assert storage_write_error(FileNotFoundError(errno.ENOENT, "No such file", "/data")) is None
    assert storage_write_error(ValueError("loss is nan")) is None
    assert storage_write_error(None) is None


def test_a_refusal_inside_a_ray_task_is_found(ray_session):
    @ray.remote
    def write() -> None:
        raise OSError(errno.EROFS, "Cannot create directory '/results/checkpoint_000002'")

    with pytest.raises(Exception) as caught:
        ray.get(write.remote())
    found = storage_write_error(caught.value)
    assert found is not None and found.errno == errno.EROFS


class _TurnsStorageReadOnly(tune.Trainable):
    def setup(self, config: dict) -> None:
        self.mount = Path(config["mount"])

    def step(self) -> dict:
        if self.iteration == 1:
            remount(self.mount, "ro")  # the checkpoint after this epoch cannot be written
        return {"epoch": self.iteration + 1, "done": self.iteration >= 3}

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {"iteration": self.iteration}

    def load_checkpoint(self, checkpoint: dict) -> None:
        pass


def test_a_refused_checkpoint_stops_the_study_without_a_traceback(
        ray_session, small_mount, tmp_path, capfd):
    tuner = tune.Tuner(
        _TurnsStorageReadOnly,
        param_space={"mount": str(small_mount)},
        run_config=tune.RunConfig(
            name="refused",
            storage_path=str(small_mount),
            callbacks=[EpochJournal(tmp_path / "journal.jsonl")],
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
            verbose=0,
        ),
    )
    try:
        with QuietStorageFaults(), pytest.raises(Exception) as caught:
            tuner.fit()
    finally:
        remount(small_mount, "rw")
    fault = storage_fault(caught.value, tmp_path)
    assert isinstance(fault, StorageUnwritable), caught.value
    assert str(small_mount) in fault.path and fault.reason == "Read-only file system"
    assert "Trial task failed" not in capfd.readouterr().err


def test_result_files_cut_by_a_full_disk_are_not_warned_of_but_other_failures_are():
    # Tune's ResultGrid warns once per trial whose result.json it cannot parse; tunegap's
    # tables skip a line a full disk cut short, so that warning only alarms.
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    cut = ("Failed to fetch metrics for 1 trial(s):\n"
           "- GapTrainable_a1b2c_00001: JSONDecodeError('Unterminated string starting at')")
    other = ("Failed to fetch metrics for 1 trial(s):\n"
             "- GapTrainable_a1b2c_00002: PermissionError(13, 'Permission denied')")

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    # Whether Ray's loggers propagate to the root's depends on what ran before in the
    # process, so the records are counted on the logger itself, once.
    kept = Kept()
    logger.addHandler(kept)
    try:
        with QuietStorageFaults():
            logger.warning(cut)
            logger.warning(other)
    finally:
        logger.removeHandler(kept)
    assert kept.messages == [other]
