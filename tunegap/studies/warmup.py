"""Linear scaling with warm-up (Goyal et al. 2017) against the paper's sqrt rule.

    python -m tunegap.studies.warmup

Goyal et al. ("Accurate, large minibatch SGD: training ImageNet in 1 hour", arXiv
1706.02677) train large batches with the linear rule, lr = base_lr * B/B0 (lr exponent 1),
and find that it needs a gradual warm-up: the lr starts at the small batch's, base_lr (a
start factor of B0/B of the scaled lr), and rises linearly to base_lr * B/B0 over the first
5 of 90 epochs. Hoffer et al. 2017 argue for sqrt scaling (exponent 0.5) instead. At each
batch size B > B0 this study runs three rules, all at the workload's base number of epochs:

- `linear`: exponent 1, no warm-up;
- `linear+warmup`: exponent 1, linear warm-up over `--warmup-fraction` of the epochs
  (default 0.1: 2 of MNIST-1D's 20 epochs; Goyal et al.'s 5/90 would be about one epoch,
  a handful of updates at the largest batch here) from B0/B of the scaled lr;
- `sqrt`: exponent 0.5, no warm-up.

Each cell is judged against the small-batch baseline (B0, the workload's regime) at the
declared margin. The map is batch size x rule; the report says, per batch size, which rule
came closest and what the warm-up changed, from the tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

import pandas as pd

from tunegap.analysis import plots
from tunegap.analysis.formatting import format_number
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import int_list, number
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO
from tunegap.study_options import StudyOptions, check_number, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "At a fixed number of epochs, does linear learning-rate scaling need a warm-up to match "
    "the small batch, and does it then beat the sqrt rule?"
)
RULES = ("linear", "linear+warmup", "sqrt")
# The knobs the study sets in each cell: the common flags may not move them.
OWN_KNOBS = ("warmup_epochs", "warmup_start_factor")
RULE_ORDER = {"baseline": -1, **{r: i for i, r in enumerate(RULES)}}


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": AUTO}


def rule_label(row) -> str:
    """"baseline" for B=B0, else the rule of the row: linear, linear+warmup or sqrt."""
    if bool(row.get("is_baseline", False)):
        return "baseline"
    warm = pd.to_numeric(pd.Series([row.get("warmup_epochs")]), errors="coerce").fillna(0.0)
    if float(row["lr_exponent"]) >= 1.0:
        return "linear+warmup" if float(warm.iloc[0]) > 0 else "linear"
    return "sqrt" if float(row["lr_exponent"]) == 0.5 else f"exponent {row['lr_exponent']:g}"


def with_rules(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with a `rule` column, in batch size then rule order."""
    cells = cells.assign(rule=cells.apply(rule_label, axis=1))
    order = cells["rule"].map(RULE_ORDER).fillna(len(RULES))
    return (cells.assign(_order=order).sort_values(["batch_size", "_order"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def figures(cells, trials, epochs) -> dict:
    grid = with_rules(cells[~cells["is_baseline"]])
    return {
        "gap_map": plots.gap_heatmap(
            grid.drop(columns=[c for c in OWN_KNOBS if c in grid.columns]),
            rows="batch_size", cols="rule",
            title="gap to small batch (points): batch size x LR rule",
        )
    }


def report(cells, trials, epochs) -> str:
    """Per batch size: each rule's accuracy, gap and verdict, the best rule and what the
    warm-up changed; every number is read from the cells."""
    table = with_rules(cells)
    margin = float(table["margin"].iloc[0]) if len(table) else math.nan
    lines = [
        f"Per batch size and rule: test accuracy (mean over seeds), gap to the baseline "
        f"(points) and the verdict at the margin of {margin:g} points.",
        "",
        "| batch | rule | lr exponent | warm-up epochs | seeds | test acc (%) | gap | verdict |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table.itertuples():
        warm = getattr(r, "warmup_epochs", math.nan)
        lines.append(
            f"| {r.batch_size} | {r.rule} | {r.lr_exponent:g} | {format_number(warm, 'g')} | "
            f"{r.n_used}/{r.n_seeds} | {format_number(r.test_acc_mean, '.2f')} | "
            f"{format_number(r.gap, '+.2f')} | {r.verdict} |")
    lines += ["", *rule_sentences(table)]
    return "\n".join(lines)


def rule_sentences(table: pd.DataFrame) -> list[str]:
    """Sentences from the cells: per batch size the closest rule and the warm-up's effect."""
    out = []
    for batch, group in table[table["rule"] != "baseline"].groupby("batch_size", sort=True):
        usable = group[pd.to_numeric(group["gap"], errors="coerce").notna()]
        if usable.empty:
            out.append(f"- B={batch}: no rule has a usable seed "
                       f"({', '.join(f'{r.rule} {r.verdict}' for r in group.itertuples())}).")
            continue
        best = usable.loc[usable["gap"].idxmin()]
        text = (f"- B={batch}: the smallest point gap is {best['rule']}'s ({best['gap']:+.2f} "
                f"points, {best['verdict']}), a point estimate and no ranking (which rule is "
                "better is decided, or not, by the paired comparisons)")
        by_rule = group.set_index("rule")
        if {"linear", "linear+warmup"} <= set(by_rule.index):
            cold, warm = by_rule.loc["linear"], by_rule.loc["linear+warmup"]
            text += f"; warm-up takes linear scaling from {_state(cold)} to {_state(warm)}"
        out.append(text + ".")
    return out


def _state(cell) -> str:
    if pd.isna(cell["gap"]):
        return str(cell["verdict"])
    return f"{cell['gap']:+.2f} ({cell['verdict']})"


def comparisons(trials):
    """At each batch size, every pair of rules (linear, linear with warm-up, sqrt), seed by
    seed: does warm-up help linear scaling, and does either beat sqrt?"""
    from tunegap.analysis.effects import comparisons_within

    return comparisons_within(trials, group_by=["batch_size"],
                              vary=["lr_exponent", "warmup_epochs"])


def study(*, batch_sizes: Sequence[int] = (128, 512, 2048), warmup_fraction: float = 0.1,
          **options: Unpack[StudyOptions]) -> Study:
    """The warmup study: at each of `batch_sizes` (other than B0), linear scaling, linear
    scaling with a linear warm-up over `warmup_fraction` of the epochs, and sqrt scaling;
    `options` as `StudyOptions`."""
    warmup_fraction = check_number("--warmup-fraction", warmup_fraction, low=0, high=1,
                                   low_open=True)
    fields = study_fields("warmup", options, **DEFAULTS)
    taken = [k for k in OWN_KNOBS if k in fields["knobs"]]
    if taken:
        flag = "--" + taken[0].replace("_", "-")
        raise StudyError(f"{flag} is not allowed here: the warmup study sets the warm-up of "
                         "each rule itself (use --warmup-fraction)")
    try:
        regime = get_workload(fields["workload"]).regime
    except ValueError as err:
        raise StudyError(str(err)) from None
    b0 = regime.base_batch_size
    warmup_epochs = warmup_fraction * (fields["epochs"] or regime.epochs)
    points = []
    for b in batch_sizes:
        if b == b0:
            continue  # every rule gives B0 its base lr: the baseline is that cell
        points += [
            {"batch_size": b, "lr_exponent": 1.0, "warmup_epochs": 0.0},
            {"batch_size": b, "lr_exponent": 1.0, "warmup_epochs": warmup_epochs,
             "warmup_start_factor": min(1.0, b0 / b)},
            {"batch_size": b, "lr_exponent": 0.5, "warmup_epochs": 0.0},
        ]
    if not points:
        raise StudyError(f"--batch-sizes {','.join(map(str, batch_sizes))} has no batch "
                         f"size other than the baseline's B0={b0}: give a larger one")
    return Study(name="warmup", points=tuple(points), question=QUESTION, figures=figures,
                 report=report, comparisons=comparisons, **fields)


def parser():
    own = own_defaults(study)
    p = study_parser("warmup", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--warmup-fraction", type=number("--warmup-fraction"),
                   default=own["warmup_fraction"],
                   help="warm-up length of the linear+warmup rule, as a fraction of the "
                        "epochs, > 0 and <= 1 (default 0.1)")
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
