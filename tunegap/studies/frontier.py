"""Closure frontier: how much longer must each large batch train before its gap is closed?

    tunegap run frontier --batch-sizes 256,1024 --margin 1.0 --max-seeds 3 --epochs 4

Per batch size, with the paper's remedies (sqrt learning-rate scaling, ghost batches of B0
unless --ghost-size), the frontier as a bracket over the multipliers 1, 2, 4, ... up to
matched: the largest multiplier decided open and the smallest decided closed at --margin.
Two fixed sequences find it (`tunegap.runner.adaptive.FixedSequences`): "closed" is tested
from matched down, stopping at the first probe not closed; "open" from 1 up, stopping at the
first not open. A fixed sequence controls the family-wise error of each at 5% without any
adjustment and without assuming the gap shrinks with training; each probe gets seeds at the
planned looks from --min-seeds to --max-seeds (Bonferroni over the looks). Probes between
the two ends that neither sequence decided are reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

import pandas as pd
from matplotlib.figure import Figure

from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import int_list, positive_int
from tunegap.runner.adaptive import FixedSequences
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO, check_count, check_optional_count
from tunegap.study_options import StudyOptions, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "At each batch size, with sqrt learning-rate scaling and ghost batches, between which regime "
    "multipliers (and numbers of weight updates) does the gap go from decided open to decided "
    "closed at the declared margin, and how does that compare with the small batch's own updates?"
)
FRONTIER_FILE = "frontier.csv"
# The noise scale over the first half of each trial's training (its high-lr phase) gives the
# critical batch size marked on the figure.
NOISE_PHASE = 0.5


# The study's own defaults of the common options, and the searches it runs (the first
# the default), for its function and its command alike.
DEFAULTS = {"seeds": AUTO}
SEARCHES = ("frontier",)


def frontier_table(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per batch size: the bracket (largest open, smallest closed multiplier, with
    their updates), re-walked from the map's own verdicts by the search's fixed sequences,
    and every probe with its verdict."""
    rows = []
    probes = cells[~cells["is_baseline"]]
    b0 = int(trials.loc[trials["is_baseline"], "batch_size"].iloc[0])
    for batch_size, group in probes.groupby("batch_size", sort=True):
        group = group.sort_values("multiplier")
        matched = max(1, math.ceil(int(batch_size) / b0))
        line = FixedSequences(int(batch_size), matched)
        by_multiplier = {round(m): row for m, row in zip(group["multiplier"],
                                                               group.to_dict("records"),
                                                               strict=True)}
        for m in line.multipliers:
            if m in by_multiplier:
                line.verdicts[m] = str(by_multiplier[m]["verdict"])
        line.walk()
        largest_open, smallest_closed = line.bracket()
        between = [m for m in line.multipliers
                   if (largest_open is None or m > largest_open)
                   and (smallest_closed is None or m < smallest_closed) and m in by_multiplier]
        probed = " ".join(f"{m:g}:{v}" for m, v in zip(group["multiplier"], group["verdict"],
                                                       strict=True))

        def pick(m: int | None, col: str, rows_by=by_multiplier) -> float:
            return float(rows_by[m][col]) if m is not None else math.nan

        sel = (trials["batch_size"] == batch_size) & (trials["multiplier"] == smallest_closed)
        rows.append({
            "batch_size": int(batch_size),
            "matched_multiplier": matched,
            "largest_open_multiplier": float(largest_open) if largest_open else math.nan,
            "largest_open_updates": pick(largest_open, "updates"),
            "smallest_closed_multiplier": float(smallest_closed) if smallest_closed
            else math.nan,
            "smallest_closed_updates": pick(smallest_closed, "updates"),
            "smallest_closed_epochs": float(trials.loc[sel, "resolved_epochs"].mean())
            if smallest_closed else math.nan,
            "largest_probe_updates": float(group["updates"].iloc[-1]),
            "bracket": bracket_text(largest_open, smallest_closed, matched),
            "undecided_between": " ".join(
                f"{m}:{by_multiplier[m]['verdict']}" for m in between),
            "multipliers_probed": probed,
            "procedure": "fixed sequences: closed from matched down, open from 1 up, "
                         "each at 5% family-wise",
        })
    return pd.DataFrame(rows)


def bracket_text(largest_open: int | None, smallest_closed: int | None, matched: int) -> str:
    """"open at 4, closed at 8", "open up to matched (32)", ..."""
    if largest_open is None and smallest_closed is None:
        return "nothing decided"
    if smallest_closed is None:
        return (f"open up to matched ({matched})" if largest_open == matched
                else f"open at {largest_open}, nothing closed up to matched ({matched})")
    if largest_open is None:
        return ("closed from multiplier 1" if smallest_closed == 1
                else f"closed at {smallest_closed}, nothing decided open below")
    return f"open at {largest_open}, closed at {smallest_closed}"


def baseline_updates(trials: pd.DataFrame) -> float:
    return float(trials.loc[trials["is_baseline"], "updates"].mean())


def critical_batch(trials: pd.DataFrame, epochs: pd.DataFrame) -> tuple[float, str]:
    """B_noise (McCandlish et al. 2018): the median noise scale B_simple over the first half of
    each measuring trial's epochs (its high-lr phase), and a sentence saying which trials.

    The small batch itself is too small to split into the 1/8 sub-batch the estimate needs,
    so the numbers come from the large-batch probes; the noise scale is a property of the
    gradients at the weights reached, not of the batch size that measured it.
    """
    if "noise_scale" not in epochs or epochs["noise_scale"].isna().all():
        return math.nan, "not measured"
    last = epochs.groupby("trial_id")["epoch"].transform("max")
    early = epochs[(epochs["epoch"] <= NOISE_PHASE * last) & epochs["noise_scale"].notna()]
    if early.empty:
        early = epochs[epochs["noise_scale"].notna()]
    ids = early["trial_id"].unique()
    sizes = sorted(trials.loc[trials["trial_id"].isin(ids), "batch_size"].unique())
    value = float(early["noise_scale"].median())
    return value, (f"median B_simple over the first {NOISE_PHASE:.0%} of the epochs of the "
                   f"{len(ids)} trials that measured it (batch sizes "
                   f"{', '.join(map(str, sizes))}; {len(early)} epochs)")


def frontier_plot(table: pd.DataFrame, *, sb_updates: float, critical_batch: float) -> Figure:
    """Updates needed to close the gap against batch size, log-log, with the small batch's
    own updates (the matched prediction) and the critical batch size marked."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    closed = table[table["smallest_closed_updates"].notna()]
    opened = table[table["largest_open_updates"].notna()]
    # The bracket: a bar from the largest open to the smallest closed probe's updates.
    for r in table.itertuples():
        low, high = r.largest_open_updates, r.smallest_closed_updates
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([r.batch_size, r.batch_size], [low, high], color="tab:grey", linewidth=3,
                    alpha=0.5)
    ax.plot(closed["batch_size"], closed["smallest_closed_updates"], "v", color="tab:blue",
            markersize=9, label="smallest multiplier decided closed")
    ax.plot(opened["batch_size"], opened["largest_open_updates"], "^", color="tab:red",
            markersize=9, label="largest multiplier decided open")
    ax.axhline(sb_updates, color="grey", linestyle="--",
               label=f"small batch's updates ({sb_updates:g}): the matched prediction")
    if math.isfinite(critical_batch):
        ax.axvline(critical_batch, color="tab:green", linestyle=":",
                   label=f"critical batch B_noise ~ {critical_batch:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("weight updates")
    ax.set_title("closure frontier: the bracket per batch size")
    ax.legend(fontsize=8)
    return fig


def figures(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    table = frontier_table(cells, trials, epochs)
    b_crit, _ = critical_batch(trials, epochs)
    return {"frontier": frontier_plot(table, sb_updates=baseline_updates(trials),
                                      critical_batch=b_crit)}


def number_or_dash(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:g}"


def report(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> str:
    table = frontier_table(cells, trials, epochs)
    b_crit, how = critical_batch(trials, epochs)
    lines = [
        "## Closure frontier",
        "",
        "| B | matched | bracket | open at (updates) | closed at (updates) | undecided between "
        "| probed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.batch_size} | {r.matched_multiplier} | {r.bracket} | "
            f"{number_or_dash(r.largest_open_multiplier)} ({number_or_dash(r.largest_open_updates)}) | "
            f"{number_or_dash(r.smallest_closed_multiplier)} "
            f"({number_or_dash(r.smallest_closed_updates)}) | {r.undecided_between or '-'} | "
            f"{r.multipliers_probed} |")
    lines += [
        "",
        "Search: two fixed sequences per batch size over the multipliers 1, 2, 4, ... up to "
        "matched; closed tested from matched down, open from 1 up, each stopping at its first "
        "failure, so each family's error is at most 5% without adjustment.",
        "",
        f"Small batch's own updates (the paper's matched prediction): "
        f"{baseline_updates(trials):g}. Critical batch size from the noise scale: "
        + ("not measured" if math.isnan(b_crit) else f"{b_crit:.0f} ({how})") + ".",
    ]
    return "\n".join(lines)


def tables(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    return {FRONTIER_FILE: frontier_table(cells, trials, epochs)}


def study(*, batch_sizes: Sequence[int] = (256, 512, 1024, 2048), ghost_size: int | None = None,
          lr_exponent: float = 0.5, noise_scale_every: int = 4,
          **options: Unpack[StudyOptions]) -> Study:
    """The frontier study: per batch size (each above B0), the bracket of regime multipliers
    where the gap closes, with ghost `ghost_size` (default B0) at `lr_exponent`; `options`
    as `StudyOptions` (its search is "frontier", its seeds "auto")."""
    check_optional_count("--ghost-size", ghost_size)
    check_count("--noise-scale-every", noise_scale_every)
    fields = study_fields("frontier", options, searches=SEARCHES, **DEFAULTS)
    try:
        b0 = get_workload(fields["workload"]).regime.base_batch_size
    except ValueError as err:
        raise StudyError(str(err)) from None
    small = [b for b in batch_sizes if b <= b0]
    if small:
        raise StudyError(f"--batch-sizes {', '.join(map(str, small))} are not above the small "
                         f"batch B0={b0}: the frontier is about larger batches")
    return Study(
        name="frontier",
        grid={"batch_size": tuple(batch_sizes),
              "ghost_batch_size": (ghost_size or b0,),
              "lr_exponent": (lr_exponent,)},
        instruments={"noise_scale_every": noise_scale_every},
        question=QUESTION,
        figures=figures,
        report=report,
        tables=tables,
        **fields,
    )


def parser():
    own = own_defaults(study)
    p = study_parser("frontier", __doc__, defaults=DEFAULTS, searches=SEARCHES)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--ghost-size", type=positive_int("--ghost-size"), default=own["ghost_size"],
                   help="ghost batch size (default: the workload's B0)")
    p.add_argument("--lr-exponent", type=float, default=own["lr_exponent"])
    p.add_argument("--noise-scale-every", type=positive_int("--noise-scale-every"),
                   default=own["noise_scale_every"],
                   help="measure the gradient noise scale every k-th step (critical batch)")
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
