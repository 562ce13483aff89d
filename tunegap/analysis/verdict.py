"""The verdict on each cell of a map: a decision at a margin declared before the run.

A *cell* is one setting of the knobs (`tunegap.names.CELL_KNOBS`, plus `base_lr_override` /
`epochs_override` where a study sets them), over its seeds. The *gap* of a cell is
`baseline - cell` test accuracy in points (positive = worse than the small batch), each a
mean over seeds. The *margin* is the largest loss in points that still counts as no gap; it
is declared before the run (`Study.margin`, `--margin`, default 0.5), never estimated from
the results (a tolerance such as the baseline's own seed spread is not a valid margin).

`decide_gap(baseline, cell, margin=M)` is the rule (PAPER.md, "Deciding 'closed'"): Welch's
90% interval of the gap, i.e. two one-sided tests at 5% each,

- **closed** when its upper end <= M (not worse than the baseline by more than M, at 95%);
- **open** when its lower end > M (worse by more than M, at 95%);
- **inconclusive** otherwise, or with fewer than 2 usable seeds on a side; then
  `seeds_to_decide` says how many seeds per side would decide it if the means and spreads
  stayed as they are.

A point estimate is not a decision, and "p > 0.05" is absence of evidence, not equivalence:
a cell without enough seeds stays inconclusive.

Cells of a map and their verdicts are `tunegap.analysis.cells.compute_cells`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunegap.names import TRAINING_KNOBS

__all__ = [
    "ACCURACIES",
    "CONFIDENCE",
    "DEFAULT_MARGIN",
    "FAMILY_ALPHA",
    "MAX_SEEDS_TO_DECIDE",
    "OPTIONAL_KNOBS",
    "VERDICTS",
    "GapDecision",
    "check_margin",
    "closed_p_value",
    "decide_gap",
    "holm",
]

# Only knobs of a cell when a study sets them on some trial; otherwise always missing. The
# training knobs (`tunegap.names.TRAINING_KNOBS`) always have a value in the trials table:
# they are knobs of a cell only where they take more than one (`cells.cell_knobs`).
OPTIONAL_KNOBS: tuple[str, ...] = ("base_lr_override", "epochs_override", *TRAINING_KNOBS)
DEFAULT_MARGIN = 0.5
CONFIDENCE = 0.90  # two one-sided tests at 5% each
FAMILY_ALPHA = 0.05  # the level of verdict_holm's family-wise error
MAX_SEEDS_TO_DECIDE = 1000
# Trials-table column each accuracy mode judges a trial by.
ACCURACIES: dict[str, str] = {"final": "test_acc", "best": "best_test_acc"}
# Every value of compute_cells' `verdict` column.
VERDICTS: tuple[str, ...] = ("baseline", "closed", "open", "inconclusive", "diverged", "error")


@dataclass(frozen=True)
class GapDecision:
    """`decide_gap`'s answer for one cell against the baseline."""

    verdict: str  # "closed" | "open" | "inconclusive"
    gap: float  # mean(baseline) - mean(cell), points; NaN if a side is empty
    low: float  # lower end of Welch's 90% interval of the gap (NaN if undecidable)
    high: float  # upper end
    limiting_side: str | None  # "baseline" or "cell": the side whose variance/n is larger
    seeds_to_decide: int | None  # inconclusive only: seeds per side that would decide it


def decide_gap(
    baseline: Sequence[float], cell: Sequence[float], *, margin: float, confidence: float = 0.90
) -> GapDecision:
    """Decide whether `cell` closes the gap to `baseline` at `margin` points.

    `baseline` and `cell` are the seeds' test accuracies (points); non-finite values are
    dropped. gap = mean(baseline) - mean(cell); [low, high] is Welch's `confidence` interval
    of it (unequal variances, Welch–Satterthwaite degrees of freedom; at the default 0.90 it
    is two one-sided tests at 5% each). Verdict: "closed" if high <= margin, "open" if
    low > margin, else "inconclusive"; also "inconclusive" (low = high = NaN,
    limiting_side = seeds_to_decide = None) with fewer than 2 usable values on a side, where
    there is no spread to build an interval from.

    When neither side has any spread the interval is the point gap itself (degenerate but
    exact). `limiting_side` is the side whose variance / n is larger (ties: "cell"), i.e.
    where more seeds narrow the interval most. `seeds_to_decide`, for an inconclusive
    verdict with 2+ values a side: the smallest n in (max of the current counts, 1000] such
    that n seeds on each side with the current means and sample standard deviations would
    decide it; None when no such n exists (e.g. gap == margin) or the verdict is decided.

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
        return GapDecision("inconclusive", gap, math.nan, math.nan, None, None)
    var_b, var_c = float(base.var(ddof=1)), float(other.var(ddof=1))
    limiting = "baseline" if var_b / len(base) > var_c / len(other) else "cell"
    low, high = _welch_interval(base, other, confidence)
    verdict = _verdict(low, high, margin)
    seeds = None
    if verdict == "inconclusive":
        seeds = _seeds_to_decide(gap, var_b, var_c, max(len(base), len(other)), margin,
                                 confidence)
    return GapDecision(verdict, gap, low, high, limiting, seeds)


def closed_p_value(baseline: Sequence[float], cell: Sequence[float], *, margin: float) -> float:
    """One-sided Welch p-value of the "closed" test, H0: gap >= margin against H1: gap <
    margin (gap = mean(baseline) - mean(cell)); NaN with fewer than 2 finite values a side.
    Without spread on either side the gap is exact: 0 when gap <= margin, else 1 (matching
    `decide_gap`'s degenerate interval)."""
    margin = check_margin(margin)
    base, other = _finite(baseline), _finite(cell)
    if len(base) < 2 or len(other) < 2:
        return math.nan
    if np.ptp(base) == 0 and np.ptp(other) == 0:
        return 0.0 if float(base.mean() - other.mean()) <= margin else 1.0
    from scipy import stats

    with _quiet_precision():
        test = stats.ttest_ind(base - margin, other, equal_var=False, alternative="less")
    return float(test.pvalue)


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


def check_margin(margin: object) -> float:
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not (
        math.isfinite(margin) and margin >= 0
    ):
        raise ValueError(f"margin {margin!r} is not allowed: use a finite number of points >= 0")
    return float(margin)


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"),
                       dtype=float)
    return array[np.isfinite(array)]


def _verdict(low: float, high: float, margin: float) -> str:
    if high <= margin:
        return "closed"
    if low > margin:
        return "open"
    return "inconclusive"


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


def _seeds_to_decide(
    gap: float, var_b: float, var_c: float, n_now: int, margin: float, confidence: float
) -> int | None:
    """The smallest n in (n_now, MAX_SEEDS_TO_DECIDE] whose Welch interval with n seeds a
    side, these means and these sample variances, decides; None if none does."""
    if n_now >= MAX_SEEDS_TO_DECIDE or var_b + var_c == 0:
        return None
    from scipy import stats

    n = np.arange(n_now + 1, MAX_SEEDS_TO_DECIDE + 1, dtype=float)
    se2 = (var_b + var_c) / n
    # Welch–Satterthwaite with n seeds on both sides: (vb + vc)^2 (n - 1) / (vb^2 + vc^2).
    df = (var_b + var_c) ** 2 * (n - 1) / (var_b**2 + var_c**2)
    half = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(se2)
    decided = (gap + half <= margin) | (gap - half > margin)
    hits = np.flatnonzero(decided)
    return int(n[hits[0]]) if hits.size else None


# ------------------------------------------------------------------------ keys and order


