"""What the terminal shows while a study runs: one line per finished trial (its words:
`tunegap.runner.report_text.progress_line`).

A line reads ``[3/8 done, 2 running, 5 left, ETA 1m40s] B=512 ghost=BN a=0.5 rho=1 seed=0:
completed test_acc 71.20 epochs 2 (12s)``. The ETA comes from the trials finished in this
process: elapsed time / trials finished here x trials left (so it already counts how many
run at once); it shows once a trial has finished, and "ETA ?" before.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from tunegap.names import COMPLETED, DIVERGED, ERROR
from tunegap.runner.report_text import eta_seconds, progress_counts, progress_line

_FINISHED = ("TERMINATED", "ERROR")


class ProgressPrinter(tune.Callback):
    """One line per finished trial: done / running / left, an ETA and the key metrics, not
    Ray's table."""

    def __init__(self, total: int, *, quiet: bool = False, at_most: bool = False) -> None:
        # An adaptive search stops when its verdicts are decided: the total is a bound.
        self.total_trials = total
        self.at_most = at_most
        self.total = f"<={total}" if at_most else str(total)
        self.quiet = quiet
        self.started = time.perf_counter()
        self.done: int | None = None
        self.finished_here = 0

    def _line(self, trials: list, trial: Any, outcome: str) -> None:
        if self.done is None:
            # First call: count what finished before, so a resumed study counts on from there.
            self.done = sum(t.status in _FINISHED for t in trials if t is not trial)
        self.done += 1
        self.finished_here += 1
        if self.quiet:
            return
        print(self.line(trials, trial, outcome), flush=True)

    def line(self, trials: list, trial: Any, outcome: str) -> str:
        """The progress line for `trial` finishing with `outcome` (counts already updated)."""
        elapsed = time.perf_counter() - self.started
        done = self.done or 0
        running = sum(t.status == "RUNNING" for t in trials if t is not trial)
        left = max(self.total_trials - done, 0)
        counts = progress_counts(done, running, self.total_trials, at_most=self.at_most,
                                 eta=eta_seconds(elapsed, self.finished_here, left))
        return progress_line(counts, trial.config, trial.last_result or {}, outcome, elapsed)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._line(trials, trial, DIVERGED if last.get(DIVERGED) else COMPLETED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, ERROR)
