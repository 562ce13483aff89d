"""What the terminal shows while a study runs: one line per finished trial."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from tunegap.names import COMPLETED, DIVERGED, ERROR


class ProgressPrinter(tune.Callback):
    """One line per finished trial: done / total and the key metrics, not Ray's table."""

    def __init__(self, total: int, *, quiet: bool = False, at_most: bool = False) -> None:
        # An adaptive search stops when its verdicts are decided: the total is a bound.
        self.total = f"<={total}" if at_most else str(total)
        self.quiet = quiet
        self.started = time.perf_counter()
        self.done: int | None = None

    def _line(self, trials: list, trial: Any, outcome: str) -> None:
        if self.done is None:
            # First call: count what finished before, so a resumed study counts on from there.
            self.done = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        self.done += 1
        done = self.done
        if self.quiet:
            return
        r = trial.last_result or {}
        c = trial.config
        print(
            f"[{done}/{self.total}] B={c['batch_size']} ghost={c['ghost_batch_size'] or 'BN'} "
            f"a={c['lr_exponent']:g} rho={c['regime_multiplier']} seed={c['seed']}: {outcome} "
            f"test_acc {r.get('test_acc', float('nan')):.2f} epochs {r.get('epoch', 0)} "
            f"({time.perf_counter() - self.started:.0f}s)",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._line(trials, trial, DIVERGED if last.get(DIVERGED) else COMPLETED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, ERROR)
