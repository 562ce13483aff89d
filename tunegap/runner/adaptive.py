"""Tune searchers that decide as they go: seeds until each cell is decided, and the frontier.

Both keep a `SeedLedger`: per cell (a trial config without its seed) the seeds handed out,
those still running, and the accuracy of each finished one. A cell's verdict is
`tunegap.analysis.decide.decide_gap` on those accuracies against the baseline's, the same
rule the map uses at the end, so a cell stops getting seeds once the map would call it
closed or open.

- `SeedsUntilDecided` (`--seeds auto`): every cell and the baseline start with `min_seeds`;
  then an inconclusive cell gets one more seed at a time (the baseline instead, when its
  spread is what limits the cell's interval) until it is decided or has `max_seeds`.
- `FrontierSearch` (the `frontier` study): per batch size, the smallest regime multiplier in
  [1, matched] whose cell is closed, by bisection on a log scale over whole multipliers; each
  probed multiplier is a cell decided as above, and "not closed" (open, or inconclusive at
  `max_seeds`) sends the bisection up.

Both are ordinary `ray.tune.search.Searcher`s: they run inside the study's one Tuner, and
Tune saves their state with the experiment, so `--resume` continues where they stopped.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from tunegap.analysis.decide import GapDecision, decide_gap
from tunegap.names import DIVERGED
from tunegap.study import cell_key

CLOSED, OPEN, INCONCLUSIVE = "closed", "open", "inconclusive"
BASELINE = "baseline"


@dataclass
class CellSeeds:
    config: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)  # trial id -> seed
    values: dict[int, float | None] = field(default_factory=dict)  # seed -> accuracy

    def usable(self) -> list[float]:
        return [v for _, v in sorted(self.values.items()) if v is not None and math.isfinite(v)]

    def next_config(self) -> dict[str, Any]:
        seed = max(self.seeds, default=-1) + 1
        return {**self.config, "seed": seed}


class SeedLedger:
    """Seeds handed out, running and finished, per cell; one cell is the baseline."""

    def __init__(self, baseline: dict[str, Any], *, margin: float, accuracy: str) -> None:
        self.margin = margin
        self.accuracy = accuracy
        self.cells: dict[str, CellSeeds] = {}
        self.baseline = self.add_cell(baseline)
        self.by_trial: dict[str, str] = {}
        self.best: dict[str, float] = {}

    def add_cell(self, config: dict[str, Any]) -> str:
        key = cell_key(config)
        self.cells.setdefault(key, CellSeeds({k: v for k, v in config.items() if k != "seed"}))
        return key

    def hand_out(self, key: str, trial_id: str, config: dict[str, Any] | None = None) -> dict:
        cell = self.cells[key]
        config = config or cell.next_config()
        cell.seeds.append(config["seed"])
        cell.running[trial_id] = config["seed"]
        self.by_trial[trial_id] = key
        return config

    def record_result(self, trial_id: str, result: dict[str, Any]) -> None:
        acc = result.get("test_acc")
        if isinstance(acc, int | float) and math.isfinite(acc):
            self.best[trial_id] = max(acc, self.best.get(trial_id, -math.inf))

    def finish(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        key = self.by_trial.get(trial_id)
        if key is None:
            return  # a trial this searcher did not suggest
        cell = self.cells[key]
        seed = cell.running.pop(trial_id, None)
        if seed is None:
            return
        value: float | None = None
        if not error and result and not result.get(DIVERGED):
            value = result.get("test_acc") if self.accuracy == "final" else self.best.get(trial_id)
        cell.values[seed] = value

    def pending(self, key: str) -> bool:
        return bool(self.cells[key].running)

    def any_pending(self) -> bool:
        return any(cell.running for cell in self.cells.values())

    def decide(self, key: str) -> GapDecision:
        return decide_gap(
            self.cells[self.baseline].usable(), self.cells[key].usable(), margin=self.margin
        )

    def hopeless(self, key: str) -> bool:
        """Every finished seed diverged or failed: more seeds would not decide a gap."""
        cell = self.cells[key]
        return len(cell.values) >= 2 and not cell.usable()

    def wants_seed(self, key: str, max_seeds: int) -> str | None:
        """Which cell should get the next seed for `key` to be decided: `key` itself, the
        baseline, or None (decided, out of seeds, or waiting for a running seed)."""
        if self.pending(key) or self.pending(self.baseline) or self.hopeless(key):
            return None
        decision = self.decide(key)
        if decision.verdict != INCONCLUSIVE:
            return None
        cell, base = self.cells[key], self.cells[self.baseline]
        if decision.limiting_side == BASELINE and len(base.seeds) < max_seeds:
            return self.baseline
        if len(cell.seeds) < max_seeds:
            return key
        if len(base.seeds) < max_seeds and len(base.usable()) < 2:
            return self.baseline
        return None

    def state(self) -> dict[str, Any]:
        return {"margin": self.margin, "accuracy": self.accuracy, "cells": self.cells,
                "baseline": self.baseline, "by_trial": self.by_trial, "best": self.best}

    def load(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class StatefulSearcher(Searcher):
    """A Searcher whose whole state is `self.ledger` plus `_extra_state()`, pickled by Tune."""

    ledger: SeedLedger

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.ledger.record_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result:
            self.ledger.record_result(trial_id, result)
        self.ledger.finish(trial_id, result, error)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"ledger": self.ledger.state(), **self._extra_state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.ledger.load(state.pop("ledger"))
        self._load_extra_state(state)


class SeedsUntilDecided(StatefulSearcher):
    """`min_seeds` for every cell and the baseline, then seeds where the verdict is open to
    doubt, up to `max_seeds` a cell (see the module docstring).

    `first` is the order of the first round (e.g. longest trials first); configs carry every
    key of a trial config, their `seed` included.
    """

    def __init__(self, first: Sequence[dict[str, Any]], baseline: dict[str, Any], *,
                 margin: float, max_seeds: int, accuracy: str = "final") -> None:
        super().__init__(metric="test_acc", mode="max")
        self.ledger = SeedLedger(baseline, margin=margin, accuracy=accuracy)
        self.queue = [dict(c) for c in first]
        self.keys = [self.ledger.add_cell(c) for c in self.queue]
        self.max_seeds = max_seeds

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue:
            config = self.queue.pop(0)
            return self.ledger.hand_out(cell_key(config), trial_id, config)
        for key in dict.fromkeys(self.keys):
            if key == self.ledger.baseline:
                continue
            target = self.ledger.wants_seed(key, self.max_seeds)
            if target is not None:
                return self.ledger.hand_out(target, trial_id)
        return None if self.ledger.any_pending() else Searcher.FINISHED

    def _extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue, "keys": self.keys, "max_seeds": self.max_seeds}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue, self.keys, self.max_seeds = state["queue"], state["keys"], state["max_seeds"]


@dataclass
class Bisection:
    """The frontier at one batch size: multipliers known closed (`hi`) and not (`lo`)."""

    batch_size: int
    matched: int
    lo: int | None = None  # largest probed multiplier that is not closed
    hi: int | None = None  # smallest probed multiplier that is closed
    probing: int | None = None
    probed: list[tuple[int, str]] = field(default_factory=list)
    done: bool = False

    def next_multiplier(self) -> int | None:
        """Matched first (does anything close?), then 1, then the log midpoint."""
        if self.done:
            return None
        if not self.probed:
            return self.matched
        if self.hi is None:
            self.done = True  # not closed even at matched
            return None
        if self.lo is None:
            return 1 if self.hi > 1 else self._finish()
        if self.hi - self.lo <= 1:
            return self._finish()
        mid = round(math.sqrt(self.lo * self.hi))
        return min(max(mid, self.lo + 1), self.hi - 1)

    def _finish(self) -> None:
        self.done = True
        return None

    def settle(self, multiplier: int, verdict: str) -> None:
        self.probed.append((multiplier, verdict))
        self.probing = None
        if verdict == CLOSED:
            self.hi = multiplier if self.hi is None else min(self.hi, multiplier)
        else:
            self.lo = multiplier if self.lo is None else max(self.lo, multiplier)


def probe_config(template: dict[str, Any], batch_size: int, multiplier: int) -> dict[str, Any]:
    """The trial config (seed 0) of the frontier's probe at this batch size and multiplier."""
    ghost = template.get("ghost_batch_size")
    return {**template, "batch_size": batch_size, "regime_multiplier": float(multiplier),
            "ghost_batch_size": ghost if ghost is not None and ghost < batch_size else None,
            "seed": 0}


class FrontierSearch(StatefulSearcher):
    """Per batch size, bisect the regime multiplier for the smallest closed cell.

    A probe is `template` (a whole trial config) at one batch size and whole multiplier;
    a ghost batch as large as the batch is plain BatchNorm, as in grids.
    """

    def __init__(self, batch_sizes: Iterable[int], base_batch_size: int,
                 template: dict[str, Any], baseline: dict[str, Any], *,
                 margin: float, min_seeds: int, max_seeds: int, accuracy: str = "final") -> None:
        super().__init__(metric="test_acc", mode="max")
        self.ledger = SeedLedger(baseline, margin=margin, accuracy=accuracy)
        self.queue = [{**baseline, "seed": s} for s in range(min_seeds)]
        self.template = dict(template)
        self.min_seeds, self.max_seeds = min_seeds, max_seeds
        self.lines = [Bisection(b, max(1, math.ceil(b / base_batch_size))) for b in batch_sizes]
        self.probe_keys: dict[tuple[int, int], str] = {}

    def _probe_key(self, line: Bisection, multiplier: int) -> str:
        key = self.probe_keys.get((line.batch_size, multiplier))
        if key is None:
            key = self.ledger.add_cell(probe_config(self.template, line.batch_size, multiplier))
            self.probe_keys[(line.batch_size, multiplier)] = key
        return key

    def _advance(self, line: Bisection, trial_id: str) -> dict | None:
        """A trial for this batch size's bisection, or None if it must wait or is done."""
        if line.probing is None:
            multiplier = line.next_multiplier()
            if multiplier is None:
                return None
            line.probing = multiplier
        key = self._probe_key(line, line.probing)
        cell = self.ledger.cells[key]
        if len(cell.seeds) < self.min_seeds:
            return self.ledger.hand_out(key, trial_id)
        if self.ledger.pending(key) or self.ledger.pending(self.ledger.baseline):
            return None
        target = self.ledger.wants_seed(key, self.max_seeds)
        if target is not None:
            return self.ledger.hand_out(target, trial_id)
        line.settle(line.probing, self.ledger.decide(key).verdict)
        return self._advance(line, trial_id)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue:
            config = self.queue.pop(0)
            return self.ledger.hand_out(cell_key(config), trial_id, config)
        for line in self.lines:
            config = self._advance(line, trial_id)
            if config is not None:
                return config
        if self.ledger.any_pending() or not all(line.done for line in self.lines):
            return None
        return Searcher.FINISHED

    def _extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue, "lines": self.lines, "probe_keys": self.probe_keys}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue, self.lines, self.probe_keys = state["queue"], state["lines"], state["probe_keys"]
