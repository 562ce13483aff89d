"""The one home of judging: what decides a cell, at which error, in which words.

A *cell* is one setting of the knobs over its seeds. Its *gap* is `baseline - cell` test
accuracy in points (positive = worse than the small batch). The *margin* is the largest gap
that still counts as none, declared before the run (`Study.margin`, default 0.5), never
estimated from the results.

**The rule** (`decide_gap`, ../shared/PAPER.md "Deciding 'closed'"): Welch's interval of the
gap at confidence 1 - 2a, i.e. two one-sided tests at level a each,

- **closed** when its upper end <= margin (not worse by more than the margin);
- **open** when its lower end > margin (worse by more than the margin);
- **at the margin** when neither, but the interval is no wider than twice the margin: a
  precise answer of its own (the gap is near the margin, and the interval says where);
- **inconclusive** otherwise, or with fewer than 2 usable seeds on a side.

**Seeds added on the way** (`SeedDesign`). A cell is judged only at *planned looks*: seed
counts per side fixed before the run (`--seeds N`: one look at N; `--seeds auto`: min_seeds,
then doubling, up to max_seeds). With K planned looks each one-sided test runs at
a = 0.05 / K (Bonferroni over looks): whatever the stopping rule, the chance that any look
calls a cell at the margin "closed" is at most K * 0.05 / K = 0.05, and the same for "open".
It is the simplest valid group-sequential boundary (a Pocock-like constant one, stated
without a table), and with few looks (doubling seed counts: 3 looks for 3 to 12 seeds) it
costs little against Pocock's exact constant. `benchmarks/verdict_error.py` checks both
errors by running the searcher's own ledger and this module on simulated seeds.

**Multiplicity over a map** (`map_verdicts`): each cell's p-value of the "closed" test (H0:
gap >= margin) and of the "open" test (H0: gap <= margin), times K, Holm-adjusted over the
map's decidable cells, one family per direction: the chance that any "closed" of a map is
wrong is at most 5%, and the same for any "open".

**Paired effects**: the comparison of two cells seed by seed is decided in
`tunegap.analysis.effects` (`paired_effect`), in the words defined here (better, worse,
equivalent, inconclusive) and at the same confidence.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunegap.analysis.power import seeds_for_power
from tunegap.names import COMPLETED, TRAINING_KNOBS

__all__ = [
    "ACCURACIES",
    "ANSWERED",
    "AT_MARGIN",
    "BETTER",
    "CELL_COLUMNS",
    "CELL_KNOBS",
    "CLOSED",
    "CONFIDENCE",
    "DEFAULT_MARGIN",
    "EFFECT_VERDICTS",
    "EQUIVALENT",
    "FAMILY_ALPHA",
    "INCONCLUSIVE",
    "OPEN",
    "OPTIONAL_KNOBS",
    "VERDICTS",
    "WORSE",
    "GapDecision",
    "SeedDesign",
    "cell_key",
    "check_margin",
    "closed_p_value",
    "counted_seeds",
    "decide_gap",
    "gap_p_values",
    "holm",
    "map_verdicts",
    "rule_sentence",
]

# What a cell is: the knobs its seeds share. Always these four (a trial config without its
# seed, `cell_key`, in the driver; the trials table's columns, `cells.cell_knobs`)...
CELL_KNOBS: tuple[str, ...] = ("batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier")
# ...and these, where a study sets them on some trial; otherwise always missing. The
# training knobs (`tunegap.names.TRAINING_KNOBS`) always have a value in the trials table:
# they are knobs of a cell only where they take more than one (`cells.cell_knobs`).
OPTIONAL_KNOBS: tuple[str, ...] = ("base_lr_override", "epochs_override", *TRAINING_KNOBS)
CELL_COLUMNS: tuple[str, ...] = (*CELL_KNOBS, *OPTIONAL_KNOBS)
DEFAULT_MARGIN = 0.5
FAMILY_ALPHA = 0.05  # each one-sided test, over all looks (and over a map, after Holm)
CONFIDENCE = 1 - 2 * FAMILY_ALPHA  # the interval of a one-look design: 90%
# Trials-table column each accuracy mode judges a trial by.
ACCURACIES: dict[str, str] = {"final": "test_acc", "best": "best_test_acc"}

CLOSED, OPEN, AT_MARGIN, INCONCLUSIVE = "closed", "open", "at the margin", "inconclusive"
BASELINE, DIVERGED_CELL, ERROR_CELL = "baseline", "diverged", "error"
# Every value of compute_cells' `verdict` column.
VERDICTS: tuple[str, ...] = (BASELINE, CLOSED, OPEN, AT_MARGIN, INCONCLUSIVE, DIVERGED_CELL,
                             ERROR_CELL)
DECIDED: tuple[str, ...] = (CLOSED, OPEN)
# A cell that answers its question: decided, or precisely at the margin.
ANSWERED: tuple[str, ...] = (*DECIDED, AT_MARGIN)
BETTER, WORSE, EQUIVALENT = "better", "worse", "equivalent"
EFFECT_VERDICTS: tuple[str, ...] = (BETTER, WORSE, EQUIVALENT, INCONCLUSIVE)


@dataclass(frozen=True, kw_only=True)
class SeedDesign:
    """The planned looks of a study: the seed counts per side at which a cell is judged.

    `SeedDesign.fixed(3)`: one look at 3 seeds, tests at 5% each (the 90% interval).
    `SeedDesign.adaptive(3, 12)`: looks at 3, 6 and 12 seeds, tests at 5% / 3 each.

    >>> SeedDesign.adaptive(3, 12).looks, round(SeedDesign.adaptive(3, 12).confidence, 4)
    ((3, 6, 12), 0.9667)
    """

    looks: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.looks or any(b <= a for a, b in itertools.pairwise(self.looks)):
            raise ValueError(f"looks {self.looks!r} are not allowed: use increasing seed counts")

    @classmethod
    def fixed(cls, seeds: int) -> SeedDesign:
        return cls(looks=(int(seeds),))

    @classmethod
    def adaptive(cls, min_seeds: int, max_seeds: int) -> SeedDesign:
        """Looks at min_seeds, then doubling, then max_seeds."""
        looks = [int(min_seeds)]
        while looks[-1] * 2 < max_seeds:
            looks.append(looks[-1] * 2)
        if looks[-1] < max_seeds:
            looks.append(int(max_seeds))
        return cls(looks=tuple(looks))

    @property
    def alpha(self) -> float:
        """The level of each one-sided test at one look."""
        return FAMILY_ALPHA / len(self.looks)

    @property
    def confidence(self) -> float:
        return 1 - 2 * self.alpha

    def next_look(self, seeds: int) -> int | None:
        """The first planned look above `seeds`, or None when the last one is reached."""
        return next((n for n in self.looks if n > seeds), None)



@dataclass(frozen=True)
class GapDecision:
    """`decide_gap`'s answer for one cell against the baseline."""

    verdict: str  # closed | open | at the margin | inconclusive
    gap: float  # mean(baseline) - mean(cell), points; NaN if a side is empty
    low: float  # lower end of Welch's interval of the gap (NaN if undecidable)
    high: float  # upper end
    limiting_side: str | None  # "baseline" or "cell": the side whose variance/n is larger
    seeds_to_decide: int | None  # inconclusive only: seeds per side deciding at POWER


def decide_gap(
    baseline: Sequence[float], cell: Sequence[float], *, margin: float,
    confidence: float = CONFIDENCE,
) -> GapDecision:
    """Decide whether `cell` closes the gap to `baseline` at `margin` points.

    `baseline` and `cell` are the seeds' test accuracies (points); non-finite values are
    dropped. gap = mean(baseline) - mean(cell); [low, high] is Welch's `confidence` interval
    of it (unequal variances, Welch–Satterthwaite degrees of freedom; a design with K looks
    passes `SeedDesign.confidence`). Verdict: "closed" if high <= margin, "open" if
    low > margin, "at the margin" if neither and high - low <= 2 * margin, else
    "inconclusive"; also "inconclusive" (low = high = NaN, limiting_side = seeds_to_decide =
    None) with fewer than 2 usable values on a side.

    When neither side has any spread the interval is the point gap itself (degenerate but
    exact). `limiting_side` is the side whose variance / n is larger (ties: "cell").
    `seeds_to_decide`, for a verdict that is not closed or open with 2+ values a side: the
    smallest n in (max of the current counts, 1000] with which, if the observed gap and
    spreads were the truth, the interval would decide with probability `POWER` (80%);
    None when no such n exists (e.g. gap == margin).

    Raises ValueError for a margin that is not a finite number >= 0 or a confidence outside
    (0, 1).
    """
    margin = check_margin(margin)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} is not allowed: use 0 < confidence < 1")
    base = _finite(baseline)
    other = _finite(cell)
    gap = float(base.mean() - other.mean()) if len(base) and len(other) else math.nan
    if len(base) < 2 or len(other) < 2:
        return GapDecision(INCONCLUSIVE, gap, math.nan, math.nan, None, None)
    var_b, var_c = float(base.var(ddof=1)), float(other.var(ddof=1))
    limiting = "baseline" if var_b / len(base) > var_c / len(other) else "cell"
    low, high = _welch_interval(base, other, confidence)
    verdict = _verdict(low, high, margin)
    seeds = None
    if verdict not in DECIDED:
        seeds = seeds_for_power(gap, var_b, var_c, margin=margin, confidence=confidence,
                                more_than=max(len(base), len(other)))
    return GapDecision(verdict, gap, low, high, limiting, seeds)


def gap_p_values(baseline: Sequence[float], cell: Sequence[float], *,
                 margin: float) -> tuple[float, float]:
    """One-sided Welch p-values (closed, open): of H0 gap >= margin (small p: closed) and of
    H0 gap <= margin (small p: open); NaN with fewer than 2 finite values a side. Without
    spread on either side the gap is exact: p = 0 where it holds, else 1."""
    margin = check_margin(margin)
    base, other = _finite(baseline), _finite(cell)
    if len(base) < 2 or len(other) < 2:
        return math.nan, math.nan
    if np.ptp(base) == 0 and np.ptp(other) == 0:
        gap = float(base.mean() - other.mean())
        return (0.0 if gap <= margin else 1.0), (0.0 if gap > margin else 1.0)
    from scipy import stats

    with _quiet_precision():
        test = stats.ttest_ind(base - margin, other, equal_var=False, alternative="less")
    p_closed = float(test.pvalue)
    return p_closed, 1.0 - p_closed


def closed_p_value(baseline: Sequence[float], cell: Sequence[float], *, margin: float) -> float:
    """The "closed" half of `gap_p_values`."""
    return gap_p_values(baseline, cell, margin=margin)[0]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of `p_values` (family-wise error control).

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of
    p_(i) is max over j <= i of min(1, (m - j + 1) * p_(j)); NaN entries stay NaN and are not
    counted in m. Rejecting where the adjusted value is < alpha controls the chance of any
    false rejection at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    index = np.flatnonzero(np.isfinite(p))
    m = len(index)
    running = 0.0
    for rank, pos in enumerate(index[np.argsort(p[index], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[pos])))
        out[pos] = running
    return out


def map_verdicts(verdicts: Sequence[str], p_closed: Sequence[float], p_open: Sequence[float],
                 *, design: SeedDesign) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Holm over a map, both ways: (closed p adjusted, open p adjusted, verdicts).

    Each p-value is first multiplied by the design's number of looks (Bonferroni over
    looks, capped at 1), then Holm-adjusted over the finite ones of its direction. A cell is
    "closed" where its adjusted closed p < 0.05, "open" where its adjusted open p < 0.05; a
    per-cell closed or open that does not survive becomes "inconclusive"; other verdicts
    are kept.
    """
    looks = len(design.looks)
    adj_c = holm(np.minimum(1.0, looks * np.asarray(p_closed, dtype=float)))
    adj_o = holm(np.minimum(1.0, looks * np.asarray(p_open, dtype=float)))
    out = []
    for verdict, pc, po in zip(verdicts, adj_c, adj_o, strict=True):
        if math.isfinite(pc) and pc < FAMILY_ALPHA:
            out.append(CLOSED)
        elif math.isfinite(po) and po < FAMILY_ALPHA:
            out.append(OPEN)
        else:
            out.append(INCONCLUSIVE if verdict in DECIDED else verdict)
    return adj_c, adj_o, out


def cell_key(config: Mapping[str, Any]) -> str:
    """A cell's identity in the driver: its trial config without the seed.

    >>> cell_key({"batch_size": 512, "seed": 3}) == cell_key({"seed": 0, "batch_size": 512})
    True
    """
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)


def counted_seeds(outcomes: Sequence[str], values: Sequence[object]) -> np.ndarray:
    """Which seeds a verdict counts, as a mask: a trial that completed its regime with a
    finite judged accuracy. The one rule for the map's cells, the paired comparisons and the
    searchers that add seeds; diverged, failed and stopped trials are counted apart.

    >>> counted_seeds(["completed", "diverged", "completed"], [91.0, 10.0, float("nan")])
    array([ True, False, False])
    """
    judged = np.array(list(outcomes), dtype=object) == COMPLETED
    return judged & np.isfinite(_as_floats(values))


def judged_accuracy(accuracy: str = "final", validation_fraction: float = 0.0) -> str:
    """Which test accuracy of a trial the verdicts judge, in words: the final epoch's, the
    one at the best epoch on a held-out validation split, or the best over the test
    evaluations (the authors' way, optimistic).

    >>> judged_accuracy("best", 0.1)[:60]
    'test accuracy at the epoch of best accuracy on 10% of the tr'
    >>> judged_accuracy("final")
    'final-epoch test accuracy'
    """
    if accuracy != "best":
        return "final-epoch test accuracy"
    if validation_fraction:
        return (f"test accuracy at the epoch of best accuracy on {100 * validation_fraction:g}% "
                "of the training set held out, trained on the rest")
    return "best-epoch test accuracy, the maximum over test evaluations: optimistic"


def rule_sentence(*, margin: float, design: SeedDesign, accuracy: str = "final",
                  validation_fraction: float = 0.0) -> str:
    """The rule a map was judged by, in one sentence (summaries, MLflow, the CLI).
    `validation_fraction`: the share of the training set held out to choose a best epoch."""
    looks = design.looks
    conf = f"{100 * design.confidence:.3g}%"
    if len(looks) == 1:
        how = f"{looks[0]} seed(s) a side, one look"
    else:
        how = (f"seeds added where undecided, judged only at {', '.join(map(str, looks))} "
               f"seeds a side ({len(looks)} looks, Bonferroni: each one-sided test at "
               f"{100 * design.alpha:.3g}%)")
    which = judged_accuracy(accuracy, validation_fraction)
    return (f"Welch {conf} interval of gap = baseline - cell ({which}; {how}) "
            f"against the margin {margin:g} points declared before the run: closed if its "
            f"upper end <= {margin:g}, open if its lower end > {margin:g}, at the margin if "
            f"neither but no wider than {2 * margin:g}, else inconclusive; over the map, Holm "
            f"at {100 * FAMILY_ALPHA:g}% on the closed tests and, separately, on the open tests "
            "(verdict_holm)")


def check_margin(margin: object, name: str = "margin") -> float:
    """The margin as a float: points of test accuracy from 0 to 100 (the one rule, for the
    study's `--margin` and every judging function); ValueError naming `name` otherwise."""
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not (
        math.isfinite(margin) and 0 <= margin <= 100
    ):
        raise ValueError(f"{name} {margin!r} is not allowed: use points of test accuracy from "
                         "0 to 100")
    return float(margin)


def _as_floats(values: Sequence[object]) -> np.ndarray:
    return np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"),
                      dtype=float)


def _finite(values: Sequence[float]) -> np.ndarray:
    array = _as_floats(values)
    return array[np.isfinite(array)]


def _verdict(low: float, high: float, margin: float) -> str:
    if high <= margin:
        return CLOSED
    if low > margin:
        return OPEN
    if high - low <= 2 * margin:
        return AT_MARGIN
    return INCONCLUSIVE


@contextmanager
def _quiet_precision() -> Iterator[None]:
    """Seeds that agree exactly on one side (accuracies are multiples of 100 / test-set
    size) make scipy warn of precision loss; that variance is 0 up to rounding and the test
    stays sound, so the warning would only alarm."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        yield


def _welch_interval(base: np.ndarray, other: np.ndarray, confidence: float) -> tuple[float, float]:
    gap = float(base.mean() - other.mean())
    if np.ptp(base) == 0 and np.ptp(other) == 0:
        # No spread on either side: Welch's t is undefined (scipy gives NaN), but the gap is
        # then known exactly.
        return gap, gap
    # Imported here: scipy.stats takes most of a second to import, and every study CLI
    # imports this module at start-up while only the end of a study runs the test.
    from scipy import stats

    with _quiet_precision():
        test = stats.ttest_ind(base, other, equal_var=False)
        interval = test.confidence_interval(confidence)
    return float(interval.low), float(interval.high)
