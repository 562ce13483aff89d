"""Storage that stops taking writes mid-study, seen wherever Tune first meets it.

The driver's journal is one place a read-only, full or vanished run folder shows; the other
is a trial's checkpoint, which Tune persists from the trial's actor. A checkpoint that
cannot be written ends that trial in Tune with a traceback (logged by Tune's controller)
although nothing in the trial went wrong: the trial is not at fault, the storage is. So
the traceback is dropped and the study stops as it does for a failed journal write
(`StorageUnwritable`), one line and resumable, instead of losing the trial to `error`.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tunegap.errors import StudyError

# What a file system says when it refuses a write, not what a bug says.
STORAGE_ERRNOS = frozenset(
    code for code in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                      errno.ENOENT, errno.ESTALE, errno.EIO)
    if code is not None
)
_READ_ONLY_WORDS = ("read-only file system", "no space left on device", "disk quota exceeded")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What `check_storage` writes to see that the storage takes data, not only names: an empty
# file still fits on a full disk.
PROBE_BYTES = 64 * 1024
_TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
# Ray's syncer, copying the driver's files to the run folder, logs a refused copy's traceback
# as the text of a warning. Its logger is named after Ray's private module: Ray has no public
# hook to hear of a failed sync, so the only way to quiet that traceback is by its name.
_SYNCER_LOGGER = "ray.train._internal.syncer"
# Tune's ResultGrid reading each trial's result.json: one cut short by a full disk is a
# warning per trial, though tunegap's tables skip the cut line and lose nothing.
_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
_QUIETED_LOGGERS = (_TUNE_CONTROLLER_LOGGER, _SYNCER_LOGGER, _ANALYSIS_LOGGER)


class StorageUnwritable(RuntimeError):
    """The run folder could not be written during the study (read-only, full, gone)."""

    def __init__(self, path: str, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error))
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.full = error.errno in _FULL_ERRNOS or any(
            words in str(error).lower() for words in _READ_ONLY_WORDS[1:])

    def stop_line(self, run_dir: Path, *, started: bool = True) -> str:
        """The study's one line for this fault: what to fix, and the command that goes on."""
        fix = "free space on it" if self.full else "make it writable"
        if not started:
            return (f"the storage path {self.path} cannot be written ({self.reason}): no trial "
                    f"was started; {fix} and run the same command again")
        return (f"the storage path {self.path} cannot be written any more ({self.reason}): "
                f"the finished trials are kept in {run_dir}; {fix} and run the same command "
                "with --resume")


def check_storage(root: Path) -> None:
    """`root` can be made and written, a little data included (a full disk takes an empty
    file), checked without making anything: a refusal leaves no empty folder behind and is a
    `StudyError` in one line before Ray starts."""
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tunegap-probe-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        fix = ("free some space on it" if err.errno in _FULL_ERRNOS
               else "choose a folder you can write to")
        raise StudyError(f"--storage-path {root.parent} is not writable ({err.strerror}): "
                         f"{fix}") from None


def storage_fault(err: BaseException, run_dir: Path) -> StorageUnwritable | None:
    """The `StorageUnwritable` behind `err` (Tune wraps a callback's error in its own); a
    refused write outside Tune's loop (the final tables, summary and figures) names its file,
    else `run_dir`."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, StorageUnwritable):
            return current
        todo += [current.__cause__, current.__context__]
    refused = storage_write_error(err)
    if refused is not None:
        return StorageUnwritable(refused_path(refused, str(run_dir)), refused)
    return None


def storage_write_error(error: BaseException | None) -> OSError | None:
    """The file-system refusal behind `error`, through Ray's task-error wrapper and chained
    causes; None when `error` is something else (a bug, a diverged model, an interrupt)."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            # Ray's task error poses as its cause's class, with the remote traceback as its
            # text and no errno: the cause itself says what happened.
            todo.append(cause)
            continue
        if isinstance(current, OSError) and _is_refused_write(current):
            return current
        todo += [current.__cause__, current.__context__]
    return None


def _is_refused_write(error: OSError) -> bool:
    if error.errno in STORAGE_ERRNOS:
        # pyarrow's file system reports errno and a message but sets no file name; ENOENT
        # and EACCES also come from reading user files, so those need a write in the text.
        if error.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
            text = str(error).lower()
            return "cannot create" in text or "cannot open for writing" in text
        return True
    return any(words in str(error).lower() for words in _READ_ONLY_WORDS)


def refused_path(error: OSError, fallback: str) -> str:
    """The path a refused write names, else `fallback` (the trial's folder)."""
    return str(error.filename) if error.filename else fallback


class _DropStorageFaultTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return (storage_write_error(exc) is None and not _gone_checkpoint(record, exc)
                and not _refused_sync(record) and not _cut_result_file(record))


def _cut_result_file(record: logging.LogRecord) -> bool:
    """Tune's warning for result files it cannot parse, where every one was cut short."""
    lines = record.getMessage().splitlines() or [""]
    return (record.name == _ANALYSIS_LOGGER and lines[0].startswith("Failed to fetch metrics")
            and all("JSONDecodeError(" in line for line in lines[1:]))


def _refused_sync(record: logging.LogRecord) -> bool:
    """The syncer's warning for a copy to the run folder that the file system refused."""
    text = record.getMessage()
    return (record.name == _SYNCER_LOGGER and "Traceback" in text
            and any(words in text.lower() for words in _READ_ONLY_WORDS))


def _gone_checkpoint(record: logging.LogRecord, exc: BaseException | None) -> bool:
    """Tune, resumed from a state one save behind its trials, deleting an old checkpoint
    that the killed driver's retention already deleted: nothing is lost (the trial's newer
    checkpoints are there), so its traceback is noise."""
    return (isinstance(exc, FileNotFoundError) and "checkpoint_" in str(exc)
            and "Error handling checkpoint" in record.getMessage())


class QuietStorageFaults:
    """Within the block, Tune's traceback for a trial whose storage refused a write is not
    printed (the study's one-line stop says it instead), nor the syncer's for a refused copy
    to the run folder, nor the one for deleting an old checkpoint already gone after a resume
    (`_gone_checkpoint`), nor ResultGrid's for result files a full disk cut short."""

    def __init__(self) -> None:
        self._filter = _DropStorageFaultTracebacks()

    def __enter__(self) -> QuietStorageFaults:
        for name in _QUIETED_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in _QUIETED_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)


def trial_storage_fault(trial: Any) -> StorageUnwritable | None:
    """A `StorageUnwritable` when the error that ended `trial` was a refused write.

    Tune pickles the trial's error into the driver's staging folder (local disk, not the
    storage that failed) before callbacks hear of it."""
    from ray import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as handle:
            error = cloudpickle.load(handle)
    except Exception:
        return None
    refused = storage_write_error(error)
    if refused is None:
        return None
    return StorageUnwritable(refused_path(refused, str(getattr(trial, "path", "") or path)),
                             refused)
