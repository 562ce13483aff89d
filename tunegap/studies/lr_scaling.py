"""Learning-rate scaling: which exponent alpha in lr = base_lr * (B/B0)^alpha works best?

    python -m tunegap.studies.lr_scaling
    python -m tunegap.studies.lr_scaling --search optuna --num-samples 40

Grid: alpha in {0, 0.25, 0.5, 0.75, 1} x batch sizes (0.5 is the paper's sqrt rule, 1 the linear
rule of Goyal et al.). With `--search optuna`, Optuna searches alpha (continuous, 0..1) and the
base learning rate (log scale) jointly with the batch size (categorical).
"""

from __future__ import annotations

from tunegap.analysis import plots
from tunegap.analysis.effects import comparisons_within
from tunegap.cli import common_study_fields, study_builder, study_command, study_parser
from tunegap.cli_values import float_list, int_list
from tunegap.study import Study, StudyError
from tunegap.workloads import get_workload

QUESTION = (
    "Which learning-rate scaling exponent (0 none, 0.5 sqrt, 1 linear) gives the best test "
    "accuracy at each batch size, for the base number of epochs?"
)


def figures(cells, trials, epochs) -> dict:
    grid = cells[~cells["is_baseline"]]
    return {
        "gap_map": plots.gap_heatmap(
            grid, rows="batch_size", cols="lr_exponent",
            title="gap to small batch (points): batch size x LR exponent",
        )
    }


def optuna_figures(cells, trials, epochs) -> dict:
    """Each Optuna trial as a point: test accuracy against alpha, one colour per batch size."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    done = trials[trials["outcome"] == "completed"]
    for batch, group in done.groupby("batch_size"):
        ax.scatter(group["lr_exponent"], group["test_acc"], label=f"B={batch}")
    ax.set_xlabel("LR exponent alpha (lr = base_lr * (B/B0)^alpha)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Optuna trials: test accuracy vs LR exponent")
    ax.legend()
    return {"optuna_trials": fig}


def parser():
    p = study_parser("lr_scaling", __doc__, seeds="auto", searches=("grid", "optuna"))
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=(128, 512, 2048))
    p.add_argument("--exponents", type=float_list("--exponents"),
                   default=(0.0, 0.25, 0.5, 0.75, 1.0))
    return p


def comparisons(trials):
    """At each batch size, every pair of exponents, seed by seed: which one is better."""
    return comparisons_within(trials, group_by=["batch_size"], vary=["lr_exponent"])


def build(args) -> Study:
    fields = common_study_fields(args)
    if args.search == "optuna":
        # Optuna draws one configuration per trial: seeds are a number there, one by default.
        if fields["seeds"] == "auto":
            fields["seeds"] = 1
        try:
            base_lr = get_workload(args.workload).regime.base_lr
        except ValueError as err:
            raise StudyError(str(err)) from None
        return Study(
            name="lr_scaling",
            grid={"batch_size": args.batch_sizes},
            optuna_space={"lr_exponent": (0.0, 1.0), "base_lr": (base_lr / 10, base_lr * 10)},
            question=QUESTION,
            figures=optuna_figures,
            **fields,
        )
    return Study(
        name="lr_scaling",
        grid={"batch_size": args.batch_sizes, "lr_exponent": args.exponents},
        question=QUESTION,
        figures=figures,
        comparisons=comparisons,
        **fields,
    )


main = study_command(parser, build)
study = study_builder(parser, build)


if __name__ == "__main__":
    main()
