"""The cells of a map: a trials table grouped by knobs, each with its verdict.

`cells = compute_cells(trials_df, margin=M, accuracy="final")` turns the `trials` table (see
`tunegap.analysis.schema`) into one row per cell. Its `verdict` is "baseline" on the
baseline's row, "diverged" (no usable seed, at least one diverged) or "error" (every seed
failed with an error) where no seed is usable, and `decide_gap`'s verdict elsewhere.
`accuracy="best"` judges each trial by its best-epoch test accuracy (`best_test_acc`, as
the paper's authors report) instead of its final one.

The rule, its words and its error control live in `tunegap.analysis.decide`; a study's
`SeedDesign` (its planned looks) sets the interval's confidence, 90% for one look.

Multiplicity: the headline `verdict` is a per-cell decision: each cell that reads "closed"
(or "open") is, on its own, wrong at most 5% of the time. Over a map of many cells some
will read so by chance. `p_value` is each cell's one-sided Welch p-value of the "closed"
test (H0: gap >= M) and `p_value_open` of the "open" test (H0: gap <= M); `p_value_holm` and
`p_value_open_holm` are their Holm adjustments (after Bonferroni over the design's looks)
over every decidable non-baseline cell of the map, and `verdict_holm` keeps "closed" or
"open" only where its adjusted p-value is < 0.05 (`decide.map_verdicts`): the chance that
*any* "closed" of the map is wrong is at most 5%, and the same for *any* "open".

The key helpers (`plain_value`, `knob_keys`, `value_order`, `sorted_keys`, `sort_cells`) are
also how the tables and figures group and order cells, so every view lists them alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunegap.analysis.decide import (
    ACCURACIES,
    BASELINE,
    CELL_KNOBS,
    DEFAULT_MARGIN,
    DIVERGED_CELL,
    ERROR_CELL,
    INCONCLUSIVE,
    OPTIONAL_KNOBS,
    VERDICTS,
    GapDecision,
    SeedDesign,
    check_margin,
    counted_seeds,
    decide_gap,
    gap_p_values,
    map_verdicts,
)
from tunegap.names import ERROR, STOPPED, TRAINING_KNOBS


class UnmeasurableBaseline(ValueError):
    """Every baseline trial errored or diverged: no gap can be measured against it."""


def cell_knobs(trials_df: pd.DataFrame) -> list[str]:
    """The columns that define a cell in this table: CELL_KNOBS plus the OPTIONAL_KNOBS that
    are set on at least one trial; a training knob (optimizer, schedule, ...) always has a
    value, so it counts only where the table holds more than one."""
    missing = [k for k in CELL_KNOBS if k not in trials_df.columns]
    if missing:
        raise ValueError(f"the trials table has no column(s) {', '.join(missing)}")
    return list(CELL_KNOBS) + [k for k in OPTIONAL_KNOBS if _tells_cells_apart(trials_df, k)]


def _tells_cells_apart(trials_df: pd.DataFrame, knob: str) -> bool:
    if knob not in trials_df.columns:
        return False
    if knob in TRAINING_KNOBS:
        return len({plain_value(v) for v in trials_df[knob]}) > 1
    return bool(trials_df[knob].notna().any())


def compute_cells(
    trials_df: pd.DataFrame, *, margin: float = DEFAULT_MARGIN, accuracy: str = "final",
    design: SeedDesign | None = None,
) -> pd.DataFrame:
    """One row per cell (knob setting) of `trials_df`: its gap to the baseline and the
    verdict at `margin` points (see the module docstring and `decide_gap`).

    Baseline: the trials with `is_baseline` True, whatever their knobs. `accuracy` picks the
    accuracy each trial is judged by: "final" (`test_acc`, the last epoch's) or "best"
    (`best_test_acc`, the best epoch's). A seed is usable when its outcome is "completed"
    and that accuracy is finite (`n_used`). Outcome "diverged", or a completed trial with a
    non-finite accuracy, counts in `n_diverged`; "error" in `n_error`. A cell with some
    usable seeds is judged on those alone and still reports its `n_diverged` and `n_error`.
    A trial a scheduler ended early (outcome "stopped") is no seed at all: it counts only in
    `n_stopped`, never in `n_seeds`; a cell whose trials were all stopped is inconclusive.
    `design` is the study's `SeedDesign` (default: one look at the seeds there are); its
    confidence is the gap interval's.

    Columns, in order: workload, the knobs (`cell_knobs`), multiplier (resolved),
    is_baseline (any seed of the cell is a baseline trial), n_seeds, n_used, n_diverged,
    n_error, n_stopped, test_acc_mean,
    test_acc_std (NaN for one seed), test_acc_ci95_low/high (the cell's Student-t 95%
    interval over seeds, clipped to [0, 100]; NaN for one seed), gap,
    gap_ci_low/high (Welch's 90% interval of the gap; NaN on the baseline row and with
    fewer than 2 usable seeds a side), margin, verdict, limiting_side, seeds_to_decide
    (nullable integer), p_value (one-sided Welch p of H0: gap >= margin), p_value_holm,
    verdict_holm, train_test_gap (mean), updates (mean over used seeds, else over all),
    accuracy ("final" or "best"), baseline_test_acc, baseline_test_acc_std,
    baseline_n_seeds, looks (the design's planned seed counts, e.g. "3,6,12"), confidence.
    "test_acc_*" are of the accuracy chosen. Rows are sorted baseline first, then by the
    knobs. `cells.attrs` holds margin, accuracy, confidence, looks, holm_cells (the size of
    each Holm family) and the baseline's numbers.

    Raises ValueError when there is no baseline trial, when no baseline seed completed with
    a finite accuracy, when the table mixes workloads, for a margin that is not a finite
    number >= 0, or for an unknown accuracy.
    """
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy {accuracy!r} is not allowed: use {' or '.join(ACCURACIES)}")
    margin = check_margin(margin)
    acc_col = ACCURACIES[accuracy]
    if design is None:
        design = SeedDesign.fixed(2)
    knobs = cell_knobs(trials_df)
    for col in ("is_baseline", "outcome", acc_col):
        if col not in trials_df.columns:
            raise ValueError(f"the trials table has no column {col!r}")
    # Tune lists trials in the order they happened to start, which varies from run to run;
    # seeds in seed order make every mean and interval the same, to the last bit, each time.
    if "seed" in trials_df.columns:
        trials_df = trials_df.sort_values("seed", kind="stable")
    # Positional and label lookups below must agree, whatever index a filtered table has.
    trials_df = trials_df.reset_index(drop=True)
    if "workload" in trials_df.columns and trials_df["workload"].nunique() > 1:
        names = ", ".join(sorted(map(str, trials_df["workload"].unique())))
        raise ValueError(
            f"the trials table mixes workloads ({names}): a gap is measured against one "
            "workload's baseline, so compute cells per workload"
        )

    is_base = trials_df["is_baseline"].fillna(False).astype(bool)
    if not is_base.any():
        raise ValueError(
            "no baseline: no trial has is_baseline=True, so there is nothing to measure the "
            "gap against; mark the small-batch trials of the study as the baseline"
        )
    base_acc = _usable_acc(trials_df[is_base], acc_col)
    if base_acc.empty:
        raise UnmeasurableBaseline(
            f"the baseline has {int(is_base.sum())} trial(s) but none completed with a finite "
            f"{acc_col}, so the gap cannot be measured"
        )
    base_mean = float(base_acc.mean())
    base_std = float(base_acc.std(ddof=1)) if len(base_acc) >= 2 else math.nan

    groups: dict[tuple[Any, ...], list[int]] = {}
    for pos, key in enumerate(knob_keys(trials_df, knobs)):
        groups.setdefault(key, []).append(pos)

    rows = []
    for key, positions in groups.items():
        everything = trials_df.iloc[positions]
        # A trial a scheduler stopped early is no seed of its cell: it never finished.
        stopped = everything["outcome"] == STOPPED
        trials = everything[~stopped] if len(everything) > int(stopped.sum()) else everything
        acc = _usable_acc(trials, acc_col)
        used = trials.loc[acc.index]
        n_error = int((trials["outcome"] == ERROR).sum())
        n_stopped = int(stopped.sum())
        n_seeds = len(everything) - n_stopped
        n_diverged = n_seeds - len(acc) - n_error
        baseline_row = bool(is_base.iloc[positions].any())
        decision = GapDecision(INCONCLUSIVE, math.nan, math.nan, math.nan, None, None)
        p_value = p_open = math.nan
        if baseline_row:
            verdict = BASELINE
            gap = base_mean - float(acc.mean()) if len(acc) else math.nan
        elif len(acc):
            decision = decide_gap(base_acc.to_numpy(), acc.to_numpy(), margin=margin,
                                  confidence=design.confidence)
            verdict, gap = decision.verdict, decision.gap
            p_value, p_open = gap_p_values(base_acc.to_numpy(), acc.to_numpy(), margin=margin)
        elif n_diverged or n_error:
            verdict, gap = (DIVERGED_CELL if n_diverged else ERROR_CELL), math.nan
        else:
            verdict, gap = INCONCLUSIVE, math.nan  # every trial of the cell was stopped
        updates_from = used if len(used) else trials
        rows.append(
            {
                "workload": trials["workload"].iloc[0] if "workload" in trials else None,
                **dict(zip(knobs, key, strict=True)),
                "multiplier": _mean(trials, "multiplier"),
                "is_baseline": baseline_row,
                "n_seeds": n_seeds,
                "n_used": len(acc),
                "n_diverged": n_diverged,
                "n_error": n_error,
                "n_stopped": n_stopped,
                "test_acc_mean": float(acc.mean()) if len(acc) else math.nan,
                "test_acc_std": float(acc.std(ddof=1)) if len(acc) >= 2 else math.nan,
                **_accuracy_interval(acc),
                "gap": gap,
                "gap_ci_low": decision.low,
                "gap_ci_high": decision.high,
                "margin": margin,
                "verdict": verdict,
                "limiting_side": decision.limiting_side,
                "seeds_to_decide": decision.seeds_to_decide,
                "p_value": p_value,
                "p_value_open": p_open,
                "train_test_gap": _mean(used, "train_test_gap"),
                "updates": _mean(updates_from, "updates"),
                "accuracy": accuracy,
                "baseline_test_acc": base_mean,
                "baseline_test_acc_std": base_std,
                "baseline_n_seeds": len(base_acc),
                "looks": ",".join(map(str, design.looks)),
                "confidence": design.confidence,
            }
        )
    cells = pd.DataFrame(rows)
    adj_closed, adj_open, holm_verdicts = map_verdicts(
        cells["verdict"].tolist(), cells["p_value"], cells["p_value_open"], design=design)
    at = cells.columns.get_loc("p_value_open") + 1
    cells.insert(at, "p_value_holm", adj_closed)
    cells.insert(at + 1, "p_value_open_holm", adj_open)
    cells.insert(at + 2, "verdict_holm", holm_verdicts)
    # Nullable integers, as in the trials table, so a missing ghost size ("BN") stays <NA>.
    for col in ("ghost_batch_size", "epochs_override", "seeds_to_decide"):
        if col in cells:
            cells[col] = cells[col].astype("Int64")
    cells = sort_cells(cells, knobs)
    cells.attrs.update(
        margin=margin,
        accuracy=accuracy,
        confidence=design.confidence,
        looks=design.looks,
        holm_cells=int(cells["p_value"].notna().sum()),
        baseline_test_acc=base_mean,
        baseline_test_acc_std=base_std,
        baseline_n_seeds=len(base_acc),
    )
    return cells


def verdict_counts(cells: pd.DataFrame, column: str = "verdict") -> dict[str, int]:
    """How many non-baseline cells of `cells` have each verdict in `column` ("verdict" or
    "verdict_holm"): {"closed": n, "open": n, "at the margin": n, "inconclusive": n,
    "diverged": n, "error": n}, zeros included."""
    values = cells.loc[~cells["is_baseline"].astype(bool), column].tolist()
    return {v: values.count(v) for v in VERDICTS if v != BASELINE}


def _accuracy_interval(acc: pd.Series) -> dict[str, float]:
    """Student-t 95% interval of the cell's mean accuracy over its seeds (2+), clipped to
    [0, 100]: an accuracy cannot leave that range, whatever a t interval says."""
    out = {"test_acc_ci95_low": math.nan, "test_acc_ci95_high": math.nan}
    n = len(acc)
    if n >= 2:
        from scipy import stats

        mean = float(acc.mean())
        half = float(stats.t.ppf(0.975, n - 1)) * float(acc.std(ddof=1)) / math.sqrt(n)
        out["test_acc_ci95_low"] = min(max(mean - half, 0.0), 100.0)
        out["test_acc_ci95_high"] = min(max(mean + half, 0.0), 100.0)
    return out


def _usable_acc(trials: pd.DataFrame, col: str) -> pd.Series:
    acc = pd.to_numeric(trials[col], errors="coerce").astype(float)
    return acc[counted_seeds(trials["outcome"].tolist(), acc.tolist())]


def _mean(trials: pd.DataFrame, col: str) -> float:
    if col not in trials or trials.empty:
        return math.nan
    values = pd.to_numeric(trials[col], errors="coerce").astype(float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def plain_value(value: Any) -> Any:
    """A hashable plain-Python knob value; every kind of missing becomes None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def knob_keys(df: pd.DataFrame, cols: Sequence[str]) -> list[tuple[Any, ...]]:
    """Each row's values of `cols` as a tuple of `plain_value`s, in row order."""
    # Plain tuples rather than groupby: missing ghost sizes (NA) are a real group, and
    # pandas versions disagree on how groupby treats NA keys.
    columns = [df[c].tolist() for c in cols]
    return [tuple(plain_value(v) for v in values) for values in zip(*columns, strict=True)]


def value_order(value: Any) -> tuple[int, float, str]:
    """Sort key of one knob value: numbers ascending, then words ("matched"), then missing
    (a ghost size of None, plain BatchNorm, is the largest ghost of all)."""
    value = plain_value(value)
    if value is None:
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def sorted_keys(keys: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The distinct `knob_keys` tuples, ordered value by value with `value_order`."""
    return sorted(set(keys), key=lambda key: [value_order(v) for v in key])


def sort_cells(cells: pd.DataFrame, knobs: Sequence[str]) -> pd.DataFrame:
    """`cells` baseline first, then ordered by `knobs` (`value_order`), with a fresh index."""
    if cells.empty:
        return cells
    keys = [
        (not row["is_baseline"], *(value_order(row[k]) for k in knobs))
        for _, row in cells.iterrows()
    ]
    order = sorted(range(len(cells)), key=keys.__getitem__)
    return cells.iloc[order].reset_index(drop=True)
