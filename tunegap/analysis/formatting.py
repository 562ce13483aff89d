"""How cells read as text: the markdown table of cells, and how a knob's value reads.

`format_value` and `describe` are also the labels of the figures (`tunegap.analysis.plots`),
so a cell reads the same in a table, a legend and a heatmap tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tunegap.analysis.cells import plain_value, sort_cells
from tunegap.analysis.decide import CELL_KNOBS, OPTIONAL_KNOBS

__all__ = [
    "DEFAULT_TABLE_COLUMNS",
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
    "gap_ci",
    "verdict",
    "verdict_holm",
    "seeds_to_decide",
)

_HEADERS = {
    "batch_size": "batch",
    "ghost_batch_size": "ghost",
    "lr_exponent": "lr exponent",
    "regime_multiplier": "multiplier",
    "base_lr_override": "base lr",
    "epochs_override": "epochs",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight decay",
    "no_decay_bn_bias": "no decay on BN/bias",
    "warmup_epochs": "warm-up epochs",
    "warmup_start_factor": "warm-up start",
    "scale_warmup": "warm-up scaled",
    "schedule": "schedule",
    "label_smoothing": "label smoothing",
    "train_size": "train size",
    "max_updates": "update budget",
    "bn_weight_init": "BN weight init",
    "zero_init_residual": "zero-init residual",
    "multiplier": "resolved multiplier",
    "seeds": "seeds used",
    "test_acc": "test acc (%)",
    "test_acc_ci95": "95% interval",
    "gap": "gap (pts)",
    "gap_ci": "gap interval",
    "verdict": "verdict",
    "verdict_holm": "verdict (Holm)",
    "seeds_to_decide": "seeds to decide",
    "p_value": "p (closed)",
    "p_value_holm": "Holm p",
    "train_test_gap": "train-test gap (pts)",
    "updates": "updates",
}
# Left-aligned (words); every other column is numbers, right-aligned.
_TEXT_COLUMNS = ("verdict", "verdict_holm")

_SHORT = {
    "batch_size": "B",
    "ghost_batch_size": "ghost",
    "lr_exponent": "α",
    "regime_multiplier": "ρ",
    "base_lr_override": "lr0",
    "epochs_override": "epochs",
    "momentum": "m",
    "weight_decay": "wd",
    "warmup_epochs": "warm-up",
    "label_smoothing": "ls",
    "max_updates": "budget",
}


def format_number(value: object, spec: str) -> str:
    """`value` formatted with `spec` (e.g. "+.2f"), or "—" where it is missing (None, NaN)."""
    return format(float(value), spec) if value is not None and pd.notna(value) else "—"


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


def markdown_table(cells: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A markdown table of the cells, baseline first, then by batch, ghost, exponent and
    multiplier.

    `columns` picks from: batch_size, ghost_batch_size, lr_exponent, regime_multiplier,
    base_lr_override, epochs_override, multiplier, seeds (usable seeds "n_used/n_seeds"),
    test_acc (mean ± std), test_acc_ci95, gap, gap_ci (Welch's interval of the gap at the design's confidence: 90% for one look),
    verdict (per cell), verdict_holm (Holm over the map), seeds_to_decide, p_value (of the
    "closed" test), p_value_holm, train_test_gap, updates. Default: DEFAULT_TABLE_COLUMNS
    plus the overrides the study set.
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
        "|" + "|".join("---" if c in _TEXT_COLUMNS else "---:" for c in columns) + "|",
    ]
    for _, row in ordered.iterrows():
        lines.append("| " + " | ".join(_cell_text(c, row) for c in columns) + " |")
    return "\n".join(lines)


def _cell_text(col: str, row: pd.Series) -> str:
    if col == "seeds":
        return f"{int(row['n_used'])}/{int(row['n_seeds'])}"
    if col == "test_acc":
        mean, std = row["test_acc_mean"], row["test_acc_std"]
        if not math.isfinite(mean):
            return "—"
        return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"
    if col in ("test_acc_ci95", "gap_ci"):
        stem = "test_acc_ci95" if col == "test_acc_ci95" else "gap_ci"
        low, high = row.get(f"{stem}_low", math.nan), row.get(f"{stem}_high", math.nan)
        sign = "+" if col == "gap_ci" else ""
        return f"[{low:{sign}.2f}, {high:{sign}.2f}]" if math.isfinite(low) else "—"
    if col in ("p_value", "p_value_holm"):
        value = row.get(col, math.nan)
        return f"{value:.3f}" if math.isfinite(value) and not row["is_baseline"] else "—"
    if col == "seeds_to_decide":
        value = plain_value(row.get(col))
        return "—" if value is None else str(int(value))
    if col in ("verdict", "verdict_holm"):
        return str(row[col])
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
