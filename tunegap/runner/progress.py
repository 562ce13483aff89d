"""What the terminal shows while a study runs: one line per finished trial.

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

_FINISHED = ("TERMINATED", "ERROR")


def format_duration(seconds: float) -> str:
    """A duration as the terminal shows it: "45s", "3m05s", "2h07m"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(elapsed: float, finished_here: int, left: int) -> float | None:
    """Seconds until `left` more trials finish, at the rate the `finished_here` trials of
    this process finished in `elapsed` seconds; None before any finished."""
    if finished_here <= 0 or elapsed <= 0:
        return None
    return elapsed / finished_here * max(left, 0)


def progress_counts(done: int, running: int, total: int, *, at_most: bool,
                    eta: float | None) -> str:
    """The bracket that opens a progress line: done / total, running, left and the ETA."""
    left = max(total - done, 0)
    bound = "<=" if at_most else ""
    when = "ETA ?" if eta is None else f"ETA {format_duration(eta)}"
    if left == 0:
        when = "all done"
    return (f"[{done}/{bound}{total} done, {running} running, {bound}{left} left, {when}]")


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
        r = trial.last_result or {}
        c = trial.config
        return (
            f"{counts} B={c['batch_size']} ghost={c['ghost_batch_size'] or 'BN'} "
            f"a={c['lr_exponent']:g} rho={c['regime_multiplier']} seed={c['seed']}: {outcome} "
            f"test_acc {r.get('test_acc', float('nan')):.2f} epochs {r.get('epoch', 0)} "
            f"({format_duration(elapsed)})"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._line(trials, trial, DIVERGED if last.get(DIVERGED) else COMPLETED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, ERROR)
