"""Batch size (the paper's Figure 1): test error against batch size at a fixed epoch budget.

Beside it, the instruments of later work against batch size: updates to reach a target
accuracy (Shallue et al. 2018, log-log), the gradient noise scale with the critical batch
size it predicts (McCandlish et al. 2018), and sharpness (Keskar et al. 2017).

    python -m tunegap.studies.batch_size

For each batch size: plain large batch, +LR (sqrt scaling) and +LR+GBN (ghost = B0), all with
the workload's base number of epochs, so larger batches make fewer updates. The B=B0 baseline
is labelled SB. Steps-to-target per cell says how many of its seeds reached the target; the
critical batch size is a median noise scale over the high-learning-rate phase (before the
first lr decay) of one set of trials, named in the report (see `critical_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

import numpy as np
import pandas as pd

from tunegap.analysis import plots
from tunegap.analysis.formatting import format_number
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import int_list, positive_int
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO, check_count, check_optional_count
from tunegap.study_options import StudyOptions, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "How does test error grow with the batch size at a fixed number of epochs, and how much "
    "of it do sqrt LR scaling and Ghost BatchNorm recover?"
)
# The order of the instruments table's rows within a batch size.
REMEDIES = ("SB", "LB", "+LR", "+LR+GBN")


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": AUTO}


def remedy_label(row) -> str:
    """"SB" for the small-batch baseline (B=B0), else LB, +LR or +LR+GBN from the knobs."""
    if bool(row.get("is_baseline", False)):
        return "SB"
    if pd.notna(row["ghost_batch_size"]):
        return "+LR+GBN"
    return "+LR" if row["lr_exponent"] > 0 else "LB"


def steps_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell (batch size, remedy): how many of its seeds reached the target accuracy.

    Every trial of the cell counts in `n_seeds`, whatever its outcome (a seed that errored
    never reached it); `n_reached` of them have a finite `steps_to_target`, and
    `steps_mean` is the mean over those only, so it is the cell's number only where
    `n_reached == n_seeds` (`all_reached`).
    """
    trials = trials.assign(remedy=trials.apply(remedy_label, axis=1))
    rows = []
    for (batch, remedy), group in trials.groupby(["batch_size", "remedy"], sort=False):
        steps = pd.to_numeric(group["steps_to_target"], errors="coerce").astype(float)
        reached = steps[np.isfinite(steps)]
        rows.append({
            "batch_size": int(batch),
            "remedy": remedy,
            "n_seeds": len(group),
            "n_reached": len(reached),
            "steps_mean": float(reached.mean()) if len(reached) else math.nan,
            "all_reached": len(reached) == len(group),
        })
    return _in_order(pd.DataFrame(rows, columns=["batch_size", "remedy", "n_seeds", "n_reached",
                                                 "steps_mean", "all_reached"]))


def steps_text(n_seeds: int, n_reached: int, steps_mean: float) -> str:
    """"84 (2/2 seeds)" where every seed reached the target; otherwise it says how many did
    and gives their mean as theirs only, never as the cell's."""
    if n_reached == 0:
        return f"not reached (0/{n_seeds} seeds)"
    if n_reached < n_seeds:
        return f"only {n_reached}/{n_seeds} seeds reached it (their mean {steps_mean:.0f})"
    return f"{steps_mean:.0f} ({n_reached}/{n_seeds} seeds)"


def critical_batch(trials: pd.DataFrame, epochs: pd.DataFrame) -> tuple[float, str]:
    """The critical batch size B_crit ~ B_simple (McCandlish et al. 2018), and where it is from.

    From one set of trials, not a mix of the states different batch sizes reach: the
    baseline's completed trials (B=B0); where they have no finite estimate (at B0 = 32 the
    probe's sub-batch is 4 samples under plain BatchNorm), the completed +LR+GBN trials of
    the smallest batch size that have one (under GBN the sub-batch is whole ghost batches,
    so the estimator's per-sample losses are exact). Only their high-learning-rate phase:
    per trial the epochs whose lr equals its largest lr, up to the first decay (the first
    half of the epochs where the epochs carry no lr). The value is the median of the
    per-epoch B_simple over those epochs and trials; the text names the trials, the epochs
    and, on a fallback, why. NaN with the reason when no source has a finite, positive one.
    """
    done = trials[trials["outcome"] == "completed"]
    base = done["is_baseline"].fillna(False).astype(bool)
    gbn = done[~base & done["ghost_batch_size"].notna() & (done["lr_exponent"] > 0)]
    b0 = ", ".join(str(b) for b in sorted(done.loc[base, "batch_size"].unique())) or "B0"
    sources = [(f"the {int(base.sum())} completed baseline trial(s) (B={b0})", done[base])]
    sources += [(f"the {len(g)} completed +LR+GBN trial(s) at B={b} (ghost "
                 f"{', '.join(str(x) for x in sorted(g['ghost_batch_size'].unique()))})", g)
                for b, g in gbn.groupby("batch_size", sort=True)]
    missing = []
    for name, group in sources:
        value, epochs_text, n = _phase_median(group, epochs)
        if n == 0:
            missing.append(name)
            continue
        where = (f"{name}, over their high-learning-rate phase (before the first lr decay: "
                 f"{epochs_text})")
        if missing:
            where += f"; {missing[0]} have no finite estimate there"
        if not value > 0:
            return math.nan, f"no positive estimate: the median B_simple of {where} is {value:.3g}"
        return value, f"median B_simple of {n} per-epoch estimates from {where}"
    return math.nan, ("not measured: no finite noise-scale estimate in the high-learning-rate "
                      f"phase of {sources[0][0]} or of any +LR+GBN batch size")


def _phase_median(group: pd.DataFrame, epochs: pd.DataFrame) -> tuple[float, str, int]:
    """Median per-epoch noise scale over the high-lr phase of `group`'s trials, the epochs it
    covers (text) and how many estimates it has."""
    if group.empty or "noise_scale" not in epochs.columns:
        return math.nan, "", 0
    phase = [_high_lr_phase(epochs[epochs["trial_id"] == tid]) for tid in group["trial_id"]]
    rows = pd.concat(phase)
    noise = pd.to_numeric(rows["noise_scale"], errors="coerce").astype(float)
    rows = rows[np.isfinite(noise)]
    if rows.empty:
        return math.nan, "", 0
    first, last = int(rows["epoch"].min()), int(rows["epoch"].max())
    text = f"epochs {first}-{last}" if first != last else f"epoch {first}"
    return float(rows["noise_scale"].median()), text, len(rows)


def _high_lr_phase(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.sort_values("epoch")
    lr = (pd.to_numeric(rows["lr"], errors="coerce").astype(float).to_numpy()
          if "lr" in rows.columns else np.full(len(rows), np.nan))
    if not np.isfinite(lr).any():
        return rows[rows["epoch"] <= rows["epoch"].max() / 2]
    top = np.nanmax(lr)
    at_top = np.isclose(lr, top, rtol=1e-6, atol=0.0)
    first_top = int(np.argmax(at_top))
    below = np.flatnonzero(~at_top[first_top:] & np.isfinite(lr[first_top:]))
    end = first_top + int(below[0]) if below.size else len(rows)
    return rows.iloc[first_top:end][at_top[first_top:end]]


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    rank = {r: i for i, r in enumerate(REMEDIES)}
    order = table["remedy"].map(rank)
    return (table.assign(_rank=order).sort_values(["batch_size", "_rank"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def figures(cells, trials, epochs) -> dict:
    """Figure 1 of the paper beside the later instruments, all against batch size."""
    from matplotlib.figure import Figure

    cells = cells.copy()
    cells["remedy"] = cells.apply(remedy_label, axis=1)
    trials = trials.copy()
    trials["remedy"] = trials.apply(remedy_label, axis=1)
    fig = Figure(figsize=(13, 9), layout="constrained")
    (ax_err, ax_steps), (ax_noise, ax_sharp) = fig.subplots(2, 2)
    plots.error_vs_batch(cells, hue="remedy", ax=ax_err)
    done = trials[trials["outcome"] == "completed"]
    _steps_panel(ax_steps, steps_summary(trials))
    panels = (
        (ax_noise, "noise_scale", "gradient noise scale B_simple (median over seeds)", True),
        (ax_sharp, "sharpness", "top Hessian eigenvalue at the end (mean over seeds)", False),
    )
    for ax, column, label, loglog in panels:
        drawn = False
        for remedy, group in done.groupby("remedy"):
            # The noise-scale estimate is a ratio of noisy sums: one seed can be far off.
            by_batch = group.groupby("batch_size")[column]
            mean = (by_batch.median() if column == "noise_scale" else by_batch.mean()).dropna()
            mean = mean[mean > 0] if loglog else mean
            if len(mean):
                ax.plot(mean.index, mean.to_numpy(), marker="o", label=remedy)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log", base=2)
        if loglog:
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    target = trials["target_test_acc"].dropna()
    if len(target):
        ax_steps.set_title(f"steps to {target.iloc[0]:g}% test accuracy (log-log)")
    critical, _ = critical_batch(trials, epochs)
    if math.isfinite(critical):
        for ax in (ax_err, ax_steps, ax_noise, ax_sharp):
            ax.axvline(critical, color="purple", ls=":", lw=1.5)
        ax_noise.text(critical, 0.95, f" critical batch ~ {critical:.0f} (high-lr phase)",
                      color="purple", transform=ax_noise.get_xaxis_transform(), va="top")
    return {"batch_size": fig}


def _steps_panel(ax, steps: pd.DataFrame) -> None:
    """Filled markers: every seed reached the target (their mean); hollow ones, labelled k/n:
    only k of the n seeds did (the mean of those k, not the cell's)."""
    drawn = False
    for i, (remedy, group) in enumerate(steps.groupby("remedy", sort=False)):
        reached = group[group["n_reached"] > 0]
        if reached.empty:
            continue
        color = f"C{i}"
        full = reached[reached["all_reached"]]
        ax.plot(full["batch_size"], full["steps_mean"], marker="o", color=color, label=remedy)
        part = reached[~reached["all_reached"]]
        ax.plot(part["batch_size"], part["steps_mean"], ls="none", marker="o", mfc="none",
                color=color, label=f"{remedy}: not every seed reached it" if len(part) else None)
        for r in part.itertuples():
            ax.annotate(f"{r.n_reached}/{r.n_seeds}", (r.batch_size, r.steps_mean), fontsize=7,
                        color=color, textcoords="offset points", xytext=(4, 4))
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not measured or never reached", ha="center", transform=ax.transAxes)
        return
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("updates to reach the target accuracy")
    ax.legend(fontsize=8)


def report(cells, trials, epochs) -> str:
    """Per cell (batch size, remedy): steps-to-target with the seeds that reached it, noise
    scale and sharpness; then the critical batch size and where it comes from."""
    steps = steps_summary(trials)
    done = trials[trials["outcome"] == "completed"].copy()
    done["remedy"] = done.apply(remedy_label, axis=1)
    by_cell = done.groupby(["batch_size", "remedy"])
    noise = by_cell["noise_scale"].median()
    sharp = by_cell["sharpness"].mean()
    target = trials["target_test_acc"].dropna()
    goal = f"{target.iloc[0]:g}% test accuracy" if len(target) else "the target accuracy"
    lines = [
        f"Instruments per cell. Steps to target: updates until the test accuracy first reached "
        f"{goal}, mean over the seeds that reached it, with how many of the cell's seeds did; "
        "noise scale: median over the completed seeds of each trial's mean B_simple over its "
        "epochs; sharpness: mean over the completed seeds of the last top Hessian eigenvalue. "
        "SB is the small-batch baseline (B=B0).",
        "",
        "| batch | remedy | steps to target | noise scale | sharpness |",
        "|---:|---|---|---:|---:|",
    ]
    for r in steps.itertuples():
        key = (r.batch_size, r.remedy)
        lines.append(f"| {r.batch_size} | {r.remedy} | "
                     f"{steps_text(r.n_seeds, r.n_reached, r.steps_mean)} | "
                     f"{format_number(noise.get(key), '.0f')} | {format_number(sharp.get(key), '.2f')} |")
    partial = steps[(steps["n_reached"] > 0) & ~steps["all_reached"]]
    if len(partial):
        lines += ["", f"{len(partial)} cell(s) where not every seed reached {goal}: "
                      + ", ".join(f"B={r.batch_size} {r.remedy} ({r.n_reached}/{r.n_seeds})"
                                  for r in partial.itertuples())
                      + "; their steps are the mean of the seeds that reached it only."]
    critical, how = critical_batch(trials, epochs)
    lines += ["", "Critical batch size predicted by the noise scale (McCandlish et al. 2018, "
                  "B_crit ~ B_simple): "
                  + (f"about {critical:.0f}, the {how}." if math.isfinite(critical)
                     else f"none ({how}).")]
    return "\n".join(lines)


def comparisons(trials: pd.DataFrame) -> list:
    """At each large batch, each remedy against the row before it, seed by seed: +LR vs LB
    (does sqrt scaling recover part of the gap?) and +LR+GBN vs +LR (does GBN add to it?)."""
    from tunegap.analysis.cells import plain_value
    from tunegap.analysis.decide import CELL_KNOBS
    from tunegap.analysis.effects import Comparison

    rows = trials[~trials["is_baseline"].fillna(False).astype(bool)]
    knobs: dict[tuple[int, str], dict] = {}
    for _, row in rows.iterrows():
        knobs.setdefault((int(row["batch_size"]), remedy_label(row)),
                         {k: plain_value(row[k]) for k in CELL_KNOBS if k in row})
    out = []
    for batch in sorted({b for b, _ in knobs}):
        for a, b in (("+LR", "LB"), ("+LR+GBN", "+LR")):
            if (batch, a) in knobs and (batch, b) in knobs:
                out.append(Comparison(label=f"B={batch}: {a} vs {b}", a=knobs[(batch, a)],
                                      b=knobs[(batch, b)]))
    return out


def study(*, batch_sizes: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048, 4096),
          ghost_batch_size: int | None = None, target_acc: float | None = None,
          noise_scale_every: int = 4, **options: Unpack[StudyOptions]) -> Study:
    """The batch_size study: per batch size the plain large batch, +LR and +LR+GBN (ghost
    `ghost_batch_size`, default the workload's B0); steps to `target_acc` (default the
    workload's), the noise scale every `noise_scale_every` steps; `options` as
    `StudyOptions`."""
    check_optional_count("--ghost-batch-size", ghost_batch_size)
    check_count("--noise-scale-every", noise_scale_every)
    fields = study_fields("batch_size", options, **DEFAULTS)
    try:
        workload = get_workload(fields["workload"])
        b0, base_epochs = workload.regime.base_batch_size, workload.regime.epochs
    except ValueError as err:
        raise StudyError(str(err)) from None
    ghost = ghost_batch_size or b0
    points = []
    for b in batch_sizes:
        points.append({"batch_size": b})
        if b == b0:
            continue  # at B0 the remedies change nothing: the baseline covers it
        points.append({"batch_size": b, "lr_exponent": 0.5})
        points.append({"batch_size": b, "lr_exponent": 0.5, "ghost_batch_size": ghost})
    return Study(
        name="batch_size",
        points=tuple(points),
        question=QUESTION,
        figures=figures,
        report=report,
        comparisons=comparisons,
        instruments={"noise_scale_every": noise_scale_every,
                     "sharpness_every": fields["epochs"] or base_epochs},
        target_test_acc=target_acc or workload.target_test_acc,
        **fields,
    )


def parser():
    own = own_defaults(study)
    p = study_parser("batch_size", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--ghost-batch-size", type=positive_int("--ghost-batch-size"),
                   default=own["ghost_batch_size"],
                   help="ghost size of the +GBN curve (default: the workload's B0)")
    p.add_argument("--target-acc", type=float, default=own["target_acc"],
                   help="test accuracy (percent) for steps-to-target (default: the workload's)")
    p.add_argument("--noise-scale-every", type=positive_int("--noise-scale-every"),
                   default=own["noise_scale_every"],
                   help="measure the gradient noise scale every k-th step (default 4)")
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
