"""The verdict on each cell of a map: its accuracy over seeds against the small-batch baseline.

A *cell* is one setting of the knobs (`tunegap.names.CELL_KNOBS`, plus `base_lr_override` /
`epochs_override` where a study sets them), over its seeds. `cells, tolerance =
compute_cells(trials_df)` turns the `trials` table (see `tunegap.analysis.schema`) into one
row per cell:

- `gap` = baseline test accuracy - the cell's test accuracy, in points (positive = worse than
  the small batch), each a mean over seeds;
- `closed` when the gap is within the tolerance (see `compute_cells` for the rule);
- `status`: "closed", "open", "diverged" (no seed finished and at least one diverged) or
  "error" (every seed failed with an error).

The key helpers (`plain_value`, `knob_keys`, `value_order`, `sorted_keys`, `sort_cells`) are
also how the tables and figures group and order cells, so every view lists them alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunegap.names import CELL_KNOBS, COMPLETED, ERROR

__all__ = [
    "DEFAULT_TOLERANCE",
    "OPTIONAL_KNOBS",
    "STATUSES",
    "cell_knobs",
    "compute_cells",
    "knob_keys",
    "plain_value",
    "sort_cells",
    "sorted_keys",
    "value_order",
]

# Only knobs of a cell when a study sets them on some trial; otherwise always missing.
OPTIONAL_KNOBS: tuple[str, ...] = ("base_lr_override", "epochs_override")
DEFAULT_TOLERANCE = 0.5
STATUSES: tuple[str, ...] = ("closed", "open", "diverged", "error")

_INTERVAL_COLUMNS = (
    "test_acc_ci95_low",
    "test_acc_ci95_high",
    "gap_ci95_low",
    "gap_ci95_high",
    "p_value",
)


def cell_knobs(trials_df: pd.DataFrame) -> list[str]:
    """The columns that define a cell in this table: CELL_KNOBS plus the OPTIONAL_KNOBS that
    are set on at least one trial."""
    missing = [k for k in CELL_KNOBS if k not in trials_df.columns]
    if missing:
        raise ValueError(f"the trials table has no column(s) {', '.join(missing)}")
    return list(CELL_KNOBS) + [
        k for k in OPTIONAL_KNOBS if k in trials_df.columns and trials_df[k].notna().any()
    ]


def compute_cells(
    trials_df: pd.DataFrame, *, tolerance: float | None = None
) -> tuple[pd.DataFrame, float]:
    """`(cells, tolerance)`: one row per cell (knob setting) of `trials_df` with its gap to
    the baseline, and the tolerance in points that decided `closed`.

    Baseline: the trials with `is_baseline` True, whatever their knobs; its accuracy is the
    mean test accuracy over its completed seeds.

    A seed counts towards a cell's accuracy when its outcome is "completed" and its final
    test accuracy is finite (`n_used`). Outcome "diverged", or a completed trial with a
    non-finite accuracy, counts in `n_diverged`; "error" in `n_error`. A cell with some
    usable seeds is judged on those alone and still reports its `n_diverged` and `n_error`.

    Tolerance rule (points): `closed` = `gap <= tolerance`, where tolerance is
    - `tolerance` when given;
    - else the sample standard deviation (ddof=1) of the baseline's test accuracy over its
      seeds when it has at least 2 usable seeds ("inside the baseline's seed spread");
    - else 0.5 points (DEFAULT_TOLERANCE).
    A cell better than the baseline (negative gap) is closed. With 2+ seeds on both sides
    the cell also gets Welch's test against the baseline (`p_value`, `gap_ci95_low/high`)
    and `closed_confident` = the upper end of the gap's 95% Welch interval is within the
    tolerance (see `_seed_statistics`); `test_acc_ci95_low/high` is the cell's own 95%
    interval over seeds.

    Columns: workload, the knobs (`cell_knobs`), multiplier (resolved), is_baseline
    (any seed of the cell is a baseline trial), n_seeds, n_used, n_diverged, n_error,
    test_acc_mean, test_acc_std (NaN for one seed), gap, train_test_gap (mean), updates
    (mean over used seeds, else over all), closed, the interval columns, closed_confident,
    status, and the same on every row: tolerance, tolerance_rule, baseline_test_acc,
    baseline_test_acc_std, baseline_n_seeds. Rows are sorted baseline first, then by the
    knobs. The same baseline numbers are also in `cells.attrs`.

    Raises ValueError when there is no baseline trial, when no baseline seed completed with
    a finite accuracy, when the table mixes workloads, or for a negative tolerance.
    """
    knobs = cell_knobs(trials_df)
    for col in ("is_baseline", "outcome", "test_acc"):
        if col not in trials_df.columns:
            raise ValueError(f"the trials table has no column {col!r}")
    # Tune lists trials in the order they happened to start, which varies from run to run;
    # seeds in seed order make every mean and interval the same, to the last bit, each time.
    if "seed" in trials_df.columns:
        trials_df = trials_df.sort_values("seed", kind="stable")
    # Positional and label lookups below must agree, whatever index a filtered table has.
    trials_df = trials_df.reset_index(drop=True)
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance {tolerance!r} is not allowed: use a finite number >= 0")
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
    base_acc = _usable_acc(trials_df[is_base])
    if base_acc.empty:
        raise ValueError(
            f"the baseline has {int(is_base.sum())} trial(s) but none completed with a finite "
            "test accuracy, so the gap cannot be measured"
        )
    base_mean = float(base_acc.mean())
    base_std = float(base_acc.std(ddof=1)) if len(base_acc) >= 2 else math.nan
    if tolerance is not None:
        tol, rule = float(tolerance), "given"
    elif len(base_acc) >= 2:
        tol, rule = base_std, f"baseline seed std over {len(base_acc)} seeds"
    else:
        tol, rule = DEFAULT_TOLERANCE, "default (baseline has fewer than 2 seeds)"

    groups: dict[tuple[Any, ...], list[int]] = {}
    for pos, key in enumerate(knob_keys(trials_df, knobs)):
        groups.setdefault(key, []).append(pos)

    rows = []
    for key, positions in groups.items():
        trials = trials_df.iloc[positions]
        acc = _usable_acc(trials)
        used = trials.loc[acc.index]
        n_error = int((trials["outcome"] == ERROR).sum())
        n_diverged = len(trials) - len(acc) - n_error
        if len(acc):
            mean = float(acc.mean())
            gap = base_mean - mean
            status = "closed" if gap <= tol else "open"
        else:
            mean = gap = math.nan
            status = "diverged" if n_diverged else "error"
        updates_from = used if len(used) else trials
        rows.append(
            {
                "workload": trials["workload"].iloc[0] if "workload" in trials else None,
                **dict(zip(knobs, key, strict=True)),
                "multiplier": _mean(trials, "multiplier"),
                "is_baseline": bool(is_base.iloc[positions].any()),
                "n_seeds": len(trials),
                "n_used": len(acc),
                "n_diverged": n_diverged,
                "n_error": n_error,
                "test_acc_mean": mean,
                "test_acc_std": float(acc.std(ddof=1)) if len(acc) >= 2 else math.nan,
                "gap": gap,
                "train_test_gap": _mean(used, "train_test_gap"),
                "updates": _mean(updates_from, "updates"),
                "closed": status == "closed",
                **_seed_statistics(acc, base_acc, tol),
                "status": status,
                "tolerance": tol,
                "tolerance_rule": rule,
                "baseline_test_acc": base_mean,
                "baseline_test_acc_std": base_std,
                "baseline_n_seeds": len(base_acc),
            }
        )
    cells = pd.DataFrame(rows)
    # Nullable integers, as in the trials table, so a missing ghost size ("BN") stays <NA>.
    for col in ("ghost_batch_size", "epochs_override"):
        if col in cells:
            cells[col] = cells[col].astype("Int64")
    cells = sort_cells(cells, knobs)
    cells.attrs.update(
        tolerance=tol,
        tolerance_rule=rule,
        baseline_test_acc=base_mean,
        baseline_test_acc_std=base_std,
        baseline_n_seeds=len(base_acc),
    )
    return cells, tol


def _seed_statistics(acc: pd.Series, base_acc: pd.Series, tol: float) -> dict[str, Any]:
    """95% intervals over seeds and Welch's test of the cell against the baseline.

    `test_acc_ci95_*`: Student-t interval of the cell's mean accuracy (2+ seeds).
    `gap_ci95_*`: Welch interval of baseline mean - cell mean (2+ seeds on both sides),
    `p_value`: Welch's two-sided test of equal means. `closed_confident`: the whole gap
    interval lies at or below the tolerance, i.e. the gap is closed at 95% confidence.
    """
    # Imported here: scipy.stats takes most of a second to import, and every study CLI
    # imports this module at start-up while only the end of a study runs the test.
    from scipy import stats

    out: dict[str, Any] = dict.fromkeys(_INTERVAL_COLUMNS, math.nan)
    out["closed_confident"] = False
    n, m = len(acc), len(base_acc)
    if n >= 2:
        mean = float(acc.mean())
        half = float(stats.t.ppf(0.975, n - 1)) * float(stats.sem(acc.to_numpy()))
        out["test_acc_ci95_low"], out["test_acc_ci95_high"] = mean - half, mean + half
    if n >= 2 and m >= 2:
        diff = float(base_acc.mean()) - float(acc.mean())
        if acc.nunique() == 1 and base_acc.nunique() == 1:
            # No spread on either side: Welch's t is undefined (scipy gives inf or NaN),
            # but the gap is then known exactly.
            out["gap_ci95_low"] = out["gap_ci95_high"] = diff
            out["p_value"] = 1.0 if diff == 0 else 0.0
        else:
            with warnings.catch_warnings():
                # Seeds that agree exactly on one side (accuracies are multiples of
                # 100 / test-set size) make scipy warn of precision loss; that variance is
                # 0 up to rounding and the test stays sound, so the warning would only alarm.
                warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
                welch = stats.ttest_ind(base_acc.to_numpy(), acc.to_numpy(), equal_var=False)
                interval = welch.confidence_interval(0.95)
            out["gap_ci95_low"], out["gap_ci95_high"] = float(interval.low), float(interval.high)
            out["p_value"] = float(welch.pvalue)
        out["closed_confident"] = bool(out["gap_ci95_high"] <= tol)
    return out


def _usable_acc(trials: pd.DataFrame) -> pd.Series:
    acc = pd.to_numeric(trials["test_acc"], errors="coerce").astype(float)
    ok = (trials["outcome"] == COMPLETED).to_numpy() & np.isfinite(acc.to_numpy())
    return acc[ok]


def _mean(trials: pd.DataFrame, col: str) -> float:
    if col not in trials or trials.empty:
        return math.nan
    values = pd.to_numeric(trials[col], errors="coerce").astype(float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


# ------------------------------------------------------------------------ keys and order


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
