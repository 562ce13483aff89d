"""The error rates of a seed design, measured by running the study's own decision code.

`simulate(design, gap=..., sd=..., margin=...)` plays many studies of one cell against the
baseline through `SeedsUntilDecided` (the searcher `--seeds auto` uses), answering each trial
with a normal draw (mean 95 for the baseline, 95 - gap for the cell, spread `sd`), and
judges the seeds it ended with by `tunegap.analysis.decide.decide_gap` at the design's
confidence, as `compute_cells` does. Nothing is copied: change the ledger or the rule and
these numbers change. `benchmarks/verdict_error.py` prints them; a test checks them.

`others` adds cells that share the baseline (e.g. gaps 0 and 2 * margin): their requests
grow the baseline on their own schedule, as in a real map, and the rates are still those of
the first cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ray.tune.search import Searcher

from tunegap.analysis.decide import CLOSED, FAMILY_ALPHA, OPEN, SeedDesign, cell_key, decide_gap
from tunegap.runner.adaptive import SeedsUntilDecided

BASE_ACCURACY = 95.0


class EveryLookAtFivePercent(SeedDesign):
    """The rule before the planned looks: the cell judged after every added seed, each time
    at the full 5% (what `--seeds auto` did up to the second release); kept to show what it
    costs, never used by a study."""

    @property
    def alpha(self) -> float:
        return FAMILY_ALPHA


@dataclass(frozen=True)
class ErrorRates:
    sequences: int
    p_closed: float
    p_open: float
    mean_seeds_cell: float
    mean_seeds_baseline: float

    def monte_carlo_error(self, p: float) -> float:
        """One standard error of a rate near `p` over these sequences."""
        return float(np.sqrt(max(p, 1e-12) * (1 - p) / self.sequences))


def _config(batch_size: int) -> dict:
    return {"workload": "simulated", "batch_size": batch_size, "ghost_batch_size": None,
            "lr_exponent": 0.5, "regime_multiplier": 1.0}


def simulate(design: SeedDesign, *, gap: float, sd: float = 1.0, margin: float = 0.5,
             sequences: int = 10_000, others: Sequence[float] = (), seed: int = 0,
             concurrency: int = 2) -> ErrorRates:
    """The chance that the first cell ends "closed" and "open", and the mean seeds used,
    over `sequences` simulated studies (see the module docstring)."""
    rng = np.random.default_rng(seed)
    base_cfg = _config(32)
    cells = [_config(64 * (i + 1)) for i in range(1 + len(others))]
    means = {32: BASE_ACCURACY}
    for cfg, g in zip(cells, (gap, *others), strict=True):
        means[cfg["batch_size"]] = BASE_ACCURACY - g
    first_look = design.looks[0]
    closed = opened = 0
    seeds_cell = seeds_base = 0
    for _ in range(sequences):
        first = [{**c, "seed": s} for s in range(first_look) for c in [base_cfg, *cells]]
        searcher = SeedsUntilDecided(first, {**base_cfg, "seed": 0}, margin=margin,
                                     max_seeds=design.looks[-1], design=design)
        values = _drive(searcher, means, sd, rng, concurrency)
        base = values[cell_key(base_cfg)]
        mine = values[cell_key(cells[0])]
        verdict = decide_gap(base, mine, margin=margin, confidence=design.confidence).verdict
        closed += verdict == CLOSED
        opened += verdict == OPEN
        seeds_cell += len(mine)
        seeds_base += len(base)
    return ErrorRates(sequences, closed / sequences, opened / sequences,
                      seeds_cell / sequences, seeds_base / sequences)


def drive_searcher(searcher: Searcher, finish: Callable[[str, dict], None], *,
                   pick: Callable[[list[str]], str], concurrency: int = 2,
                   limit: int | None = None) -> list[dict]:
    """Run `searcher` to FINISHED as Tune would, `concurrency` trials at once: `pick` chooses
    which running trial (of their sorted ids) finishes next, and `finish(trial_id, config)`
    reports it to the searcher. Returns every config suggested, in order; RuntimeError if the
    searcher waits with nothing running or suggests `limit` trials."""
    running: dict[str, dict] = {}
    suggested: list[dict] = []
    n = 0
    while True:
        finished = False
        while len(running) < concurrency:
            n += 1
            out = searcher.suggest(f"t{n}")
            if out == Searcher.FINISHED:
                finished = True
                break
            if out is None:
                break
            running[f"t{n}"] = out
            suggested.append(out)
            if limit is not None and len(suggested) >= limit:
                raise RuntimeError(f"the searcher suggested {limit} trials, the limit")
        if not running:
            if not finished:
                raise RuntimeError("the searcher waits with nothing running")
            return suggested
        trial_id = pick(sorted(running))
        finish(trial_id, running.pop(trial_id))


def _drive(searcher: SeedsUntilDecided, means: dict[int, float], sd: float,
           rng: np.random.Generator, concurrency: int) -> dict[str, list[float]]:
    """Each cell's accuracies in seed order, the trials finishing in a random order."""
    values: dict[str, dict[int, float]] = {}

    def finish(trial_id: str, config: dict) -> None:
        acc = float(rng.normal(means[config["batch_size"]], sd))
        values.setdefault(cell_key(config), {})[config["seed"]] = acc
        searcher.on_trial_complete(trial_id, {"test_acc": acc, "diverged": False})

    drive_searcher(searcher, finish, pick=lambda ids: ids[int(rng.integers(len(ids)))],
                   concurrency=concurrency)
    return {k: [v for _, v in sorted(d.items())] for k, d in values.items()}
