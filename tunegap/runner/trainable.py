"""`GapTrainable`: the training engine as a Ray Tune class trainable, one epoch per step.

Checkpoints hold everything the engine needs to continue exactly where it stopped (model,
optimizer with momentum buffers, shuffle generator, global RNG, initial weights, counters),
so a trial restored after a fault reports the same metrics an uninterrupted one would (CPU).

A study's workload may live only in the user's script or plugin, which Ray's worker processes
never import: the trainable is handed the workload's registrations (`with_workload`) and
installs them before the first trial config is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import tune

from tunegap import registry
from tunegap.config import TrialConfig
from tunegap.cpu_memory import applied_mode, release_freed_memory
from tunegap.engine import Engine, load_workload_data

CHECKPOINT_FILE = "engine.pt"
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
        key = (self.trial_config.workload, self.trial_config.data_dir)
        if self._data is None or self._data[0] != key:
            self._data = (key, load_workload_data(self.trial_config))
        self.engine = Engine(self.trial_config, data=self._data[1])
        self.resolved = self.engine.resolved.as_dict()
        # How this process's C library treats freed memory (tunegap.cpu_memory): it changes
        # CPU timings, so it is logged with the trial.
        self.resolved["resolved_cpu_malloc"] = applied_mode() or "system"

    def step(self) -> dict[str, Any]:
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
        metrics.update(self.resolved)
        metrics["done"] = self.engine.done
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.engine.state_dict(), Path(checkpoint_dir) / CHECKPOINT_FILE)

    def load_checkpoint(self, checkpoint: str | dict) -> None:
        path = Path(checkpoint) / CHECKPOINT_FILE
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.engine.load_state_dict(state)


def with_workload(trainable: type[tune.Trainable], workload: str) -> Any:
    """`trainable` carrying `workload`'s registrations (workload, model, dataset) to every
    worker, through Ray's object store (`tune.with_parameters`), so a workload registered
    only in the driver (a user's script, a `--plugin` file) trains on any node."""
    from tunegap.workloads import workload_registrations

    return tune.with_parameters(trainable, registrations=workload_registrations(workload))
