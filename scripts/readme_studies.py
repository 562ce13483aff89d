"""The root README's study table, generated from each shipped folder's cells.csv (and
frontier.csv), and the README rewrite that puts it and the real-data paragraph in place."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from readme_real_data import REGION_START, real_data_paragraph, replace_region
from shipped_studies import COMMANDS, FRONTIER_STUDIES, QUESTION_PREFIX, question_of, study_of

TABLE_START = "<!-- studies:start -->"
TABLE_END = "<!-- studies:end -->"

def readme_table(studies_root: str | os.PathLike[str], *, link_root: str = "studies") -> str:
    """The root README's study table, from every `<studies_root>/<name>/` with a cells.csv:
    the study, its question (from its README.md, else its module) and, linked to its README.md, the verdict
    counts of its cells at its margin (for a frontier study: per batch size the smallest
    closed regime multiplier, or "not closed")."""
    root = Path(studies_root)
    names = [n for n in COMMANDS if (root / n / "cells.csv").is_file()]
    names += sorted(p.parent.name for p in root.glob("*/cells.csv") if p.parent.name not in names)
    lines = [
        "| study | question | result (generated from its cells.csv) |",
        "|---|---|---|",
    ]
    for name in names:
        folder = root / name
        bracket = folder / "frontier.csv"
        result = result_text(pd.read_csv(folder / "cells.csv"), frontier=study_of(name) in FRONTIER_STUDIES,
                             brackets=pd.read_csv(bracket) if bracket.is_file() else None)
        question = _readme_question(folder / "README.md").replace("|", "\\|")
        lines.append(f"| `{name}` | {question} | [{result}]({link_root}/{name}/README.md) |")
    return "\n".join(lines)


def result_text(cells: pd.DataFrame, *, frontier: bool = False,
                brackets: pd.DataFrame | None = None) -> str:
    """"closed 2, open 5, inconclusive 3 at margin 0.5 (Holm: closed 1, open 4)" from a cells
    table (Holm's open count only where the table was judged both ways: a cells.csv of the
    second release adjusted "closed" alone); with `frontier`, per batch size the bracket of
    its frontier.csv where it has one, else the smallest closed multiplier, first."""
    if "verdict" not in cells.columns or "margin" not in cells.columns:
        return "no verdicts in its cells.csv: regenerate it"
    grid = cells[~cells["is_baseline"].astype(bool)]
    counts = grid["verdict"].value_counts()
    parts = [f"{v} {int(counts.get(v, 0))}" for v in ("closed", "open", "inconclusive")]
    parts += [f"{v} {int(counts[v])}" for v in ("at the margin", "diverged", "error")
              if counts.get(v, 0)]
    text = ", ".join(parts) + f" at margin {float(cells['margin'].iloc[0]):g}"
    if "verdict_holm" in grid.columns:
        holm = grid["verdict_holm"]
        both_ways = "p_value_open_holm" in grid.columns
        text += (f" (Holm: closed {int((holm == 'closed').sum())}"
                 + (f", open {int((holm == 'open').sum())})" if both_ways else ")"))
    if len(grid):
        from tunegap.analysis.decide import ANSWERED

        done = grid["verdict"].isin(ANSWERED).sum()
        text += f"; decided or at the margin {int(done)}/{len(grid)}"
    if frontier:
        parts = ([f"B={r.batch_size}: {r.bracket}" for r in brackets.itertuples()]
                 if brackets is not None and "bracket" in brackets.columns
                 else _frontier_parts(grid))
        text = "; ".join(parts) + f". Cells: {text}"
    return text


def _frontier_parts(grid: pd.DataFrame) -> list[str]:
    parts = []
    for batch, group in grid.groupby("batch_size", sort=True):
        closed = group.loc[group["verdict"] == "closed", "multiplier"]
        if len(closed):
            parts.append(f"B={batch}: closed at multiplier {float(closed.min()):g}")
        else:
            parts.append(f"B={batch}: not closed (probed up to {float(group['multiplier'].max()):g})")
    return parts


def _readme_question(readme: Path) -> str:
    """The question line `header` wrote, else the study module's question, else "—"."""
    if readme.is_file():
        for line in readme.read_text().splitlines():
            if line.startswith(QUESTION_PREFIX):
                return line.removeprefix(QUESTION_PREFIX).strip()
    try:
        return question_of(study_of(readme.parent.name))
    except ModuleNotFoundError:
        return "—"


def replace_table(readme_text: str, table: str) -> str:
    """`readme_text` with everything between TABLE_START and TABLE_END replaced by `table`."""
    return replace_region(readme_text, table, TABLE_START, TABLE_END)


def rewrite_readme(readme: Path, studies_root: Path) -> None:
    """The root README's study table and, where the README has its region and the studies
    it reads are shipped, its generated paragraph on real against generated data."""
    text = replace_table(readme.read_text(), readme_table(studies_root))
    paragraph = real_data_paragraph(studies_root)
    if paragraph is not None and REGION_START in text:
        text = replace_region(text, paragraph)
    readme.write_text(text)
