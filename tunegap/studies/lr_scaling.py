"""Learning-rate scaling: which exponent alpha in lr = base_lr * (B/B0)^alpha works best?

    python -m tunegap.studies.lr_scaling
    python -m tunegap.studies.lr_scaling --search optuna --num-samples 40

Grid: alpha in {0, 0.25, 0.5, 0.75, 1} x batch sizes (0.5 is the paper's sqrt rule, 1 the linear
rule of Goyal et al.). With `--search optuna`, Optuna searches alpha (continuous, 0..1) and the
base learning rate (log scale) jointly with the batch size (categorical).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from tunegap.analysis import plots
from tunegap.analysis.effects import comparisons_within
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import float_list, int_list
from tunegap.study import Study, StudyError
from tunegap.study_checks import AUTO
from tunegap.study_options import StudyOptions, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "Which learning-rate scaling exponent (0 none, 0.5 sqrt, 1 linear) gives the best test "
    "accuracy at each batch size, for the base number of epochs?"
)


# The study's own defaults of the common options, and the searches it runs (the first
# the default), for its function and its command alike.
DEFAULTS = {"seeds": AUTO}
SEARCHES = ("grid", "optuna")


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


def comparisons(trials):
    """At each batch size, every pair of exponents, seed by seed: which one is better."""
    return comparisons_within(trials, group_by=["batch_size"], vary=["lr_exponent"])


def study(*, batch_sizes: Sequence[int] = (128, 512, 2048),
          exponents: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
          **options: Unpack[StudyOptions]) -> Study:
    """The lr_scaling study: `batch_sizes` x lr `exponents` on a grid, or with
    `search="optuna"` the exponent and base lr drawn by Optuna (one seed a trial by default);
    `options` as `StudyOptions`."""
    fields = study_fields("lr_scaling", options, searches=SEARCHES, **DEFAULTS)
    if fields["search"] == "optuna":
        # Optuna draws one configuration per trial: seeds are a number there, one by default.
        if fields["seeds"] == AUTO:
            fields["seeds"] = 1
        try:
            base_lr = get_workload(fields["workload"]).regime.base_lr
        except ValueError as err:
            raise StudyError(str(err)) from None
        return Study(
            name="lr_scaling",
            grid={"batch_size": tuple(batch_sizes)},
            optuna_space={"lr_exponent": (0.0, 1.0), "base_lr": (base_lr / 10, base_lr * 10)},
            question=QUESTION,
            figures=optuna_figures,
            **fields,
        )
    return Study(
        name="lr_scaling",
        grid={"batch_size": tuple(batch_sizes), "lr_exponent": tuple(exponents)},
        question=QUESTION,
        figures=figures,
        comparisons=comparisons,
        **fields,
    )


def parser():
    own = own_defaults(study)
    p = study_parser("lr_scaling", __doc__, defaults=DEFAULTS, searches=SEARCHES)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--exponents", type=float_list("--exponents"), default=own["exponents"])
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
