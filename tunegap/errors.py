"""The errors a study ends with, each with the exit status its command returns: bad input
(`StudyError`, 2), a fault that stopped a running study (`StudyStopped`, 1), a study that ran
but cannot answer (`StudyFailed`, 1), and Ctrl-C (`StudyInterrupted`)."""

from __future__ import annotations

from pathlib import Path


class StudyError(ValueError):
    """Bad study input: reported as one line with exit status 2, before Ray starts.

    >>> from tunegap import Study
    >>> Study(name="typo", workload="mnist1d-cnn", grid={"batch_sise": (512,)})
    Traceback (most recent call last):
    ...
    tunegap.errors.StudyError: unknown knob(s) batch_sise: use batch_size, ghost_batch_size, lr_exponent, regime_multiplier, base_lr, optimizer, momentum, weight_decay, no_decay_bn_bias, warmup_epochs, warmup_start_factor, scale_warmup, schedule, label_smoothing, train_size, validation_fraction, max_updates, bn_weight_init, zero_init_residual
    """

    exit_status = 2


class StudyStopped(StudyError):
    """A fault stopped a running study (storage turned read-only, ...): one line, exit status
    1. The trials that finished are kept, and `--resume` continues once the fault is fixed."""

    exit_status = 1


class StudyFailed(StudyError):
    """A study ran but cannot answer (every baseline trial failed): one line, exit status 1,
    with the tables written."""

    exit_status = 1


class StudyInterrupted(KeyboardInterrupt):
    """The study was interrupted (Ctrl-C): its parent run is KILLED, nothing was computed
    from unfinished trials, and `--resume` continues it. `run_dir` holds what finished."""

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
