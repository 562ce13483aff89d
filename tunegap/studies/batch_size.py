"""Batch size (the paper's Figure 1): test error against batch size at a fixed epoch budget.

Beside it, the instruments of later work against batch size: updates to reach a target
accuracy (Shallue et al. 2018, log-log), the gradient noise scale with the critical batch
size it predicts (McCandlish et al. 2018), and sharpness (Keskar et al. 2017).

    python -m tunegap.studies.batch_size

For each batch size: plain large batch, +LR (sqrt scaling) and +LR+GBN (ghost = B0), all with
the workload's base number of epochs, so larger batches make fewer updates.
"""

from __future__ import annotations

import pandas as pd

from tunegap.analysis import plots
from tunegap.cli import common_study_fields, int_list, positive_int, study_command, study_parser
from tunegap.study import Study, StudyError
from tunegap.workloads import get_workload

QUESTION = (
    "How does test error grow with the batch size at a fixed number of epochs, and how much "
    "of it do sqrt LR scaling and Ghost BatchNorm recover?"
)


def remedy_label(row) -> str:
    if pd.notna(row["ghost_batch_size"]):
        return "+LR+GBN"
    return "+LR" if row["lr_exponent"] > 0 else "LB"


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
    panels = (
        (ax_steps, "steps_to_target", "updates to reach the target accuracy", True),
        (ax_noise, "noise_scale", "gradient noise scale B_simple (median over seeds)", True),
        (ax_sharp, "sharpness", "top Hessian eigenvalue at the end", False),
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
            ax.text(0.5, 0.5, "not measured or never reached", ha="center",
                    transform=ax.transAxes)
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
    # McCandlish et al.: the critical batch size is about the noise scale B_simple.
    critical = done["noise_scale"].median()
    if pd.notna(critical) and critical > 0:
        for ax in (ax_err, ax_steps, ax_noise, ax_sharp):
            ax.axvline(critical, color="purple", ls=":", lw=1.5)
        ax_noise.text(critical, 0.95, f" critical batch ~ {critical:.0f}", color="purple",
                      transform=ax_noise.get_xaxis_transform(), va="top")
    return {"batch_size": fig}


def report(cells, trials, epochs) -> str:
    """Steps-to-target, noise scale and sharpness per batch size and remedy."""
    trials = trials[trials["outcome"] == "completed"].copy()
    trials["remedy"] = trials.apply(remedy_label, axis=1)
    columns = ["steps_to_target", "noise_scale", "sharpness"]
    table = trials.groupby(["batch_size", "remedy"])[columns].mean()
    target = trials["target_test_acc"].dropna()
    lines = [
        f"Instruments (mean over seeds; steps to {target.iloc[0]:g}% test accuracy):"
        if len(target) else "Instruments (mean over seeds):",
        "",
        "| batch | remedy | steps to target | noise scale | sharpness |",
        "|---:|---|---:|---:|---:|",
    ]
    for (batch, remedy), row in table.iterrows():
        cells_text = [f"{row[c]:.0f}" if c != "sharpness" else f"{row[c]:.2f}" for c in columns]
        cells_text = [t if t != "nan" else "—" for t in cells_text]
        lines.append(f"| {batch} | {remedy} | " + " | ".join(cells_text) + " |")
    critical = trials["noise_scale"].median()
    if pd.notna(critical):
        lines += ["", f"Critical batch size predicted by the noise scale (median B_simple over "
                      f"trials, McCandlish et al. 2018): about {critical:.0f}."]
    return "\n".join(lines)


def parser():
    p = study_parser("batch_size", __doc__, seeds=2)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"),
                   default=(32, 64, 128, 256, 512, 1024, 2048, 4096))
    p.add_argument("--ghost-batch-size", type=positive_int("--ghost-batch-size"), default=None,
                   help="ghost size of the +GBN curve (default: the workload's B0)")
    p.add_argument("--target-acc", type=float, default=None,
                   help="test accuracy (percent) for steps-to-target (default: the workload's)")
    p.add_argument("--noise-scale-every", type=positive_int("--noise-scale-every"), default=4,
                   help="measure the gradient noise scale every k-th step (default 4)")
    return p


def build(args) -> Study:
    try:
        workload = get_workload(args.workload)
        b0, base_epochs = workload.regime.base_batch_size, workload.regime.epochs
    except ValueError as err:
        raise StudyError(str(err)) from None
    ghost = args.ghost_batch_size or b0
    points = []
    for b in args.batch_sizes:
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
        instruments={"noise_scale_every": args.noise_scale_every,
                     "sharpness_every": args.epochs or base_epochs},
        target_test_acc=args.target_acc or workload.target_test_acc,
        **common_study_fields(args),
    )


main = study_command(parser, build)


if __name__ == "__main__":
    main()
