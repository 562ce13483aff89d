"""Tune searchers that decide as they go: seeds until each cell is decided, and the frontier.

Both keep a `SeedLedger`: per cell (a trial config without its seed) the seeds handed out,
those still running, and the accuracy of each finished one. A cell is judged only at the
planned looks of the study's `SeedDesign` (`tunegap.analysis.decide`): when it and the
baseline both have the look's seeds, `decide_gap` at the design's confidence (Bonferroni over
the looks) decides whether it gets more, the same rule the map applies at the end. So the
chance that a cell at the margin ends "closed" stays at 5% however many times it was looked
at, and the same for "open" (`benchmarks/verdict_error.py` simulates this very ledger).

- `SeedsUntilDecided` (`--seeds auto`): every cell and the baseline start with the first
  look's seeds; a cell neither decided nor at the margin grows to the next look (the
  baseline with it, where it has fewer), until the last look.
- `FrontierSearch` (the `frontier` study): per batch size, two fixed sequences over the
  multipliers 1, 2, 4, ... up to matched, each probe a cell decided as above: "closed" is
  tested from matched down, stopping at the first probe that is not closed; "open" from 1 up,
  stopping at the first that is not open. A fixed sequence keeps the family-wise error of
  each at 5% without adjustment, whatever the gap does with the multiplier, and the two give
  the frontier as a bracket: the largest multiplier decided open, the smallest decided closed.
  Both sequences' next probes run at once, beside the baseline's first seeds (a frontier
  waiting on one probe of three seeds left a slot of two idle: +72% over the trials' own time).

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

from tunegap.analysis.decide import (
    ANSWERED,
    CLOSED,
    OPEN,
    GapDecision,
    SeedDesign,
    cell_key,
    counted_seeds,
    decide_gap,
)
from tunegap.analysis.tables import best_epoch_test_acc
from tunegap.config import ghost_is_whole_batch
from tunegap.names import COMPLETED, DIVERGED, ERROR


@dataclass
class CellSeeds:
    config: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)  # trial id -> seed
    values: dict[int, float | None] = field(default_factory=dict)  # seed -> judged accuracy

    def usable(self) -> list[float]:
        """The finished seeds' accuracies that a verdict counts, in seed order."""
        return [v for _, v in sorted(self.values.items()) if v is not None]

    def next_config(self) -> dict[str, Any]:
        seed = max(self.seeds, default=-1) + 1
        return {**self.config, "seed": seed}


class SeedLedger:
    """Seeds handed out, running and finished, per cell; one cell is the baseline."""

    def __init__(self, baseline: dict[str, Any], *, margin: float, accuracy: str,
                 design: SeedDesign) -> None:
        self.margin = margin
        self.accuracy = accuracy
        self.design = design
        self.cells: dict[str, CellSeeds] = {}
        self.baseline = self.add_cell(baseline)
        self.by_trial: dict[str, str] = {}
        # trial id -> epoch -> its test and validation accuracy: enough to judge a trial at
        # its best epoch by the trials table's own rule (`best_epoch_test_acc`).
        self.epochs: dict[str, dict[int, dict[str, float]]] = {}

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
        epoch = result.get("epoch", result.get("training_iteration"))
        if isinstance(epoch, int):
            # A restored trial re-reporting an epoch replaces it, as in the epochs table.
            self.epochs.setdefault(trial_id, {})[epoch] = {
                k: result[k] for k in ("test_acc", "val_acc") if isinstance(result.get(k), float | int)}

    def finish(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        key = self.by_trial.get(trial_id)
        if key is None:
            return  # a trial this searcher did not suggest
        cell = self.cells[key]
        seed = cell.running.pop(trial_id, None)
        if seed is None:
            return
        outcome = ERROR if error or not result else DIVERGED if result.get(DIVERGED) else COMPLETED
        history = [row for _, row in sorted(self.epochs.pop(trial_id, {}).items())]
        # The accuracy the map judges (`decide.ACCURACIES`): the last epoch's, or the test
        # accuracy at the best epoch, chosen on the validation split where there is one.
        value = ((result or {}).get("test_acc") if self.accuracy == "final"
                 else best_epoch_test_acc(history))
        cell.values[seed] = value if counted_seeds([outcome], [value])[0] else None

    def pending(self, key: str) -> bool:
        return bool(self.cells[key].running)

    def any_pending(self) -> bool:
        return any(cell.running for cell in self.cells.values())

    def decide(self, key: str) -> GapDecision:
        return decide_gap(self.cells[self.baseline].usable(), self.cells[key].usable(),
                          margin=self.margin, confidence=self.design.confidence)

    def hopeless(self, key: str) -> bool:
        """Every finished seed diverged or failed: more seeds would not decide a gap."""
        cell = self.cells[key]
        return len(cell.values) >= 2 and not cell.usable()

    def wants_seed(self, key: str) -> str | None:
        """Which cell should get the next seed for `key` to be judged: `key` itself, the
        baseline, or None (settled, past the last look, or waiting for a running seed).

        The cell is judged only when its seeds are exactly a planned look and the baseline
        has at least as many; it settles when decided or at the
        margin, or when that look was the last; otherwise it grows to the next look.
        """
        if self.hopeless(key):
            return None
        cell, base = self.cells[key], self.cells[self.baseline]
        looks = self.design.looks
        have = len(cell.seeds)
        if have < looks[0]:
            return key  # the first look's seeds go out at once, as a grid's would
        if self.pending(key) or self.pending(self.baseline):
            return None
        look = max(n for n in looks if n <= have)
        if have > look:
            return key  # on the way to the next look: not judged in between
        if len(base.seeds) < look:
            return self.baseline
        if self.settled(key):
            return None
        return key if self.design.next_look(have) is not None else None

    def settled(self, key: str) -> bool:
        """Decided (closed or open) or at the margin: no more seeds would change the answer
        the design can give."""
        return self.decide(key).verdict in ANSWERED

    def state(self) -> dict[str, Any]:
        return {"margin": self.margin, "accuracy": self.accuracy, "design": self.design,
                "cells": self.cells,
                "baseline": self.baseline, "by_trial": self.by_trial, "epochs": self.epochs}

    def load(self, state: dict[str, Any]) -> None:
        self.__setstate__(state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A ledger saved before it kept epochs (it kept each trial's best test accuracy,
        # "best") resumes with none: a trial still running then reports its epochs again.
        self.__dict__.update({k: v for k, v in state.items() if k != "best"})
        self.__dict__.setdefault("epochs", {})


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
    """The first look's seeds for every cell and the baseline, then seeds, look by look,
    where the verdict is open to doubt (see the module docstring).

    `first` is the order of the first round (e.g. longest trials first); configs carry every
    key of a trial config, their `seed` included. `design` defaults to
    `SeedDesign.adaptive(min_seeds, max_seeds)`.
    """

    def __init__(self, first: Sequence[dict[str, Any]], baseline: dict[str, Any], *,
                 margin: float, max_seeds: int, min_seeds: int = 3,
                 design: SeedDesign | None = None, accuracy: str = "final") -> None:
        super().__init__(metric="test_acc", mode="max")
        design = design or SeedDesign.adaptive(min_seeds, max_seeds)
        self.ledger = SeedLedger(baseline, margin=margin, accuracy=accuracy, design=design)
        self.queue = [dict(c) for c in first]
        self.keys = [self.ledger.add_cell(c) for c in self.queue]
        self.max_seeds = design.looks[-1]

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue:
            config = self.queue.pop(0)
            return self.ledger.hand_out(cell_key(config), trial_id, config)
        for key in dict.fromkeys(self.keys):
            if key == self.ledger.baseline:
                continue
            target = self.ledger.wants_seed(key)
            if target is not None:
                return self.ledger.hand_out(target, trial_id)
        return None if self.ledger.any_pending() else Searcher.FINISHED

    def _extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue, "keys": self.keys, "max_seeds": self.max_seeds}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue, self.keys, self.max_seeds = state["queue"], state["keys"], state["max_seeds"]


def frontier_multipliers(matched: int) -> list[int]:
    """The multipliers a frontier line may probe: 1, 2, 4, ... below matched, and matched."""
    out = [1]
    while out[-1] * 2 < matched:
        out.append(out[-1] * 2)
    if out[-1] < matched:
        out.append(matched)
    return out


@dataclass
class FixedSequences:
    """The frontier at one batch size: "closed" tested from matched down, "open" from 1 up,
    each stopping at its first failure (see the module docstring)."""

    batch_size: int
    matched: int
    multipliers: list[int] = field(default_factory=list)
    verdicts: dict[int, str] = field(default_factory=dict)
    top: int = -1  # index of the next multiplier the closed sequence tests
    bottom: int = 0  # index of the next multiplier the open sequence tests
    closed_done: bool = False
    open_done: bool = False

    def __post_init__(self) -> None:
        if not self.multipliers:
            self.multipliers = frontier_multipliers(self.matched)
        self.top = len(self.multipliers) - 1

    @property
    def done(self) -> bool:
        return self.closed_done and self.open_done

    def next_multipliers(self) -> list[int]:
        """The probes each sequence tests next, the closed sequence's first; [] when both
        have stopped. They run at once: each sequence's path depends on its own verdicts
        only, so the probes tested are the same as one after the other, and two probes'
        seeds fill the trial slots that one probe's few seeds would leave idle."""
        self.walk()
        wanted = []
        if not self.closed_done:
            wanted.append(self.multipliers[self.top])
        if not self.open_done and self.multipliers[self.bottom] not in wanted:
            wanted.append(self.multipliers[self.bottom])
        return wanted

    def settle(self, multiplier: int, verdict: str) -> None:
        self.verdicts[multiplier] = verdict
        self.walk()

    def walk(self) -> None:
        """Walk each sequence over the probes already judged (`verdicts`)."""
        while not self.closed_done:
            if self.top < 0:
                self.closed_done = True
            elif (m := self.multipliers[self.top]) in self.verdicts:
                if self.verdicts[m] == CLOSED:
                    self.top -= 1
                else:
                    self.closed_done = True
            else:
                break
        while not self.open_done:
            if self.bottom >= len(self.multipliers):
                self.open_done = True
            elif (m := self.multipliers[self.bottom]) in self.verdicts:
                if self.verdicts[m] == OPEN:
                    self.bottom += 1
                else:
                    self.open_done = True
            else:
                break

    def bracket(self) -> tuple[int | None, int | None]:
        """(largest multiplier decided open, smallest decided closed), None where none is."""
        largest_open = self.multipliers[self.bottom - 1] if self.bottom > 0 else None
        smallest_closed = (self.multipliers[self.top + 1]
                           if self.top + 1 < len(self.multipliers) else None)
        return largest_open, smallest_closed


def probe_config(template: dict[str, Any], batch_size: int, multiplier: int) -> dict[str, Any]:
    """The trial config (seed 0) of the frontier's probe at this batch size and multiplier."""
    ghost = template.get("ghost_batch_size")
    return {**template, "batch_size": batch_size, "regime_multiplier": float(multiplier),
            "ghost_batch_size": None if ghost_is_whole_batch(ghost, batch_size) else ghost,
            "seed": 0}


class FrontierSearch(StatefulSearcher):
    """Per batch size, the frontier's bracket by two fixed sequences of probes.

    A probe is `template` (a whole trial config) at one batch size and whole multiplier;
    a ghost batch as large as the batch is plain BatchNorm, as in grids.
    """

    def __init__(self, batch_sizes: Iterable[int], base_batch_size: int,
                 template: dict[str, Any], baseline: dict[str, Any], *,
                 margin: float, min_seeds: int, max_seeds: int,
                 design: SeedDesign | None = None, accuracy: str = "final") -> None:
        super().__init__(metric="test_acc", mode="max")
        design = design or SeedDesign.adaptive(min_seeds, max_seeds)
        self.ledger = SeedLedger(baseline, margin=margin, accuracy=accuracy, design=design)
        self.queue = [{**baseline, "seed": s} for s in range(design.looks[0])]
        self.template = dict(template)
        self.lines = [FixedSequences(b, max(1, math.ceil(b / base_batch_size)))
                      for b in batch_sizes]
        self.probe_keys: dict[tuple[int, int], str] = {}

    def _probe_key(self, line: FixedSequences, multiplier: int) -> str:
        key = self.probe_keys.get((line.batch_size, multiplier))
        if key is None:
            key = self.ledger.add_cell(probe_config(self.template, line.batch_size, multiplier))
            self.probe_keys[(line.batch_size, multiplier)] = key
        return key

    def _advance(self, line: FixedSequences, trial_id: str) -> dict | None:
        """A trial for this batch size's sequences, or None if they must wait or are done."""
        for multiplier in line.next_multipliers():
            key = self._probe_key(line, multiplier)
            target = self.ledger.wants_seed(key)
            if target is not None:
                return self.ledger.hand_out(target, trial_id)
            if self.ledger.pending(key) or self.ledger.pending(self.ledger.baseline):
                continue
            line.settle(multiplier, self.ledger.decide(key).verdict)
            return self._advance(line, trial_id)
        return None

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
