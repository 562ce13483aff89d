"""Table 1 of the paper: SB, LB, +LR, +GBN, +RA for one workload over several seeds.

    python -m tunegap.studies.table1

Each column adds a remedy to the previous one: LB (large batch, nothing changed), +LR (sqrt
learning-rate scaling), +GBN (ghost batches of B0 samples), +RA (regime adaptation: as many
updates as the small batch). Printed as a markdown table of test accuracy, mean ± std over
seeds, beside the paper's numbers where the workload is one of the paper's.
"""

from __future__ import annotations

import itertools
from typing import Unpack

import pandas as pd

from tunegap.analysis import plots
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import positive_int
from tunegap.remedies import TABLE1_COLUMNS, table1_rows
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO, check_optional_count
from tunegap.study_options import StudyOptions, own_defaults, study_fields
from tunegap.workloads import get_workload
from tunegap.workloads.workload import PublishedFigure

# Points between our small batch and a published figure that a summary must explain.
PUBLISHED_TOLERANCE = 2.0

QUESTION = (
    "Does each of the paper's remedies (sqrt LR scaling, Ghost BatchNorm, regime adaptation) "
    "recover part of the large-batch gap, and do all three together close it?"
)


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": AUTO}


def column_of(row: pd.Series, b0: int) -> str:
    if row["batch_size"] == b0:
        mult = str(row["regime_multiplier"])
        return "SB" if mult in ("1.0", "1") else f"SB x{float(mult):g}"
    if row["regime_multiplier"] not in ("1.0", "1", 1, 1.0):
        return "+RA"
    if pd.notna(row["ghost_batch_size"]):
        return "+GBN"
    return "+LR" if row["lr_exponent"] > 0 else "LB"


def table1_markdown(cells: pd.DataFrame, trials: pd.DataFrame, workload: str) -> str:
    """One column per remedy: our final and best-epoch accuracy, our verdict against SB, and
    the paper's own row where the workload is one of the paper's."""
    b0 = get_workload(workload).regime.base_batch_size
    by_column = {column_of(r, b0): r for _, r in cells.iterrows()}
    usable = trials[trials["outcome"] == "completed"]
    best = usable.groupby(usable.apply(column_of, axis=1, b0=b0))["best_test_acc"].mean()
    rows = ["| | " + " | ".join(TABLE1_COLUMNS) + " |", "|---" * (len(TABLE1_COLUMNS) + 1) + "|"]
    final, best_row, verdicts = [], [], []
    for col in TABLE1_COLUMNS:
        r = by_column.get(col)
        if r is None:
            final.append("-")
            best_row.append("-")
            verdicts.append("-")
            continue
        if r["verdict"] in ("diverged", "error"):
            final.append(str(r["verdict"]))
        else:
            std = r["test_acc_std"]
            final.append(f"{r['test_acc_mean']:.2f}" + (f" ± {std:.2f}" if pd.notna(std) else ""))
        best_row.append(f"{best[col]:.2f}" if col in best else "-")
        verdicts.append(str(r["verdict"]) if col != "SB" else "(reference)")
    margin = float(cells["margin"].iloc[0])
    best_judged = "accuracy" in cells.columns and str(cells["accuracy"].iloc[0]) == "best"
    held_out = ("validation_fraction" in trials.columns
                and bool((trials["validation_fraction"].fillna(0) > 0).any()))
    best_label = ("best epoch on the held-out validation split" if held_out
                  else "best epoch on the test set")
    judged = f"{best_label}, judged" if best_judged else "final epoch, judged"
    rows.append(f"| tunegap, {judged} (mean ± std) | " + " | ".join(final) + " |")
    rows.append(f"| tunegap, {best_label} (mean{'' if held_out else '; optimistic'}) | "
                + " | ".join(best_row) + " |")
    rows.append(f"| tunegap, verdict vs SB at margin {margin:g} | " + " | ".join(verdicts) + " |")
    paper = get_workload(workload).paper_table1
    if paper is not None:
        rows.append("| paper | " + " | ".join(f"{paper[c]:.2f}" for c in TABLE1_COLUMNS) + " |")
        rows += ["", f"Paper: {paper.source}."]
    else:
        rows += ["", f"Paper: no Table 1 row exists for {workload}; none is shown."]
    published = get_workload(workload).published
    if published is not None and "SB" in by_column:
        rows += ["", published_sentence(published, by_column)]
    return "\n".join(rows)


def published_sentence(published: PublishedFigure, by_column: dict[str, pd.Series]) -> str:
    """The small batch's accuracy beside the closest published figure; a difference of more
    than `PUBLISHED_TOLERANCE` points is explained by a longer small-batch run where the
    study made one (`--long-baseline`), else said to be unexplained."""
    sb = by_column["SB"]
    diff = float(sb["test_acc_mean"]) - published.accuracy
    text = (f"Outside reference: {published.accuracy:.1f}% ({published.source}); our small "
            f"batch {float(sb['test_acc_mean']):.2f}% at the base regime, {diff:+.2f} points.")
    longer = sorted((c for c in by_column if c.startswith("SB x")),
                    key=lambda c: float(c.removeprefix("SB x")))
    for col in longer:
        r = by_column[col]
        text += (f" A longer small-batch run ({col.removeprefix('SB ')} the base regime, "
                 f"{r['n_used']} seed(s)) reaches {float(r['test_acc_mean']):.2f}%, "
                 f"{float(r['test_acc_mean']) - published.accuracy:+.2f} points from it.")
    if abs(diff) > PUBLISHED_TOLERANCE:
        text += (f" The difference exceeds {PUBLISHED_TOLERANCE:g} points: "
                 + ("the longer run above measures how much of it the shorter regime explains."
                    if longer else "no longer run was made to explain it (--long-baseline)."))
    return text


def protocols_markdown(clean: pd.DataFrame, authors: pd.DataFrame, workload: str) -> str:
    """Table 1 under both protocols, side by side: per column, each protocol's accuracy (the
    one its verdicts judge) and verdict against its own SB, from the two cells tables."""
    b0 = get_workload(workload).regime.base_batch_size
    sides = {}
    for name, cells in (("clean", clean), ("authors", authors)):
        by_column = {column_of(r, b0): r for _, r in cells.iterrows()}
        which = "best-epoch" if str(cells["accuracy"].iloc[0]) == "best" else "final-epoch"
        sides[name] = (by_column, which, float(cells["margin"].iloc[0]))
    head = ["column"]
    for name, (_, which, margin) in sides.items():
        head += [f"{name}: {which} test acc (mean ± std)", f"{name}: verdict at {margin:g}"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for col in TABLE1_COLUMNS:
        line = [col]
        for by_column, _, _ in sides.values():
            r = by_column.get(col)
            if r is None:
                line += ["-", "-"]
                continue
            std = r["test_acc_std"]
            acc = f"{r['test_acc_mean']:.2f}" + (f" ± {std:.2f}" if pd.notna(std) else "")
            if r["verdict"] in ("diverged", "error"):
                acc = str(r["verdict"])
            line += [acc, "(reference)" if col == "SB" else str(r["verdict"])]
        rows.append("| " + " | ".join(line) + " |")
    same = [c for c in TABLE1_COLUMNS[1:]
            if c in sides["clean"][0] and c in sides["authors"][0]
            and sides["clean"][0][c]["verdict"] == sides["authors"][0][c]["verdict"]]
    rows += ["", f"Columns whose verdict is the same under both protocols: "
                 f"{', '.join(same) if same else 'none'} (of {len(TABLE1_COLUMNS) - 1})."]
    return "\n".join(rows)


def figures(cells, trials, epochs) -> dict:
    return {
        "test_acc_vs_updates": plots.curves(epochs, trials, x="updates", y="test_acc",
                                             hue="batch_size", logx=True),
    }


def comparisons(trials: pd.DataFrame) -> list:
    """Each remedy against the column before it, seed by seed: +LR vs LB, +GBN vs +LR (does
    GBN add to LR?), +RA vs +GBN (does RA add to GBN?)."""
    from tunegap.analysis.cells import plain_value
    from tunegap.analysis.decide import CELL_KNOBS
    from tunegap.analysis.effects import Comparison

    b0 = get_workload(trials["workload"].iloc[0]).regime.base_batch_size
    knobs = {}
    for _, row in trials.iterrows():
        knobs.setdefault(column_of(row, b0),
                         {k: plain_value(row[k]) for k in CELL_KNOBS if k in row})
    order = [c for c in TABLE1_COLUMNS[1:] if c in knobs]
    return [Comparison(label=f"{a} vs {b}", a=knobs[a], b=knobs[b])
            for b, a in itertools.pairwise(order)]


def report(cells, trials, epochs) -> str:
    return (f"Table 1 (test accuracy %, {cells['n_seeds'].max()} seeds a column at most):\n\n"
            + table1_markdown(cells, trials, trials["workload"].iloc[0]))


def study(*, large_batch_size: int | None = None, long_baseline: int | None = None,
          **options: Unpack[StudyOptions]) -> Study:
    """The table1 study: the paper's Table 1 columns (LB, +LR, +GBN, +RA) at
    `large_batch_size` (default the workload's), and with `long_baseline` > 1 the small
    batch also trained that many times its base regime; `options` as `StudyOptions`."""
    check_optional_count("--large-batch-size", large_batch_size)
    check_optional_count("--long-baseline", long_baseline)
    fields = study_fields("table1", options, **DEFAULTS)
    try:
        workload = get_workload(fields["workload"])
        rows = table1_rows(workload, large_batch_size=large_batch_size)
    except ValueError as err:
        raise StudyError(str(err)) from None
    points = tuple({k: v for k, v in kw.items() if k != "workload"} for _, kw in rows[1:])
    if long_baseline is not None and long_baseline > 1:
        points += ({"batch_size": workload.regime.base_batch_size,
                    "regime_multiplier": float(long_baseline)},)
    return Study(name="table1", points=points, question=QUESTION, figures=figures,
                 report=report, comparisons=comparisons, **fields)


def parser():
    own = own_defaults(study)
    p = study_parser("table1", __doc__, defaults=DEFAULTS)
    p.add_argument("--large-batch-size", type=positive_int("--large-batch-size"),
                   default=own["large_batch_size"],
                   help="the large batch (default: the workload's, 2048 for mnist1d-cnn)")
    p.add_argument("--long-baseline", type=positive_int("--long-baseline"),
                   default=own["long_baseline"], metavar="MULT",
                   help="also train the small batch MULT times the base regime, to measure "
                        "how far a longer run gets (printed beside the published figure)")
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
