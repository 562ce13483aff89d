"""Closure frontier: how much longer must each large batch train before its gap is closed?

    tunegap run frontier --batch-sizes 256,1024 --margin 1.0 --max-seeds 3 --epochs 4

Per batch size, with the paper's remedies (sqrt learning-rate scaling, ghost batches of B0
unless --ghost-size), the smallest regime multiplier in [1, matched] whose cell is closed at
--margin, found by bisection on a log scale over whole multipliers (matched first, then 1,
then the midpoint of the two nearest probes); each probe gets seeds until it is decided,
from --min-seeds up to --max-seeds. The bisection assumes the gap shrinks as training
lengthens: where it does not, the frontier is still the smallest closed multiplier probed,
with an open or inconclusive one just below, but a closed multiplier below an open probe
would go unseen (`benchmarks/frontier_cost.py` runs the full grid beside it to check).
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from tunegap.cli import common_study_fields, int_list, positive_int, study_command, study_parser
from tunegap.study import Study, StudyError
from tunegap.workloads import get_workload

QUESTION = (
    "At each batch size, with sqrt learning-rate scaling and ghost batches, what is the "
    "smallest regime multiplier (and number of weight updates) at which the gap is closed "
    "at the declared margin, and how does it compare with the small batch's own updates?"
)
FRONTIER_FILE = "frontier.csv"
# The noise scale over the first half of each trial's training (its high-lr phase) gives the
# critical batch size marked on the figure.
NOISE_PHASE = 0.5


def frontier_table(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per batch size: the closing multiplier and what was probed, from the cells."""
    rows = []
    probes = cells[~cells["is_baseline"]]
    b0 = int(trials.loc[trials["is_baseline"], "batch_size"].iloc[0])
    for batch_size, group in probes.groupby("batch_size", sort=True):
        group = group.sort_values("multiplier")
        closed = group[group["verdict"] == "closed"]
        matched = max(1, math.ceil(int(batch_size) / b0))
        probed = " ".join(f"{m:g}:{v}" for m, v in zip(group["multiplier"], group["verdict"],
                                                       strict=True))
        if len(closed):
            best = closed.iloc[0]
            below = group[group["multiplier"] < best["multiplier"]]
            verdict = "closed"
            note = (f"open or inconclusive at {below['multiplier'].iloc[-1]:g}"
                    if len(below) else "closed at multiplier 1")
        else:
            best = group.iloc[-1]
            verdict = f"not closed up to matched ({best['verdict']} at {best['multiplier']:g})"
            note = "no multiplier up to matched closes the gap at this margin"
        sel = (trials["batch_size"] == batch_size) & (trials["multiplier"] == best["multiplier"])
        rows.append({
            "batch_size": int(batch_size),
            "matched_multiplier": matched,
            "closing_multiplier": float(best["multiplier"]) if len(closed) else math.nan,
            "closing_updates": float(best["updates"]) if len(closed) else math.nan,
            "closing_epochs": float(trials.loc[sel, "resolved_epochs"].mean())
            if len(closed) else math.nan,
            "largest_probe_updates": float(group["updates"].iloc[-1]),
            "seeds": int(best["n_seeds"]),
            "verdict": verdict,
            "multipliers_probed": probed,
            "note": note,
        })
    return pd.DataFrame(rows)


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
    done = table[table["closing_updates"].notna()]
    ax.plot(done["batch_size"], done["closing_updates"], "o-", color="tab:blue",
            label="updates to close (smallest closed multiplier)")
    never = table[table["closing_updates"].isna()]
    if len(never):
        # Not closed even at matched: at least the matched number of updates, drawn as such.
        ax.plot(never["batch_size"], never["largest_probe_updates"], "^", color="tab:red", markersize=9,
                label="not closed up to matched (more than this)")
    ax.axhline(sb_updates, color="grey", linestyle="--",
               label=f"small batch's updates ({sb_updates:g}): the matched prediction")
    if math.isfinite(critical_batch):
        ax.axvline(critical_batch, color="tab:green", linestyle=":",
                   label=f"critical batch B_noise ~ {critical_batch:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("weight updates")
    ax.set_title("closure frontier")
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
        "| B | matched | closing multiplier | updates | epochs | seeds | verdict | probed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(f"| {r.batch_size} | {r.matched_multiplier} | {number_or_dash(r.closing_multiplier)} | "
                     f"{number_or_dash(r.closing_updates)} | {number_or_dash(r.closing_epochs)} | {r.seeds} | "
                     f"{r.verdict} | {r.multipliers_probed} |")
    lines += [
        "",
        f"Small batch's own updates (the paper's matched prediction): "
        f"{baseline_updates(trials):g}. Critical batch size from the noise scale: "
        + ("not measured" if math.isnan(b_crit) else f"{b_crit:.0f} ({how})") + ".",
    ]
    return "\n".join(lines)


def tables(cells: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    return {FRONTIER_FILE: frontier_table(cells, trials, epochs)}


def parser():
    p = study_parser("frontier", __doc__, seeds="auto", searches=("frontier",))
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=(256, 512, 1024, 2048))
    p.add_argument("--ghost-size", type=positive_int("--ghost-size"), default=None,
                   help="ghost batch size (default: the workload's B0)")
    p.add_argument("--lr-exponent", type=float, default=0.5)
    p.add_argument("--noise-scale-every", type=positive_int("--noise-scale-every"), default=4,
                   help="measure the gradient noise scale every k-th step (critical batch)")
    return p


def build(args) -> Study:
    b0 = get_workload(args.workload).regime.base_batch_size
    small = [b for b in args.batch_sizes if b <= b0]
    if small:
        raise StudyError(f"--batch-sizes {', '.join(map(str, small))} are not above the small "
                         f"batch B0={b0}: the frontier is about larger batches")
    return Study(
        name="frontier",
        grid={"batch_size": args.batch_sizes,
              "ghost_batch_size": (args.ghost_size or b0,),
              "lr_exponent": (args.lr_exponent,)},
        instruments={"noise_scale_every": args.noise_scale_every},
        question=QUESTION,
        figures=figures,
        report=report,
        tables=tables,
        **common_study_fields(args),
    )


main = study_command(parser, build)


if __name__ == "__main__":
    main()
