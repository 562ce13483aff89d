"""Figures of a map: the gap heatmap, training curves, weight diffusion, error against batch.

Figures are built on `matplotlib.figure.Figure` objects without pyplot, so drawing them
needs no display, never changes the global backend and leaves no figure registered in
pyplot; `tunegap.analysis.figure_files.save_figures` writes them as PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from tunegap.analysis.cells import cell_knobs, knob_keys, plain_value, sorted_keys, value_order
from tunegap.analysis.decide import (
    AT_MARGIN,
    BASELINE,
    CELL_KNOBS,
    CLOSED,
    CONFIDENCE,
    INCONCLUSIVE,
    OPEN,
    OPTIONAL_KNOBS,
)
from tunegap.analysis.fits import fit_diffusion, fit_diffusion_phase
from tunegap.analysis.formatting import describe, format_value
from tunegap.names import COMPLETED

__all__ = ["curves", "diffusion_plot", "error_vs_batch", "gap_heatmap"]

_AXIS_LABEL = {
    "batch_size": "batch size",
    "ghost_batch_size": "ghost batch size",
    "lr_exponent": "LR exponent α",
    "regime_multiplier": "regime multiplier ρ",
    "base_lr_override": "base lr",
    "epochs_override": "epochs",
}


def _axis_label(cols: Sequence[str]) -> str:
    return ", ".join(_AXIS_LABEL.get(c, c) for c in cols)


def _tick_label(cols: Sequence[str], key: tuple[Any, ...]) -> str:
    return " / ".join(format_value(c, v) for c, v in zip(cols, key, strict=True))


def _as_cols(spec: str | Sequence[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


# ------------------------------------------------------------------------------ heatmap


# What a square of the heatmap reads under its gap, per verdict.
_VERDICT_MARK = {CLOSED: CLOSED, OPEN: OPEN, AT_MARGIN: "≈ margin", INCONCLUSIVE: "?",
                 BASELINE: BASELINE}


def gap_heatmap(
    cells: pd.DataFrame,
    *,
    rows: str | Sequence[str] = "batch_size",
    cols: str | Sequence[str] = "ghost_batch_size",
    verdict: str = "verdict",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The gap map: one square per cell, coloured by its gap in points and labelled with the
    gap and the verdict (`compute_cells`).

    Each square reads its gap and a word: "closed" (also a bold border), "open", "≈ margin"
    for at the margin, "?" for inconclusive, "baseline"; diverged cells are grey, hatched and read "diverged"; cells
    whose seeds all failed read "error". `verdict` names the column to show: "verdict" (per
    cell) or "verdict_holm" (Holm over the map). A ghost size of None shows as "BN".
    Positions no trial covered stay blank. `title` is the title's first line; the second
    always says how the verdicts were read. `rows` and `cols` may name several columns; the
    other knobs must be constant on each square, else ValueError says which knobs to add or
    filter on.
    """
    row_cols, col_cols = _as_cols(rows), _as_cols(cols)
    for c in row_cols + col_cols:
        if c not in cells.columns:
            raise ValueError(f"cells have no column {c!r} to lay out the heatmap by")
    if verdict not in cells.columns:
        raise ValueError(f"cells have no column {verdict!r}: use verdict or verdict_holm")
    if cells.empty:
        raise ValueError("no cells to draw")
    row_keys = knob_keys(cells, row_cols)
    col_keys = knob_keys(cells, col_cols)
    _check_unique_positions(cells, row_keys, col_keys, row_cols + col_cols)
    row_order, col_order = sorted_keys(row_keys), sorted_keys(col_keys)
    ri = {k: i for i, k in enumerate(row_order)}
    ci = {k: j for j, k in enumerate(col_order)}
    gaps = np.full((len(row_order), len(col_order)), np.nan)
    for pos in range(len(cells)):
        if cells[verdict].iloc[pos] in _VERDICT_MARK:
            gaps[ri[row_keys[pos]], ci[col_keys[pos]]] = cells["gap"].iloc[pos]

    fig, ax = _new_axes(ax, (1.3 * len(col_order) + 2.5, 0.8 * len(row_order) + 1.8))
    margin = float(cells["margin"].iloc[0])
    finite = gaps[np.isfinite(gaps)]
    limit = max(float(np.abs(finite).max()) if finite.size else 0.0, 2 * margin, 1e-6)
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    norm = Normalize(vmin=-limit, vmax=limit)
    image = ax.imshow(np.ma.masked_invalid(gaps), cmap=cmap, norm=norm, aspect="auto")
    fig.colorbar(image, ax=ax, label="gap to baseline (points)")

    for pos in range(len(cells)):
        i, j = ri[row_keys[pos]], ci[col_keys[pos]]
        word = str(cells[verdict].iloc[pos])
        if word not in _VERDICT_MARK:  # diverged or error: no usable seed
            face = "0.75" if word == "diverged" else "0.3"
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, edgecolor="0.2", hatch="///")
            )
            ax.text(
                j,
                i,
                word,
                ha="center",
                va="center",
                color="black" if word == "diverged" else "white",
                fontsize=9,
                fontweight="bold",
                bbox={"facecolor": face, "edgecolor": "none", "pad": 1},
            )
            continue
        gap = gaps[i, j]
        closed = word == CLOSED
        text = f"{gap:+.2f}\n{_VERDICT_MARK[word]}"
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

    ax.set_xticks(range(len(col_order)), [_tick_label(col_cols, k) for k in col_order])
    ax.set_yticks(range(len(row_order)), [_tick_label(row_cols, k) for k in row_order])
    ax.set_xlabel(_axis_label(col_cols))
    ax.set_ylabel(_axis_label(row_cols))
    best = "accuracy" in cells.columns and cells["accuracy"].iloc[0] == "best"
    if title is None:
        title = (
            f"Gap to the small-batch baseline ({cells['baseline_test_acc'].iloc[0]:.2f}%, "
            f"{'best-epoch' if best else 'final-epoch'} test accuracy)"
        )
    holm = ", Holm over the map" if verdict == "verdict_holm" else ""
    confidence = (float(cells["confidence"].iloc[0]) if "confidence" in cells.columns
                  and pd.notna(cells["confidence"].iloc[0]) else CONFIDENCE)
    ax.set_title(
        f"{title}\nWelch {100 * confidence:.3g}% interval of the gap vs margin {margin:.2f} "
        f"pts{holm}: closed ≤ margin, open > margin, ≈ narrow across it, ? inconclusive",
        fontsize=10,
    )
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
                for k in CELL_KNOBS + OPTIONAL_KNOBS
                if k in cells.columns
                and k not in used
                and plain_value(cells[k].iloc[pos]) != plain_value(cells[k].iloc[seen[key]])
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
    hue_values = sorted({plain_value(v) for v in data[hue]}, key=value_order)
    palette = _palette(len(hue_values))
    color_of = dict(zip(hue_values, palette, strict=True))
    styles = ["-", "--", ":", "-."]
    used_styles: dict[Any, int] = {}
    keys = knob_keys(data, knobs)
    data = data.assign(_cell=keys)
    for key in sorted_keys(keys):
        part = data[data["_cell"] == key]
        if "outcome" in part and (part["outcome"] == COMPLETED).any():
            # As in compute_cells: seeds that diverged would make the mean jump at the epoch
            # they stop, so a cell with finished seeds is drawn from those alone.
            part = part[part["outcome"] == COMPLETED]
        numeric = part[list(dict.fromkeys(["epoch", x, y]))].apply(pd.to_numeric, errors="coerce")
        mean = numeric.groupby(numeric["epoch"].to_numpy()).mean().sort_index()
        values = dict(zip(knobs, key, strict=True))
        hue_value = plain_value(part[hue].iloc[0])
        n = used_styles.get(hue_value, 0)
        used_styles[hue_value] = n + 1
        ax.plot(
            mean[x],
            mean[y],
            color=color_of[hue_value],
            linestyle=styles[n % len(styles)],
            label=describe(values, knobs),
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
    decay, `fit_diffusion_phase`), where the paper's log t law holds, and the dashed line
    spans that phase; otherwise every finite point (`fit_diffusion`).
    """
    by = list(by)
    data = _joined(epochs_df, trials_df, by)
    fig, ax = _new_axes(ax, (7.5, 4.8))
    keys = knob_keys(data, by)
    data = data.assign(_group=keys)
    ordered = sorted_keys(keys)
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
        label = describe(dict(zip(by, key, strict=True)), by)
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
    batch_size that takes more than one value. The baseline's error is a dashed line with a
    band up to the margin above it (the errors that still count as no gap); a diverged or
    failed cell is an × at the top of the axes.
    """
    if cells.empty:
        raise ValueError("no cells to draw")
    if hue is None:
        hue_cols = [
            k
            for k in CELL_KNOBS[1:] + OPTIONAL_KNOBS
            if k in cells.columns and len({plain_value(v) for v in cells[k]}) > 1
        ]
    else:
        hue_cols = _as_cols(hue)
    for c in hue_cols:
        if c not in cells.columns:
            raise ValueError(f"cells have no column {c!r} to colour lines by")
    fig, ax = _new_axes(ax, (7, 4.5))
    keys = knob_keys(cells, hue_cols) if hue_cols else [()] * len(cells)
    ordered = sorted_keys(keys)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    marked = 0
    for color, key in zip(_palette(len(ordered)), ordered, strict=True):
        part = cells[[k == key for k in keys]].sort_values("batch_size")
        batch = part["batch_size"].astype(float).to_numpy()
        err = 100.0 - part["test_acc_mean"].astype(float).to_numpy()
        std = part["test_acc_std"].astype(float).fillna(0.0).to_numpy()
        if not hue_cols:
            label = "all"
        elif len(hue_cols) == 1 and hue_cols[0] not in CELL_KNOBS + OPTIONAL_KNOBS:
            # A column the caller made up (say "remedy") names its lines by value alone.
            label = str(key[0])
        else:
            label = describe(dict(zip(hue_cols, key, strict=True)), hue_cols)
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
    margin = float(cells["margin"].iloc[0])
    ax.axhline(base, color="0.3", ls="--", lw=1, label="small-batch baseline")
    ax.axhspan(base, base + margin, color="0.5", alpha=0.15, lw=0)
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


# ------------------------------------------------------------------------------- files
