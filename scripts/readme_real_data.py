"""The root README's paragraph on what changes between generated and real data, written from
the shipped `studies/table1/`, `studies/table1_fashion/`, `studies/frontier_fashion/` and
`studies/table1_fashion_f1/` tables (between `REGION_START` and `REGION_END`), so that no number in it is typed by hand.

`scripts/regenerate_studies.py` rewrites it with the study table; on its own:

    python scripts/readme_real_data.py          # print the paragraph
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

REGION_START = "<!-- real-data:start -->"
REGION_END = "<!-- real-data:end -->"
REAL, GENERATED, FRONTIER = "table1_fashion", "table1", "frontier_fashion"
# The same table on the second Fashion-MNIST workload, in one sentence where it is shipped.
SECOND = "table1_fashion_f1"


def plain_large_batch(cells: pd.DataFrame) -> pd.Series:
    """The cell without any remedy: the largest batch, plain BN, no LR scaling, base length."""
    grid = cells[~cells["is_baseline"].astype(bool)]
    plain = grid[grid["ghost_batch_size"].isna()
                 & (pd.to_numeric(grid["lr_exponent"], errors="coerce") == 0)
                 & (pd.to_numeric(grid["multiplier"], errors="coerce") == 1)]
    return plain.sort_values("batch_size").iloc[-1]


def _matched(cells: pd.DataFrame) -> pd.Series | None:
    """The +RA cell (regime multiplier "matched"), if the table has one."""
    rows = cells[cells["regime_multiplier"].astype(str) == "matched"]
    return rows.iloc[0] if len(rows) else None


def _std_range(cells: pd.DataFrame) -> str:
    std = pd.to_numeric(cells["test_acc_std"], errors="coerce").dropna()
    return f"{std.min():.2f} to {std.max():.2f}"


def _seeds_range(used: pd.Series) -> str:
    low, high = int(used.min()), int(used.max())
    return str(low) if low == high else f"{low} to {high}"


def real_data_paragraph(studies_root: str | os.PathLike[str]) -> str | None:
    """The paragraph, or None where one of the tables it reads is not shipped."""
    from tunegap.analysis.decide import ANSWERED
    from tunegap.workloads import get_workload

    root = Path(studies_root)
    if not all((root / n / "cells.csv").is_file() for n in (REAL, GENERATED)):
        return None
    real, generated = (pd.read_csv(root / n / "cells.csv") for n in (REAL, GENERATED))
    workload = get_workload(str(real["workload"].iloc[0]))
    base = real[real["is_baseline"].astype(bool)].iloc[0]
    plain_real, plain_generated = plain_large_batch(real), plain_large_batch(generated)
    grid = real[~real["is_baseline"].astype(bool)]
    answered = int(grid["verdict"].isin(ANSWERED).sum())
    used = pd.to_numeric(real["n_used"], errors="coerce")
    text = (
        f"The `*_fashion*` rows ask the same questions on real images, Fashion-MNIST from "
        f"Debian's package (this paragraph is written from the studies' cells.csv by "
        f"`scripts/regenerate_studies.py`). On `{workload.name}` (`{REAL}`, `{FRONTIER}`), "
        f"B0={int(base['batch_size'])} against {int(plain_real['batch_size'])}, a "
        f"{workload.regime.epochs}-epoch base regime, what changes from the generated "
        f"MNIST-1D: the large batch without a remedy is "
        f"{plain_real['gap']:.2f} points below the small batch ({plain_real['verdict']} at "
        f"margin {float(real['margin'].iloc[0]):g}), against {plain_generated['gap']:.2f} in "
        f"`{GENERATED}` on MNIST-1D at B={int(plain_generated['batch_size'])}; a cell's seeds "
        f"agree to within a standard deviation of {_std_range(real)} points (MNIST-1D's "
        f"`{GENERATED}`: {_std_range(generated)}), so {_seeds_range(used)} seeds a side decided "
        f"or put at the margin {answered} of its {len(grid)} cells"
    )
    ra = _matched(real)
    if ra is not None:
        text += (f"; +RA at the matched length is {ra['verdict']} (gap "
                 f"{float(ra['gap']):+.2f} points)")
    if workload.published is not None:
        short = workload.published.accuracy - float(base["test_acc_mean"])
        text += (f"; the small batch reaches {float(base['test_acc_mean']):.2f}%, "
                 f"{short:.2f} points {'short of' if short > 0 else 'above'} the published "
                 f"{workload.published.accuracy:g}% ({workload.published.source})")
    bracket = root / FRONTIER / "frontier.csv"
    if bracket.is_file():
        rows = pd.read_csv(bracket)
        parts = [f"{r.bracket} (B={int(r.batch_size)}, of the {int(r.matched_multiplier)}x "
                 f"that matches the small batch's updates)" for r in rows.itertuples()
                 if isinstance(r.bracket, str) and pd.notna(r.matched_multiplier)]
        if parts:
            text += f"; the frontier (`{FRONTIER}`): {'; '.join(parts)}"
    text += "."
    if (root / SECOND / "cells.csv").is_file():
        text += " " + _second_workload_sentence(pd.read_csv(root / SECOND / "cells.csv"))
    return text


def _second_workload_sentence(cells: pd.DataFrame) -> str:
    """One sentence on `SECOND`'s table: its large batch's gap and +RA's verdict."""
    base = cells[cells["is_baseline"].astype(bool)].iloc[0]
    plain = plain_large_batch(cells)
    text = (f"On `{cells['workload'].iloc[0]}` (`{SECOND}`, B0={int(base['batch_size'])} "
            f"against {int(plain['batch_size'])}), the large batch without a remedy is "
            f"{plain['gap']:.2f} points below the small batch ({plain['verdict']})")
    ra = _matched(cells)
    if ra is not None:
        text += f", and +RA is {ra['verdict']} (gap {float(ra['gap']):+.2f} points)"
    return text + "."


def replace_region(readme_text: str, body: str, start: str = REGION_START,
                   end: str = REGION_END) -> str:
    """`readme_text` with everything between `start` and `end` replaced by `body`."""
    i, j = readme_text.find(start), readme_text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the README has no {start} ... {end} region")
    return readme_text[: i + len(start)] + "\n" + body.strip("\n") + "\n" + readme_text[j:]


if __name__ == "__main__":
    paragraph = real_data_paragraph(Path(__file__).resolve().parent.parent / "studies")
    print(paragraph or "a table this paragraph reads is not shipped")
    sys.exit(0 if paragraph else 1)
