"""Text views of the cells: the markdown table, the baseline sentence, and how a knob reads.

`format_value` and `describe` are also the labels of the figures (`tunegap.analysis.plots`),
so a cell reads the same in a table, a legend and a heatmap tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tunegap.analysis.verdict import OPTIONAL_KNOBS, plain_value, sort_cells
from tunegap.names import CELL_KNOBS

__all__ = [
    "DEFAULT_TABLE_COLUMNS",
    "baseline_summary",
    "describe",
    "format_value",
    "markdown_table",
]

DEFAULT_TABLE_COLUMNS: tuple[str, ...] = (
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

_SHORT = {
    "batch_size": "B",
    "ghost_batch_size": "ghost",
    "lr_exponent": "α",
    "regime_multiplier": "ρ",
    "base_lr_override": "lr0",
    "epochs_override": "epochs",
}


def format_value(col: str, value: Any) -> str:
    """How one value of column `col` reads: a missing ghost size is "BN", other missing
    values "—", whole numbers without a decimal point."""
    value = plain_value(value)
    if col == "ghost_batch_size" and value is None:
        return "BN"
    if value is None:
        return "—"
    if col == "regime_multiplier":
        try:
            return f"{float(value):g}"
        except ValueError:
            return str(value)
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


def describe(values: Mapping[str, Any], cols: Sequence[str]) -> str:
    """`values` of `cols` as "B=1024, ghost=BN, α=0.5": a cell's name in legends."""
    return ", ".join(f"{_SHORT.get(c, c)}={format_value(c, values[c])}" for c in cols)


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


def markdown_table(cells: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A markdown table of the cells, baseline first, then by batch, ghost, exponent and
    multiplier.

    `columns` picks from: batch_size, ghost_batch_size, lr_exponent, regime_multiplier,
    base_lr_override, epochs_override, multiplier, seeds ("used/total" when some failed),
    test_acc (mean ± std), test_acc_ci95, gap, p_value, train_test_gap, updates, status
    ("baseline" for the baseline cell). Default: DEFAULT_TABLE_COLUMNS plus the overrides
    the study set.
    """
    if columns is None:
        columns = list(DEFAULT_TABLE_COLUMNS)
        for k in OPTIONAL_KNOBS:
            if k in cells.columns and cells[k].notna().any():
                columns.insert(4, k)
    unknown = [c for c in columns if c not in _HEADERS]
    if unknown:
        raise ValueError(f"unknown table column(s) {', '.join(unknown)}: use {', '.join(_HEADERS)}")
    knobs = [k for k in CELL_KNOBS + OPTIONAL_KNOBS if k in cells.columns]
    ordered = sort_cells(cells, knobs)
    lines = [
        "| " + " | ".join(_HEADERS[c] for c in columns) + " |",
        "|" + "|".join("---" if c == "status" else "---:" for c in columns) + "|",
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
    return format_value(col, row[col])
