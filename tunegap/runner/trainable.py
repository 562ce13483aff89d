"""`GapTrainable`: the training engine as a Ray Tune class trainable, one epoch per step.

Checkpoints hold everything the engine needs to continue exactly where it stopped (model,
optimizer with momentum buffers, shuffle generator, global RNG, initial weights, counters),
so a trial restored after a fault reports the same metrics an uninterrupted one would (CPU).

A study's workload may live only in the user's script or plugin, which Ray's worker processes
never import: the trainable is handed the workload's registrations (`with_workload`) and
installs them before the first trial config is read.

Checkpoints are read with `torch.load(..., weights_only=True)`: the storage path may be a
shared bucket, and a pickle there would run code on every node that resumes from it. A
resumed trial whose checkpoint is gone (Tune's retention deleted the one a killed driver's
experiment state still names) or cut short falls back on the newest sibling
`checkpoint_*` folder of the trial that loads, or starts over; it never ends as an error.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray import tune

# What Tune hands `Trainable.restore` (a checkpoint with the metrics it was saved with) has no
# public name in Ray 2.60; restoring from a checkpoint of our choosing needs it to keep them.
from ray.train._internal.checkpoint_manager import _TrainingResult

from tunegap import registry
from tunegap.config import TrialConfig
from tunegap.cpu_memory import applied_mode, release_freed_memory
from tunegap.engine import Engine
from tunegap.text import one_line
from tunegap.trial_data import load_workload_data

CHECKPOINT_FILE = "engine.pt"
# The last epoch's result, beside the engine: a trial restored at the end of its regime
# reports it again instead of training (its experiment state was saved before it finished).
LAST_RESULT_FILE = "last_result.json"
# Tune's name for a trial's checkpoint folders (ray.train._internal.storage).
CHECKPOINT_FOLDER = re.compile(r"checkpoint_(\d+)")
logger = logging.getLogger(__name__)
OUT_OF_MEMORY_HINT = (
    "out of GPU memory: use a smaller batch (--batch-size/--batch-sizes), a smaller ghost "
    "batch size, or fewer trials per GPU (a larger --gpus-per-trial)"
)


def trial_resources(config: dict[str, Any], *, gpus_per_trial: float | None = None) -> dict:
    """CPU/GPU per trial: the workload's defaults, GPUs only where the trial may use CUDA."""
    trial = TrialConfig.from_dict(config)
    workload = trial.get_workload()
    gpus = workload.gpus_per_trial if gpus_per_trial is None else gpus_per_trial
    if trial.device == "cpu":
        gpus = 0.0
    return {"cpu": workload.cpus_per_trial, "gpu": gpus}


class GapTrainable(tune.Trainable):
    """A Tune trial of one `TrialConfig`; each `step()` trains and evaluates one epoch.

    Results carry the epoch metrics of `tunegap.names.METRIC_NAMES`, `diverged`, the resolved
    regime (`resolved_*`, the same in every result) and `done` at the end of the regime or on
    divergence.
    """

    def setup(self, config: dict[str, Any], registrations: dict | None = None) -> None:
        if registrations:
            registry.install(registrations)
        self._data: tuple[tuple[str, str | None], Any] | None = None
        self._start(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # Tune reuses this actor for the next trial: no new process, no re-import of torch,
        # and the dataset stays loaded when the workload is the same. The last trial's
        # memory, kept for reuse while it trained, goes back first.
        self.engine = None
        release_freed_memory()
        self._start(new_config)
        return True

    def _start(self, config: dict[str, Any]) -> None:
        self.trial_config = TrialConfig.from_dict(dict(config))
        # A worker may hold several CPUs; let torch use what Ray reserved for this trial.
        cpus = int(trial_resources(config)["cpu"])
        if cpus >= 1:
            torch.set_num_threads(cpus)
        key = (self.trial_config.workload, self.trial_config.data_dir, self.trial_config.protocol)
        if self._data is None or self._data[0] != key:
            self._data = (key, load_workload_data(self.trial_config))
        self.engine = Engine(self.trial_config, data=self._data[1])
        self.last_result: dict[str, Any] | None = None
        self.resolved = self.engine.resolved_params()
        # How this process's C library treats freed memory (tunegap.cpu_memory): it changes
        # CPU timings, so it is logged with the trial.
        self.resolved["resolved_cpu_malloc"] = applied_mode() or "system"

    def step(self) -> dict[str, Any]:
        # `Trainable` keeps its step count and whether Tune restored it in attributes of its
        # own (`_iteration`, `_restored`): Ray 2.60 exposes `iteration` read-only and the
        # other not at all.
        if self._iteration == 0 and not self._restored:
            self._restore_saved_earlier()
        if self.engine.done and self.last_result is not None:
            return {**self.last_result, **self.resolved, "done": True}
        try:
            metrics = self.engine.train_epoch()
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not (isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # leave the GPU to the trials that share it
            cfg = self.trial_config
            raise RuntimeError(
                f"{OUT_OF_MEMORY_HINT} (batch_size={cfg.batch_size}, "
                f"ghost_batch_size={cfg.ghost_batch_size}, device={cfg.device})"
            ) from err
        self.last_result = dict(metrics)
        metrics.update(self.resolved)
        metrics["done"] = self.engine.done
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.engine.state_dict(), Path(checkpoint_dir) / CHECKPOINT_FILE)
        if self.last_result is not None:
            (Path(checkpoint_dir) / LAST_RESULT_FILE).write_text(json.dumps(self.last_result))

    def load_checkpoint(self, checkpoint: str | dict) -> None:
        self.engine.load_state_dict(read_engine_state(Path(checkpoint)))
        last = Path(checkpoint) / LAST_RESULT_FILE
        self.last_result = json.loads(last.read_text()) if last.is_file() else None

    def restore(self, checkpoint_path: str | tune.Checkpoint | _TrainingResult) -> None:
        """Tune's restore, made to survive a checkpoint that is missing or does not load.

        Tune names the checkpoint to restore from its experiment state, which a killed
        driver may leave naming one that retention (`num_to_keep`) already deleted, or one
        whose copy to storage was cut short. Then the newest other `checkpoint_*` folder of
        the trial that loads is used, or the trial starts over from scratch; either way one
        warning line says so in the trial's log.
        """
        named = as_training_result(checkpoint_path)
        if self._restore_newer(named):
            return
        try:
            super().restore(named)
            return
        except Exception as err:
            # Missing (Ray's ValueError), cut short (torch's), another trial's (ours), a
            # planted pickle (UnpicklingError): whatever it is, this checkpoint is unusable.
            failure = f"{type(err).__name__}: {err}"
        # A failed load may have changed part of the engine (the model but not the
        # optimizer): every attempt starts from a fresh one.
        self._restart_engine()
        candidate = self._restore_first_that_loads(sibling_checkpoints(named.checkpoint),
                                                   named.metrics)
        if candidate is not None:
            logger.warning(
                "checkpoint %s could not be restored (%s): resumed from %s at epoch %d instead",
                named.checkpoint.path, one_line(failure), candidate.path, self.engine.epoch,
            )
            return
        self._iteration = 0
        logger.warning(
            "checkpoint %s could not be restored (%s) and no other checkpoint of the trial "
            "loads: the trial starts over from epoch 0",
            named.checkpoint.path, one_line(failure),
        )

    def _restore_saved_earlier(self) -> None:
        """Restore a trial that Tune starts afresh from the newest checkpoint it saved
        under an earlier driver, if one loads. Tune's state put back from its last good
        copy can predate the trial's first checkpoint, or the trial itself: Tune then names
        no checkpoint, or creates the trial again (same id, a new folder), and without this
        the trial would train those epochs again. A checkpoint of another configuration
        (a searcher that suggests anew) does not load (`Engine.load_state_dict`)."""
        # The trial's storage folder (local, a shared mount, or a bucket) is known only to
        # Tune's StorageContext; no public accessor exists in Ray 2.60.
        storage = getattr(self, "_storage", None)
        if storage is None or not storage.trial_fs_path:
            return
        saved = earlier_checkpoints(storage.storage_filesystem, storage.trial_fs_path,
                                    self.trial_id)
        candidate = self._restore_first_that_loads(saved, {})
        if candidate is not None:
            logger.warning("the experiment state named no checkpoint of trial %s, but it had "
                           "saved one: resumed from %s at epoch %d",
                           self.trial_id, candidate.path, self.engine.epoch)

    def _restore_newer(self, named: _TrainingResult) -> bool:
        """Restore from a checkpoint of the trial newer than the one Tune named, if one
        loads: Tune's state may be one save behind the trial (a kill, a state file put back
        from its last good copy), and the newer checkpoint saves training those epochs again."""
        match = CHECKPOINT_FOLDER.fullmatch(posixpath.basename(named.checkpoint.path.rstrip("/")))
        if match is None:
            return False
        newer = [c for c in sibling_checkpoints(named.checkpoint)
                 if checkpoint_index(c) > int(match.group(1))]
        candidate = self._restore_first_that_loads(newer, named.metrics)
        if candidate is None:
            return False
        logger.warning("the experiment state named checkpoint %s, but the trial had "
                       "saved a newer one: resumed from %s at epoch %d",
                       named.checkpoint.path, candidate.path, self.engine.epoch)
        return True

    def _restore_first_that_loads(self, candidates: Iterable[tune.Checkpoint],
                                  metrics: dict[str, Any]) -> tune.Checkpoint | None:
        """Restore from the first of `candidates` (newest first) that loads; None if none
        does. A failed load may have changed part of the engine, so each try after one
        starts from a fresh engine."""
        for candidate in candidates:
            try:
                super().restore(_TrainingResult(checkpoint=candidate, metrics=metrics))
            except Exception:  # this one is unusable too: the next older one may do
                self._restart_engine()
                continue
            # Tune's iteration count came from the named checkpoint's metrics: one step
            # is one epoch, so the engine's own count is the true one.
            self._iteration = self.engine.epoch
            return candidate
        return None

    def _restart_engine(self) -> None:
        self.engine = None
        self._start(self.trial_config.to_dict())


def read_engine_state(checkpoint_dir: Path) -> dict[str, Any]:
    """The `Engine.state_dict()` saved in `checkpoint_dir`, read with weights_only=True:
    tensors and plain values only, so a planted pickle raises instead of running."""
    return torch.load(checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def as_training_result(checkpoint: str | tune.Checkpoint | _TrainingResult) -> _TrainingResult:
    """What `Trainable.restore` accepts (a path, a Checkpoint, Tune's checkpoint result),
    as Tune's checkpoint result."""
    if isinstance(checkpoint, str):
        checkpoint = tune.Checkpoint.from_directory(checkpoint)
    if isinstance(checkpoint, tune.Checkpoint):
        return _TrainingResult(checkpoint=checkpoint, metrics={})
    return checkpoint


def sibling_checkpoints(named: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The other `checkpoint_<index>` folders next to `named` (the trial's storage folder),
    newest first, on `named`'s own filesystem (local, a shared mount, or a bucket)."""
    parent = posixpath.dirname(named.path.rstrip("/"))
    return [c for c in trial_checkpoints(named.filesystem, parent)
            if posixpath.normpath(c.path) != posixpath.normpath(named.path)]


def earlier_checkpoints(fs: pyarrow.fs.FileSystem, trial_folder: str,
                        trial_id: str) -> list[tune.Checkpoint]:
    """The checkpoints trial `trial_id` saved in `trial_folder` or in an earlier folder of
    the same trial (Tune names a trial's folder `<trainable>_<trial id>_<index>_..._<time>`,
    so a trial created again gets a new one), newest first."""
    run_folder = posixpath.dirname(trial_folder.rstrip("/"))
    folders = {posixpath.normpath(trial_folder)} | {
        posixpath.normpath(e.path) for e in _listing(fs, run_folder)
        if e.type == pyarrow.fs.FileType.Directory and f"_{trial_id}_" in e.base_name}
    found = [entry for folder in folders for entry in _checkpoint_entries(fs, folder)]
    # Each folder counts its checkpoints from 0: the time saved orders them across folders.
    found.sort(key=lambda e: (e[1].mtime_ns or 0, e[0]), reverse=True)
    return [tune.Checkpoint(info.path, filesystem=fs) for _, info in found]


def checkpoint_index(checkpoint: tune.Checkpoint) -> int:
    """The index in a `checkpoint_<index>` folder's name."""
    return int(CHECKPOINT_FOLDER.fullmatch(posixpath.basename(checkpoint.path)).group(1))


def trial_checkpoints(fs: pyarrow.fs.FileSystem, trial_folder: str) -> list[tune.Checkpoint]:
    """The `checkpoint_<index>` folders of a trial's storage folder on `fs`, newest first."""
    found = sorted(_checkpoint_entries(fs, trial_folder), key=lambda e: e[0], reverse=True)
    return [tune.Checkpoint(info.path, filesystem=fs) for _, info in found]


def _checkpoint_entries(fs: pyarrow.fs.FileSystem,
                        trial_folder: str) -> list[tuple[int, pyarrow.fs.FileInfo]]:
    """(index, file info) of each `checkpoint_<index>` folder in `trial_folder`."""
    found = []
    for entry in _listing(fs, trial_folder):
        match = CHECKPOINT_FOLDER.fullmatch(entry.base_name)
        if match and entry.type == pyarrow.fs.FileType.Directory:
            found.append((int(match.group(1)), entry))
    return found


def _listing(fs: pyarrow.fs.FileSystem, folder: str) -> list[pyarrow.fs.FileInfo]:
    """What `folder` holds on `fs`; nothing where it is missing or cannot be read."""
    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []


def with_workload(trainable: type[tune.Trainable], workload: str,
                  optimizers: Iterable[str] = ()) -> Any:
    """`trainable` carrying `workload`'s registrations (workload, model, dataset, and the
    `optimizers` its trials use) to every worker, through Ray's object store
    (`tune.with_parameters`), so what is registered only in the driver (a user's script, a
    `--plugin` file) trains on any node."""
    from tunegap.workloads import workload_registrations

    return tune.with_parameters(
        trainable, registrations=workload_registrations(workload, optimizers))
