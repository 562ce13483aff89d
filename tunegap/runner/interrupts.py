"""Ctrl-C during a study: noticed, so an interrupted study is never finished as a done one.

On the first SIGINT, Ray Tune stops its trials, saves the experiment state and returns from
`Tuner.fit()` as if the study had ended (its handler then puts back the one it found). The
runner must tell the two apart, so it installs its own handler before `fit()`: finding it
back in place afterwards means Tune's handler fired. A second Ctrl-C reaches it and stops
the driver at once (`KeyboardInterrupt`), as Tune promises.

SIGTERM (what `kill`, a batch scheduler or a container stop sends first) is handled as a
Ctrl-C: the study stops cleanly, saved and resumable, instead of dying mid-write.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

# Tune's own lines about the interruption name `Tuner.restore(...)`; the runner prints
# the command to run instead.
_TUNE_INTERRUPT_LINES = ("Stop signal received", "has been interrupted", "Trials did not complete")


class _DropTuneInterruptLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in _TUNE_INTERRUPT_LINES)


class InterruptWatch:
    """Within the block: `interrupted` becomes True once SIGINT reached the study."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None
        self._handler = self._second_interrupt
        self._installed = False
        self._previous_term: Any = None
        self._filter = _DropTuneInterruptLines()

    def _second_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._previous_term = signal.signal(signal.SIGTERM, _term_as_interrupt)
            self._installed = True
        logging.getLogger("ray.tune.tune").addFilter(self._filter)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        logging.getLogger("ray.tune.tune").removeFilter(self._filter)
        if not self._installed:
            return
        tune_handles_sigint = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
        if kind is None and tune_handles_sigint and signal.getsignal(signal.SIGINT) is self._handler:
            self.interrupted = True
        signal.signal(signal.SIGINT, self._previous)
        signal.signal(signal.SIGTERM, self._previous_term)


def _term_as_interrupt(signum: int, frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGINT)


def unfinished_trials(result_grid: Any) -> int:
    """Trials of a `ResultGrid` that neither finished nor failed (stopped by an interrupt)."""
    return len(result_grid) - result_grid.num_terminated - result_grid.num_errors


def finished_trials(result_grid: Any) -> int:
    """Trials of a `ResultGrid` that finished or failed."""
    return result_grid.num_terminated + result_grid.num_errors
