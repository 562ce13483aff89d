"""The gap map: each cell's test accuracy against the small-batch baseline, and the figures.

A *cell* is one setting of the knobs (batch_size, ghost_batch_size, lr_exponent,
regime_multiplier, and base_lr_override / epochs_override where a study sets them), over
its seeds. `cells, tolerance = compute_cells(trials_df)` turns the `trials` table (see
`tunegap.results`) into one row per cell:

- `gap` = baseline test accuracy - the cell's test accuracy, in points (positive = worse than
  the small batch), each a mean over seeds;
- `closed` when the gap is within the tolerance (see `compute_cells` for the rule);
- `status`: "closed", "open", "diverged" (no seed finished and at least one diverged) or
  "error" (every seed failed with an error).

Figures are built on `matplotlib.figure.Figure` objects without pyplot, so drawing them
needs no display, never changes the global backend and leaves no figure registered in
pyplot; `save_figures` writes them as PNGs.
"""

from __future__ import annotations

import math
import os
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "DEFAULT_TABLE_COLUMNS",
    "DEFAULT_TOLERANCE",
    "KNOBS",
    "OPTIONAL_KNOBS",
    "STATUSES",
    "baseline_summary",
    "cell_knobs",
    "compute_cells",
    "curves",
    "diffusion_plot",
    "error_vs_batch",
    "fit_diffusion",
    "gap_heatmap",
    "markdown_table",
    "save_figures",
]

KNOBS = ("batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier")
# Only knobs of a cell when a study sets them on some trial; otherwise always missing.
OPTIONAL_KNOBS = ("base_lr_override", "epochs_override")
DEFAULT_TOLERANCE = 0.5
STATUSES = ("closed", "open", "diverged", "error")

_SHORT = {
    "batch_size": "B",
    "ghost_batch_size": "ghost",
    "lr_exponent": "α",
    "regime_multiplier": "ρ",
    "base_lr_override": "lr0",
    "epochs_override": "epochs",
}
_AXIS_LABEL = {
    "batch_size": "batch size",
    "ghost_batch_size": "ghost batch size",
    "lr_exponent": "LR exponent α",
    "regime_multiplier": "regime multiplier ρ",
    "base_lr_override": "base lr",
    "epochs_override": "epochs",
}


# ------------------------------------------------------------------------------- cells


def cell_knobs(trials_df: pd.DataFrame) -> list[str]:
    """The columns that define a cell in this table: KNOBS plus the OPTIONAL_KNOBS that are
    set on at least one trial."""
    missing = [k for k in KNOBS if k not in trials_df.columns]
    if missing:
        raise ValueError(f"the trials table has no column(s) {', '.join(missing)}")
    return list(KNOBS) + [
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
    (mean over used seeds, else over all), closed, status, and the same on every row:
    tolerance, tolerance_rule, baseline_test_acc, baseline_test_acc_std, baseline_n_seeds.
    Rows are sorted baseline first, then by the knobs. The same baseline numbers are also in
    `cells.attrs`.

    Raises ValueError when there is no baseline trial, when no baseline seed completed with
    a finite accuracy, when the table mixes workloads, or for a negative tolerance.
    """
    knobs = cell_knobs(trials_df)
    # Positional and label lookups below must agree, whatever index a filtered table has.
    trials_df = trials_df.reset_index(drop=True)
    for col in ("is_baseline", "outcome", "test_acc"):
        if col not in trials_df.columns:
            raise ValueError(f"the trials table has no column {col!r}")
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
    for pos, key in enumerate(_keys(trials_df, knobs)):
        groups.setdefault(key, []).append(pos)

    rows = []
    for key, positions in groups.items():
        trials = trials_df.iloc[positions]
        acc = _usable_acc(trials)
        used = trials.loc[acc.index]
        n_error = int((trials["outcome"] == "error").sum())
        n_diverged = len(trials) - len(acc) - n_error
        if len(acc):
            mean = float(acc.mean())
            gap = base_mean - mean
            status = "closed" if gap <= tol else "open"
        else:
            mean = gap = math.nan
            status = "diverged" if n_diverged else "error"
        stats = _seed_statistics(acc, base_acc, tol)
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
                **stats,
                "status": status,
                "tolerance": tol,
                "tolerance_rule": rule,
                "baseline_test_acc": base_mean,
                "baseline_test_acc_std": base_std,
                "baseline_n_seeds": len(base_acc),
            }
        )
    cells = pd.DataFrame(rows)
    if "ghost_batch_size" in cells:
        cells["ghost_batch_size"] = cells["ghost_batch_size"].astype("Int64")
    if "epochs_override" in cells:
        cells["epochs_override"] = cells["epochs_override"].astype("Int64")
    cells = _sort_cells(cells, knobs)
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
    from scipy import stats

    nan = math.nan
    out: dict[str, Any] = dict.fromkeys(
        ("test_acc_ci95_low", "test_acc_ci95_high", "gap_ci95_low", "gap_ci95_high", "p_value"), nan
    )
    out["closed_confident"] = False
    n, m = len(acc), len(base_acc)
    if n >= 2:
        mean, sem = float(acc.mean()), float(acc.std(ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(0.975, n - 1)) * sem
        out["test_acc_ci95_low"], out["test_acc_ci95_high"] = mean - half, mean + half
    if n >= 2 and m >= 2:
        va, vb = float(acc.var(ddof=1)) / n, float(base_acc.var(ddof=1)) / m
        diff = float(base_acc.mean()) - float(acc.mean())
        se = math.sqrt(va + vb)
        if se > 0:
            df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (m - 1))
            half = float(stats.t.ppf(0.975, df)) * se
            out["gap_ci95_low"], out["gap_ci95_high"] = diff - half, diff + half
            out["p_value"] = float(2 * stats.t.sf(abs(diff) / se, df))
        else:
            out["gap_ci95_low"] = out["gap_ci95_high"] = diff
            out["p_value"] = 1.0 if diff == 0 else 0.0
        out["closed_confident"] = bool(out["gap_ci95_high"] <= tol)
    return out


def _usable_acc(trials: pd.DataFrame) -> pd.Series:
    acc = pd.to_numeric(trials["test_acc"], errors="coerce").astype(float)
    ok = (trials["outcome"] == "completed").to_numpy() & np.isfinite(acc.to_numpy())
    return acc[ok]


def _mean(trials: pd.DataFrame, col: str) -> float:
    if col not in trials or trials.empty:
        return math.nan
    values = pd.to_numeric(trials[col], errors="coerce").astype(float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _plain(value: Any) -> Any:
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


def _keys(df: pd.DataFrame, cols: Sequence[str]) -> list[tuple[Any, ...]]:
    # Plain tuples rather than groupby: missing ghost sizes (NA) are a real group, and
    # pandas versions disagree on how groupby treats NA keys.
    columns = [df[c].tolist() for c in cols]
    return [tuple(_plain(v) for v in values) for values in zip(*columns, strict=True)]


def _order(col: str, value: Any) -> tuple[int, float, str]:
    """Sort order of one knob value: numbers ascending, then words ("matched"), then missing
    (a ghost size of None, plain BatchNorm, is the largest ghost of all)."""
    value = _plain(value)
    if value is None:
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _sort_cells(cells: pd.DataFrame, knobs: Sequence[str]) -> pd.DataFrame:
    if cells.empty:
        return cells
    keys = [
        (not row["is_baseline"], *(_order(k, row[k]) for k in knobs)) for _, row in cells.iterrows()
    ]
    order = sorted(range(len(cells)), key=keys.__getitem__)
    return cells.iloc[order].reset_index(drop=True)


def baseline_summary(cells: pd.DataFrame) -> str:
    """One sentence on the baseline and the tolerance, for summaries under the table."""
    row = cells.iloc[0]
    std = row["baseline_test_acc_std"]
    spread = f" ± {std:.2f}" if math.isfinite(std) else ""
    return (
        f"Baseline test accuracy {row['baseline_test_acc']:.2f}{spread} % over "
        f"{row['baseline_n_seeds']} seed(s); a cell is closed when its gap is at most "
        f"{row['tolerance']:.2f} points ({row['tolerance_rule']})."
    )


# -------------------------------------------------------------------------- formatting


def _fmt(col: str, value: Any) -> str:
    value = _plain(value)
    if col == "ghost_batch_size" and value is None:
        return "BN"
    if value is None:
        return "—"
    if col == "regime_multiplier":
        try:
            return f"{float(value):g}"
        except ValueError:
            return str(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _describe(values: Mapping[str, Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{_SHORT.get(c, c)}={_fmt(c, values[c])}" for c in cols)


def _axis_label(cols: Sequence[str]) -> str:
    return ", ".join(_AXIS_LABEL.get(c, c) for c in cols)


def _as_cols(spec: str | Sequence[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


# ------------------------------------------------------------------------------ heatmap


def gap_heatmap(
    cells: pd.DataFrame,
    *,
    rows: str | Sequence[str] = "batch_size",
    cols: str | Sequence[str] = "ghost_batch_size",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The gap map: one square per cell, coloured and annotated with its gap in points.

    Closed cells carry a ✓ and a bold border; diverged cells are grey, hatched and read
    "diverged"; cells whose seeds all failed read "error"; the baseline cell also reads
    "baseline". A ghost size of None shows as "BN". Positions no trial covered stay blank.
    `rows` and `cols` may name several columns; the other knobs must be constant on each
    square, else ValueError says which knobs to add or filter on.
    """
    row_cols, col_cols = _as_cols(rows), _as_cols(cols)
    for c in row_cols + col_cols:
        if c not in cells.columns:
            raise ValueError(f"cells have no column {c!r} to lay out the heatmap by")
    if cells.empty:
        raise ValueError("no cells to draw")
    row_keys = _keys(cells, row_cols)
    col_keys = _keys(cells, col_cols)
    _check_unique_positions(cells, row_keys, col_keys, row_cols + col_cols)

    def ordered(keys: list[tuple[Any, ...]], names: list[str]) -> list[tuple[Any, ...]]:
        return sorted(
            set(keys), key=lambda k: [_order(n, v) for n, v in zip(names, k, strict=True)]
        )

    row_order, col_order = ordered(row_keys, row_cols), ordered(col_keys, col_cols)
    ri = {k: i for i, k in enumerate(row_order)}
    ci = {k: j for j, k in enumerate(col_order)}
    gaps = np.full((len(row_order), len(col_order)), np.nan)
    for pos in range(len(cells)):
        if cells["status"].iloc[pos] in ("closed", "open"):
            gaps[ri[row_keys[pos]], ci[col_keys[pos]]] = cells["gap"].iloc[pos]

    fig, ax = _new_axes(ax, (1.3 * len(col_order) + 2.5, 0.8 * len(row_order) + 1.8))
    tol = float(cells["tolerance"].iloc[0])
    finite = gaps[np.isfinite(gaps)]
    limit = max(float(np.abs(finite).max()) if finite.size else 0.0, 2 * tol, 1e-6)
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    norm = Normalize(vmin=-limit, vmax=limit)
    image = ax.imshow(np.ma.masked_invalid(gaps), cmap=cmap, norm=norm, aspect="auto")
    fig.colorbar(image, ax=ax, label="gap to baseline (points)")

    for pos in range(len(cells)):
        i, j = ri[row_keys[pos]], ci[col_keys[pos]]
        status = cells["status"].iloc[pos]
        baseline = "\nbaseline" if cells["is_baseline"].iloc[pos] else ""
        if status in ("diverged", "error"):
            face = "0.75" if status == "diverged" else "0.3"
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, edgecolor="0.2", hatch="///")
            )
            color = "black" if status == "diverged" else "white"
            ax.text(
                j,
                i,
                status + baseline,
                ha="center",
                va="center",
                color=color,
                fontsize=9,
                fontweight="bold",
                bbox={"facecolor": face, "edgecolor": "none", "pad": 1},
            )
            continue
        gap = gaps[i, j]
        closed = status == "closed"
        text = f"{gap:+.2f}" + (" ✓" if closed else "") + baseline
        extra = cells["n_diverged"].iloc[pos] + cells["n_error"].iloc[pos]
        if extra:
            text += f"\n({extra} failed)"
        rgba = cmap(norm(gap))
        luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=9,
            color="white" if luminance < 0.5 else "black",
            fontweight="bold" if closed else "normal",
        )
        if closed:
            ax.add_patch(
                Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="black", lw=2.5)
            )

    ax.set_xticks(range(len(col_order)))
    ax.set_xticklabels(
        [" / ".join(_fmt(c, v) for c, v in zip(col_cols, k, strict=True)) for k in col_order]
    )
    ax.set_yticks(range(len(row_order)))
    ax.set_yticklabels(
        [" / ".join(_fmt(c, v) for c, v in zip(row_cols, k, strict=True)) for k in row_order]
    )
    ax.set_xlabel(_axis_label(col_cols))
    ax.set_ylabel(_axis_label(row_cols))
    if title is None:
        title = (
            f"Gap to the small-batch baseline ({cells['baseline_test_acc'].iloc[0]:.2f}%); "
            f"✓ = closed (≤ {tol:.2f} pts)"
        )
    ax.set_title(title, fontsize=10)
    return fig


def _check_unique_positions(
    cells: pd.DataFrame,
    row_keys: list[tuple[Any, ...]],
    col_keys: list[tuple[Any, ...]],
    used: list[str],
) -> None:
    seen: dict[tuple[Any, ...], int] = {}
    for pos, key in enumerate(zip(row_keys, col_keys, strict=True)):
        if key in seen:
            others = [
                k
                for k in KNOBS + OPTIONAL_KNOBS
                if k in cells.columns
                and k not in used
                and _plain(cells[k].iloc[pos]) != _plain(cells[k].iloc[seen[key]])
            ]
            raise ValueError(
                f"several cells fall on one square of the {'/'.join(used)} map: they differ in "
                f"{', '.join(others) or 'nothing'}; filter the cells to one value of those, "
                "or add them to rows/cols"
            )
        seen[key] = pos


# ------------------------------------------------------------------------------- curves


def _joined(epochs_df: pd.DataFrame, trials_df: pd.DataFrame, need: Sequence[str]) -> pd.DataFrame:
    keep = [c for c in dict.fromkeys(["trial_id", *need]) if c in trials_df.columns]
    missing = [c for c in need if c not in trials_df.columns]
    if missing:
        raise ValueError(f"the trials table has no column(s) {', '.join(missing)}")
    epochs = epochs_df.drop(columns=[c for c in keep if c != "trial_id" and c in epochs_df])
    return epochs.merge(trials_df[keep], on="trial_id", how="inner")


def curves(
    epochs_df: pd.DataFrame,
    trials_df: pd.DataFrame,
    *,
    x: str = "updates",
    y: str = "test_acc",
    hue: str = "batch_size",
    logx: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Training curves: `y` against `x` (epochs-table columns), one line per cell.

    Each line is the mean over the cell's seeds at each epoch (NaN skipped); the seeds that
    completed when there are any, else all of them (a diverged cell is drawn up to where it
    diverged). Lines share a colour per value of `hue` (a trials-table column that is
    constant within a cell, such as a knob) and differ in line style within it.
    """
    for name in (x, y):
        if name not in epochs_df.columns:
            raise ValueError(f"the epochs table has no column {name!r}")
    knobs = cell_knobs(trials_df)
    extra = ["outcome"] if "outcome" in trials_df.columns else []
    data = _joined(epochs_df, trials_df, [*knobs, hue, *extra])
    fig, ax = _new_axes(ax, (7.5, 4.8))
    hue_values = sorted({_plain(v) for v in data[hue]}, key=lambda v: _order(hue, v))
    palette = _palette(len(hue_values))
    color_of = dict(zip(hue_values, palette, strict=True))
    styles = ["-", "--", ":", "-."]
    used_styles: dict[Any, int] = {}
    cell_keys = _keys(data, knobs)
    data = data.assign(_cell=cell_keys)
    for key in sorted(
        set(cell_keys), key=lambda k: [_order(n, v) for n, v in zip(knobs, k, strict=True)]
    ):
        part = data[data["_cell"] == key]
        if "outcome" in part and (part["outcome"] == "completed").any():
            # As in compute_cells: seeds that diverged would make the mean jump at the epoch
            # they stop, so a cell with finished seeds is drawn from those alone.
            part = part[part["outcome"] == "completed"]
        numeric = part[list(dict.fromkeys(["epoch", x, y]))].apply(pd.to_numeric, errors="coerce")
        mean = numeric.groupby(numeric["epoch"].to_numpy()).mean().sort_index()
        values = dict(zip(knobs, key, strict=True))
        hue_value = _plain(part[hue].iloc[0])
        n = used_styles.get(hue_value, 0)
        used_styles[hue_value] = n + 1
        ax.plot(
            mean[x],
            mean[y],
            color=color_of[hue_value],
            linestyle=styles[n % len(styles)],
            label=_describe(values, knobs),
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x + (" (log scale)" if logx else ""))
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{y} against {x}, colour by {hue}", fontsize=10)
    return fig


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


# ---------------------------------------------------------------------------- diffusion


def fit_diffusion(
    updates: Iterable[float] | np.ndarray, distance: Iterable[float] | np.ndarray
) -> tuple[float, float, float]:
    """Least-squares fit distance = slope * ln(updates) + intercept; returns (slope,
    intercept, r2).

    Points with updates <= 0 or a non-finite value are ignored. With fewer than two distinct
    update counts left the fit is undefined and all three are NaN; r2 is NaN when the
    distances are all equal.
    """
    t = np.asarray(list(updates) if not isinstance(updates, np.ndarray) else updates, float)
    d = np.asarray(list(distance) if not isinstance(distance, np.ndarray) else distance, float)
    if t.shape != d.shape:
        raise ValueError(f"updates and distance differ in length: {t.shape} vs {d.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(t) & np.isfinite(d) & (t > 0)
    t, d = t[ok], d[ok]
    if np.unique(t).size < 2:
        return math.nan, math.nan, math.nan
    x = np.log(t)
    slope, intercept = np.polyfit(x, d, 1)
    residual = d - (slope * x + intercept)
    total = float(((d - d.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    return float(slope), float(intercept), r2


def diffusion_plot(
    epochs_df: pd.DataFrame,
    trials_df: pd.DataFrame,
    *,
    by: Sequence[str] = ("batch_size", "lr_exponent"),
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The paper's Figure 2: weight distance ||w_t - w_0|| against updates on a log axis.

    One line per value of `by` (mean distance over the group's trials at each update count),
    with a dashed least-squares line whose slope against ln(updates) is in the legend. Where
    the epochs carry `lr`, the fit covers the high-learning-rate phase only (before the first
    decay, `tunegap.probes.fit_diffusion_phase`), where the paper's log t law holds, and the
    dashed line spans that phase; otherwise every finite point (`fit_diffusion`).
    """
    from tunegap.probes import fit_diffusion_phase

    by = list(by)
    data = _joined(epochs_df, trials_df, by)
    fig, ax = _new_axes(ax, (7.5, 4.8))
    keys = _keys(data, by)
    data = data.assign(_group=keys)
    ordered = sorted(set(keys), key=lambda k: [_order(n, v) for n, v in zip(by, k, strict=True)])
    palette = _palette(len(ordered))
    for color, key in zip(palette, ordered, strict=True):
        part = data[data["_group"] == key]
        t = pd.to_numeric(part["updates"], errors="coerce").astype(float).to_numpy()
        d = pd.to_numeric(part["weight_distance"], errors="coerce").astype(float).to_numpy()
        ok = np.isfinite(t) & np.isfinite(d) & (t > 0)
        if not ok.any():
            continue
        line = pd.Series(d[ok]).groupby(t[ok]).mean().sort_index()
        span = line.index
        if "lr" in part.columns:
            lr = pd.to_numeric(part["lr"], errors="coerce").astype(float).to_numpy()
            lr_line = pd.Series(lr[ok]).groupby(t[ok]).mean().sort_index()
            fit = fit_diffusion_phase(line.index.to_numpy(), line.to_numpy(), lr_line.to_numpy())
            slope, intercept, r2 = fit["slope"], fit["intercept"], fit["r2"]
            peak = lr_line.max()
            first_drop = lr_line.index[
                (lr_line < peak * (1 - 1e-6)) & (lr_line.index > lr_line.idxmax())
            ]
            span = line.index[line.index < first_drop.min()] if len(first_drop) else line.index
        else:
            slope, intercept, r2 = fit_diffusion(t, d)
        label = _describe(dict(zip(by, key, strict=True)), by)
        if math.isfinite(slope) and len(span):
            label += f": slope {slope:.3g} per ln(updates), R² {r2:.2f}"
            grid = np.geomspace(span.min(), span.max(), 50)
            ax.plot(grid, slope * np.log(grid) + intercept, color=color, ls="--", lw=1, alpha=0.7)
        ax.plot(line.index, line.to_numpy(), color=color, marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("updates (log scale)")
    ax.set_ylabel("||w_t - w_0||")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no finite weight distances", transform=ax.transAxes, ha="center")
    ax.set_title(title or "Weight distance from initialization (ultra-slow diffusion)", fontsize=10)
    return fig


# ------------------------------------------------------------------------ error vs batch


def error_vs_batch(
    cells: pd.DataFrame,
    *,
    hue: str | Sequence[str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The paper's Figure 1: test error (100 - test accuracy, mean ± std over seeds) against
    batch size on a log2 axis, one line per remedy combination.

    `hue`: the column(s) whose combination makes a line; by default every knob other than
    batch_size that takes more than one value. The baseline's error is a dashed line with
    the tolerance as a band; a diverged or failed cell is an × at the top of the axes.
    """
    if cells.empty:
        raise ValueError("no cells to draw")
    if hue is None:
        hue_cols = [
            k
            for k in KNOBS[1:] + OPTIONAL_KNOBS
            if k in cells.columns and len({_plain(v) for v in cells[k]}) > 1
        ]
    else:
        hue_cols = _as_cols(hue)
    for c in hue_cols:
        if c not in cells.columns:
            raise ValueError(f"cells have no column {c!r} to colour lines by")
    fig, ax = _new_axes(ax, (7, 4.5))
    keys = _keys(cells, hue_cols) if hue_cols else [()] * len(cells)
    ordered = sorted(
        set(keys), key=lambda k: [_order(n, v) for n, v in zip(hue_cols, k, strict=True)]
    )
    top = blended_transform_factory(ax.transData, ax.transAxes)
    marked = 0
    for color, key in zip(_palette(len(ordered)), ordered, strict=True):
        part = cells[[k == key for k in keys]].sort_values("batch_size")
        batch = part["batch_size"].astype(float).to_numpy()
        err = 100.0 - part["test_acc_mean"].astype(float).to_numpy()
        std = part["test_acc_std"].astype(float).fillna(0.0).to_numpy()
        if not hue_cols:
            label = "all"
        elif len(hue_cols) == 1 and hue_cols[0] not in _SHORT:
            # A column the caller made up (say "remedy") names its lines by value alone.
            label = str(key[0])
        else:
            label = _describe(dict(zip(hue_cols, key, strict=True)), hue_cols)
        ax.errorbar(batch, err, yerr=std, color=color, marker="o", ms=4, capsize=3, label=label)
        failed = ~np.isfinite(err)
        if failed.any():
            # Staggered, so lines that failed at the same batch size do not hide each other.
            ax.plot(
                batch[failed],
                np.full(failed.sum(), 0.97 - 0.04 * marked),
                "x",
                color=color,
                ms=8,
                mew=2,
                transform=top,
                clip_on=False,
            )
            marked += 1
    base = 100.0 - float(cells["baseline_test_acc"].iloc[0])
    tol = float(cells["tolerance"].iloc[0])
    ax.axhline(base, color="0.3", ls="--", lw=1, label="small-batch baseline")
    ax.axhspan(base - tol, base + tol, color="0.5", alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    sizes = sorted({int(b) for b in cells["batch_size"]})
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "Test error against batch size (× = diverged or failed)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------- table

DEFAULT_TABLE_COLUMNS = (
    "batch_size",
    "ghost_batch_size",
    "lr_exponent",
    "regime_multiplier",
    "seeds",
    "test_acc",
    "test_acc_ci95",
    "gap",
    "p_value",
    "status",
)

_HEADERS = {
    "batch_size": "batch",
    "ghost_batch_size": "ghost",
    "lr_exponent": "lr exponent",
    "regime_multiplier": "multiplier",
    "base_lr_override": "base lr",
    "epochs_override": "epochs",
    "multiplier": "resolved multiplier",
    "seeds": "seeds",
    "test_acc": "test acc (%)",
    "test_acc_ci95": "95% interval",
    "gap": "gap (pts)",
    "p_value": "Welch p",
    "train_test_gap": "train-test gap (pts)",
    "updates": "updates",
    "status": "status",
}


def markdown_table(cells: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A markdown table of the cells, baseline first, then by batch, ghost, exponent and
    multiplier.

    `columns` picks from: batch_size, ghost_batch_size, lr_exponent, regime_multiplier,
    base_lr_override, epochs_override, multiplier, seeds ("used/total" when some failed),
    test_acc (mean ± std), gap, train_test_gap, updates, status ("baseline" for the
    baseline cell). Default: DEFAULT_TABLE_COLUMNS plus the overrides the study set.
    """
    if columns is None:
        columns = list(DEFAULT_TABLE_COLUMNS)
        for k in OPTIONAL_KNOBS:
            if k in cells.columns and cells[k].notna().any():
                columns.insert(4, k)
    unknown = [c for c in columns if c not in _HEADERS]
    if unknown:
        raise ValueError(f"unknown table column(s) {', '.join(unknown)}: use {', '.join(_HEADERS)}")
    knobs = [k for k in KNOBS + OPTIONAL_KNOBS if k in cells.columns]
    ordered = _sort_cells(cells, knobs) if len(cells) else cells
    lines = [
        "| " + " | ".join(_HEADERS[c] for c in columns) + " |",
        "|" + "|".join("---:" if c not in ("status",) else "---" for c in columns) + "|",
    ]
    for _, row in ordered.iterrows():
        lines.append("| " + " | ".join(_cell_text(c, row) for c in columns) + " |")
    return "\n".join(lines)


def _cell_text(col: str, row: pd.Series) -> str:
    if col == "seeds":
        n, used = int(row["n_seeds"]), int(row["n_used"])
        return str(n) if used == n else f"{used}/{n}"
    if col == "test_acc":
        mean, std = row["test_acc_mean"], row["test_acc_std"]
        if not math.isfinite(mean):
            return "—"
        return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"
    if col == "test_acc_ci95":
        low, high = row.get("test_acc_ci95_low", math.nan), row.get("test_acc_ci95_high", math.nan)
        return f"[{low:.2f}, {high:.2f}]" if math.isfinite(low) else "—"
    if col == "p_value":
        value = row.get("p_value", math.nan)
        return f"{value:.3f}" if math.isfinite(value) and not row["is_baseline"] else "—"
    if col == "status":
        if row["is_baseline"]:
            return "baseline"
        confident = row.get("closed_confident", False)
        return (
            f"{row['status']} (95%)"
            if row["status"] == "closed" and confident
            else str(row["status"])
        )
    if col in ("gap", "train_test_gap"):
        value = row[col]
        return f"{value:+.2f}" if math.isfinite(value) else "—"
    if col == "updates":
        value = row[col]
        return f"{value:.0f}" if math.isfinite(value) else "—"
    if col == "multiplier":
        value = row[col]
        return f"{value:g}" if math.isfinite(value) else "—"
    return _fmt(col, row[col])


# ------------------------------------------------------------------------------- files

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def save_figures(
    figs: Mapping[str, Figure], out_dir: str | os.PathLike[str], *, dpi: int = 120
) -> list[Path]:
    """Write each figure as `<name>.png` under `out_dir` (created if needed) and close it.

    Each PNG is written to a temporary file and moved into place, so a reader never sees
    half an image. Names must be plain file stems (letters, digits, `_`, `.`, `-`). Every
    figure is closed even when one fails to save.
    """
    bad = [name for name in figs if not _NAME.match(name)]
    if bad:
        raise ValueError(
            f"figure name(s) {bad} are not plain file names: use letters, digits, _ . -"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for name, fig in figs.items():
            path = out / f"{name}.png"
            tmp = out / f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            paths.append(path)
    finally:
        _close(figs.values())
    return paths


def _close(figs: Iterable[Figure]) -> None:
    # Figures made here are not registered with pyplot; ones a caller made with pyplot are,
    # and only pyplot can release them. Import it only if the caller already did.
    pyplot = sys.modules.get("matplotlib.pyplot")
    for fig in figs:
        if pyplot is not None:
            pyplot.close(fig)
        fig.clear()
