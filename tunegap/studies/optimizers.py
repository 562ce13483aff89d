"""Steps to a target accuracy against batch size per optimizer (Shallue 2018, Zhang 2019).

    python -m tunegap.studies.optimizers

Shallue et al. ("Measuring the effects of data parallelism on neural network training",
arXiv 1811.03600) measure the updates needed to reach a target against the batch size and
find a perfect-scaling region (doubling B halves the steps) up to a knee, then diminishing
returns; Zhang et al. ("Which algorithmic choices matter at which batch sizes?", arXiv
1907.04164) show that momentum and Adam move the knee to larger batches than plain SGD.

Every trial has the same budget of weight updates (`--max-updates`, default
1000) at a constant learning rate (`--schedule`, default constant here, so the first
crossing of the target does not depend on the budget; `--schedule step` scales the
workload's decay points to the budget) and records the first update at which its test
accuracy reaches `--target-acc` (default 85%, which the baseline reaches within the
budget on MNIST-1D). Each trial is judged at its best epoch on a validation split held out
of the training set (`--accuracy best`, 10%, the same samples for every trial), not at
its last update: at a constant lr the last iterate is wherever the noise left it (plain
SGD at B=512 fell from over 96% to 11%, 22% and 57% on its last epochs in 3 of 12 seeds,
and the four plain-SGD cells stayed undecided at 12 seeds a side), while its best
validated epoch is what the run reached, chosen without looking at the test set
(`--accuracy final` judges the last epoch). A fixed budget of updates is more epochs at a
larger batch (4 at B=32, 63 at B=512 on MNIST-1D), so a large batch has more epochs to stop
at: that is early stopping's own advantage, part of what the verdicts measure. Four
optimizers at each batch size, all with lr = base_lr * (B/B0)^`--lr-exponent` (default 0.5,
the paper's rule):

- `SGD`: momentum 0, base lr = the workload's / (1 - its momentum), the same effective
  learning rate as heavy-ball momentum (Shallue et al. compare optimizers at their
  effective lr, lr / (1 - momentum));
- `SGD+momentum`: heavy ball at 0.9 with the workload's base lr (at B0 this is the baseline);
- `Nesterov`: Nesterov momentum 0.9, the workload's base lr;
- `Adam`: beta1 0.9, base lr `--adam-lr` (default 1e-3, Kingma & Ba's).

No lr is tuned per batch size, unlike Shallue et al.: the fitted knees are those of these
rules. Per optimizer the perfect-scaling and diminishing-returns regions are fitted
(`tunegap.analysis.scaling.fit_scaling_regions`) to the mean steps of the batch sizes where
every seed reached the target; `scaling_fits.csv` has the fits. Each cell's judged accuracy is
judged against the small-batch baseline (B0, SGD+momentum, same budget) at the margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

import numpy as np
import pandas as pd

from tunegap.analysis.decide import judged_accuracy
from tunegap.analysis.formatting import format_number
from tunegap.analysis.scaling import fit_scaling_regions, fits_table
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import int_list, number
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO
from tunegap.study_options import StudyOptions, check_number, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "How do the steps to a target accuracy fall with the batch size for SGD, momentum, "
    "Nesterov and Adam, and where does perfect scaling end for each?"
)
OPTIMIZER_LABELS = ("SGD", "SGD+momentum", "Nesterov", "Adam")
# Tables, draws and figures list the optimizers in that order.
OPTIMIZER_RANK = {label: i for i, label in enumerate(OPTIMIZER_LABELS)}
DEFAULT_MAX_UPDATES = 1000
DEFAULT_TARGET = 85.0
# A constant lr makes the first crossing of the target independent of the budget (a step
# schedule scaled to the budget would decay earlier under a smaller one).
DEFAULT_SCHEDULE = "constant"
# ...and so the last epoch is a noisy draw: each trial is judged at its validated best epoch.
DEFAULT_ACCURACY = "best"
MOMENTUM = 0.9
# The knobs the study sets in each cell: the common flags may not move them.
OWN_KNOBS = ("optimizer", "momentum")
# The study's own defaults of common options (its function and its command alike).
DEFAULTS = {"seeds": AUTO, "max_updates": DEFAULT_MAX_UPDATES, "schedule": DEFAULT_SCHEDULE,
            "accuracy": DEFAULT_ACCURACY}


def optimizer_label(row) -> str:
    """SGD, SGD+momentum, Nesterov or Adam from a row's resolved optimizer and momentum."""
    name = str(row["optimizer"])
    if name == "sgd":
        return "SGD+momentum" if float(row["momentum"]) > 0 else "SGD"
    return {"nesterov": "Nesterov", "adam": "Adam"}.get(name, name)


def steps_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, batch size): how many seeds reached the target and their steps.

    Every trial counts in `n_seeds` whatever its outcome (one that diverged or errored never
    reached it). `steps` is the geometric mean over the seeds (the fit is in log space) and
    is NaN unless every seed reached the target: a mean over the seeds that did would
    flatter the cell.
    """
    trials = trials.assign(label=trials.apply(optimizer_label, axis=1))
    rows = []
    for (label, batch), group in trials.groupby(["label", "batch_size"], sort=True):
        steps = pd.to_numeric(group["steps_to_target"], errors="coerce").astype(float)
        # Sorted, so the mean's rounding does not depend on the order the trials finished in.
        reached = np.sort(steps[np.isfinite(steps) & (steps > 0)].to_numpy())
        every = len(reached) == len(group)
        rows.append({
            "optimizer": label, "batch_size": int(batch), "n_seeds": len(group),
            "n_reached": len(reached),
            "steps": float(np.exp(np.log(reached).mean())) if every and len(reached) else math.nan,
        })
    table = pd.DataFrame(rows, columns=["optimizer", "batch_size", "n_seeds", "n_reached", "steps"])
    order = table["optimizer"].map(OPTIMIZER_RANK)
    return (table.assign(_o=order).sort_values(["_o", "batch_size"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


def scaling_fits(trials: pd.DataFrame) -> dict:
    """`fit_scaling_regions` per optimizer over `steps_table`'s steps."""
    steps = steps_table(trials)
    return {label: fit_scaling_regions(group["batch_size"], group["steps"])
            for label, group in steps.groupby("optimizer", sort=False)}


# Resamples of the seeds per (optimizer, batch size) behind each knee's interval.
BOOTSTRAP_RESAMPLES = 200


# The last bootstrap, kept: the study's tables and report both ask it of the same trials.
_LAST_BOOTSTRAP: dict[tuple, dict[str, dict[str, float]]] = {}


def knee_bootstrap(trials: pd.DataFrame, *, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Per optimizer, how much its fitted knee moves when the seeds are resampled: the seeds
    of every batch size drawn again with replacement, `steps_table` and the fit redone.
    Returns knee_ci_low/high (the 5% and 95% quantiles of the knee batch size over the
    resamples that fit), knee_inside (the share that put the knee inside the range) and
    slope_below_knee (the observed log-log slope up to the knee, a free line through the
    points the fit calls perfect scaling, where two batch sizes lie there)."""
    cols = [c for c in ("trial_id", "optimizer", "momentum", "batch_size", "steps_to_target")
            if c in trials.columns]
    key = (resamples, seed, len(trials),
           int(pd.util.hash_pandas_object(trials[cols], index=False).sum()))
    if key not in _LAST_BOOTSTRAP:
        _LAST_BOOTSTRAP.clear()
        _LAST_BOOTSTRAP[key] = _knee_bootstrap(trials, resamples=resamples, seed=seed)
    return _LAST_BOOTSTRAP[key]


def _knee_bootstrap(trials: pd.DataFrame, *, resamples: int,
                    seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    labelled = trials.assign(label=trials.apply(optimizer_label, axis=1))
    # The draws follow the rows: put them in an order that does not depend on when each
    # trial finished, so the same trials always give the same intervals.
    labelled = labelled.assign(
        _rank=labelled["label"].map(OPTIMIZER_RANK).fillna(len(OPTIMIZER_RANK)))
    labelled = labelled.sort_values(
        ["_rank", "label", "batch_size", *(["seed"] if "seed" in labelled else [])],
        kind="stable")
    fits = scaling_fits(trials)
    out = {}
    for label, group in labelled.groupby("label", sort=False):
        knees, inside = [], 0
        # Per batch size, the seeds' steps (NaN where a seed never reached the target): a
        # resample's cell is their geometric mean where every drawn seed reached it, as in
        # `steps_table`.
        batches, steps_by_batch = [], []
        for batch, cell in group.groupby("batch_size", sort=True):
            steps = pd.to_numeric(cell["steps_to_target"], errors="coerce").to_numpy(float).copy()
            steps[~(np.isfinite(steps) & (steps > 0))] = np.nan
            batches.append(float(batch))
            steps_by_batch.append(steps)
        for _ in range(resamples):
            means = []
            for steps in steps_by_batch:
                drawn = steps[rng.integers(0, len(steps), len(steps))]
                means.append(float(np.exp(np.log(drawn).mean())) if np.isfinite(drawn).all()
                             else math.nan)
            fit = fit_scaling_regions(batches, means)
            if fit.fitted:
                knees.append(fit.knee_batch_size)
                inside += fit.knee == "inside"
        fit = fits.get(label)
        slope = math.nan
        if fit is not None and fit.fitted:
            b, t = np.array(fit.batch_sizes), np.array(fit.steps)
            below = b <= fit.knee_batch_size * (1 + 1e-9)
            if np.unique(b[below]).size >= 2:
                slope = float(np.polyfit(np.log(b[below]), np.log(t[below]), 1)[0])
        out[label] = {
            "knee_ci_low": float(np.quantile(knees, 0.05)) if knees else math.nan,
            "knee_ci_high": float(np.quantile(knees, 0.95)) if knees else math.nan,
            "knee_inside": inside / resamples,
            "slope_below_knee": slope,
        }
    return out


def tables(cells, trials, epochs) -> dict[str, pd.DataFrame]:
    """scaling_fits.csv: one row per optimizer (the knee with its bootstrap interval over
    seeds, the observed slope below it, the slope beyond it, residuals)."""
    spread = knee_bootstrap(trials)
    rows = [{**row, **spread.get(row["optimizer"], {})}
            for row in fits_table(scaling_fits(trials))]
    return {"scaling_fits.csv": pd.DataFrame(rows)}


def figures(cells, trials, epochs) -> dict:
    """Steps to target against batch size, log-log, one colour per optimizer, fits dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    steps = steps_table(trials)
    fits = scaling_fits(trials)
    drawn = False
    for i, (label, group) in enumerate(steps.groupby("optimizer", sort=False)):
        color = f"C{i}"
        ok = group[group["steps"].notna()]
        if ok.empty:
            continue
        drawn = True
        ax.plot(ok["batch_size"], ok["steps"], "o", color=color, label=label)
        fit = fits[label]
        if fit.fitted:
            b = np.geomspace(group["batch_size"].min(), group["batch_size"].max(), 100)
            ax.plot(b, fit.predict(b), "--", color=color, lw=1.2,
                    label=f"{label} fit: knee {fit.knee} {fit.knee_batch_size:.0f}")
            if fit.knee == "inside":
                ax.plot([fit.knee_batch_size], [fit.steps_at_knee], "x", color=color, ms=9)
    target = trials["target_test_acc"].dropna()
    goal = f"{target.iloc[0]:g}%" if len(target) else "the target"
    if not drawn:
        ax.text(0.5, 0.5, f"no batch size where every seed reached {goal}", ha="center",
                transform=ax.transAxes)
        return {"steps_to_target": fig}
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"updates to reach {goal} test accuracy (geometric mean over seeds)")
    ax.set_title("steps to target vs batch size; dashed: perfect scaling then diminishing returns")
    ax.legend(fontsize=7)
    return {"steps_to_target": fig}


def report(cells, trials, epochs) -> str:
    """The steps per cell, the fit per optimizer and the verdicts, all from the tables."""
    steps = steps_table(trials)
    target = trials["target_test_acc"].dropna()
    goal = f"{target.iloc[0]:g}% test accuracy" if len(target) else "the target accuracy"
    lines = [
        f"Updates to reach {goal} (geometric mean over the seeds; only where every seed of "
        "the cell reached it), per optimizer and batch size.",
        "",
        "| optimizer | batch | reached | steps to target |",
        "|---|---:|---:|---:|",
    ]
    for r in steps.itertuples():
        lines.append(f"| {r.optimizer} | {r.batch_size} | {r.n_reached}/{r.n_seeds} | "
                     f"{format_number(r.steps, '.0f')} |")
    lines += ["", "Fits (perfect scaling, slope -1, up to a knee; a fitted slope in [-1, 0] "
                  "beyond it; `tunegap.analysis.scaling`):", ""]
    spread = knee_bootstrap(trials)
    for label, fit in scaling_fits(trials).items():
        line = f"- {label}: {fit.summary()}"
        more = spread.get(label)
        if fit.fitted and more and math.isfinite(more["knee_ci_low"]):
            line += (f"; resampling the seeds ({BOOTSTRAP_RESAMPLES} times) moves the knee "
                     f"across {more['knee_ci_low']:.0f} to {more['knee_ci_high']:.0f} (90%), "
                     f"inside the range in {100 * more['knee_inside']:.0f}% of resamples")
            if math.isfinite(more["slope_below_knee"]):
                line += (f"; the observed slope up to the knee is "
                         f"{more['slope_below_knee']:.2f} (perfect scaling is -1, imposed by "
                         "the model)")
            if more["knee_inside"] < 0.95:
                line += ": the knee is not determined by these seeds, so none is claimed"
        lines.append(line + ".")
    held_out = (float(trials["validation_fraction"].max())
                if "validation_fraction" in trials else 0.0)
    lines += ["", *verdict_lines(cells, held_out)]
    return "\n".join(lines)


def verdict_lines(cells: pd.DataFrame, validation_fraction: float = 0.0) -> list[str]:
    """Per optimizer: the verdicts of its cells against the baseline at the margin, naming
    the accuracy judged (`validation_fraction`: the share the trials held out)."""
    if cells is None or cells.empty:
        return []
    margin = float(cells["margin"].iloc[0])
    judged = judged_accuracy(str(cells["accuracy"].iloc[0]), validation_fraction)
    lines = [f"Verdicts on the {judged}, against the baseline at the margin of {margin:g} "
             "points:", ""]
    grid = cells[~cells["is_baseline"]].assign(label=lambda c: c.apply(optimizer_label, axis=1))
    for label in OPTIMIZER_LABELS:
        group = grid[grid["label"] == label].sort_values("batch_size")
        if group.empty:
            continue
        lines.append(f"- {label}: " + ", ".join(
            f"B={r.batch_size} {r.verdict} ({format_number(r.gap, '+.2f')})"
            for r in group.itertuples()) + ".")
    return lines


def comparisons(trials: pd.DataFrame) -> list:
    """At each batch size, each optimizer against SGD with heavy-ball momentum (the paper's
    rule), seed by seed on the judged accuracy."""
    from tunegap.analysis.effects import comparisons_within

    return comparisons_within(trials, group_by=["batch_size"], vary=["optimizer", "momentum"],
                              reference=["sgd", MOMENTUM])


def study(*, batch_sizes: Sequence[int] = (32, 64, 128, 256, 512),
          target_acc: float = DEFAULT_TARGET, lr_exponent: float = 0.5, adam_lr: float = 1e-3,
          **options: Unpack[StudyOptions]) -> Study:
    """The optimizers study: plain SGD, SGD with heavy-ball momentum, Nesterov and Adam
    (base lr `adam_lr`) at each of `batch_sizes`, lr scaled by (B/B0)^`lr_exponent`, every
    trial at one budget of `max_updates` updates, judged at its best epoch on a validation
    split by default; updates to reach `target_acc`; `options` as `StudyOptions`."""
    lr_exponent = check_number("--lr-exponent", lr_exponent, low=0, high=1)
    adam_lr = check_number("--adam-lr", adam_lr, low=0, low_open=True)
    fields = study_fields("optimizers", options, **DEFAULTS)
    taken = [k for k in OWN_KNOBS if k in fields["knobs"]]
    if taken:
        raise StudyError(f"--{taken[0]} is not allowed here: the optimizers study sets each "
                         "cell's optimizer and momentum itself")
    if fields["knobs"].get("max_updates") is None:
        raise StudyError("--max-updates is needed: the study compares optimizers at one "
                         "budget of updates")
    try:
        regime = get_workload(fields["workload"]).regime
    except ValueError as err:
        raise StudyError(str(err)) from None
    # The workload's momentum, where it is 0.9, is left implicit so the heavy-ball cell at B0
    # is the baseline itself rather than a second, identical trial.
    heavy = None if regime.momentum == MOMENTUM else MOMENTUM
    sgd_lr = round(regime.base_lr / (1.0 - MOMENTUM), 12)
    points = []
    for b in batch_sizes:
        scaled = {"batch_size": b, "lr_exponent": lr_exponent}
        points += [
            {**scaled, "optimizer": "sgd", "momentum": 0.0, "base_lr": sgd_lr},
            {**scaled, "optimizer": "sgd", "momentum": heavy},
            {**scaled, "optimizer": "nesterov", "momentum": MOMENTUM},
            {**scaled, "optimizer": "adam", "momentum": MOMENTUM, "base_lr": adam_lr},
        ]
    return Study(
        name="optimizers",
        points=tuple(points),
        question=QUESTION,
        figures=figures,
        report=report,
        tables=tables,
        comparisons=comparisons,
        target_test_acc=target_acc,
        **fields,
    )


def parser():
    own = own_defaults(study)
    p = study_parser("optimizers", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--target-acc", type=float, default=own["target_acc"],
                   help=f"test accuracy (percent) for steps-to-target (default {DEFAULT_TARGET:g})")
    p.add_argument("--lr-exponent", type=number("--lr-exponent"), default=own["lr_exponent"],
                   help="lr = base_lr * (B/B0)^exponent for every optimizer, 0 to 1 (default 0.5)")
    p.add_argument("--adam-lr", type=number("--adam-lr"), default=own["adam_lr"],
                   help="Adam's base lr at B0, > 0 (default 1e-3)")
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
