"""Ghost batch size: at which ghost sizes does Ghost BatchNorm close the gap, per batch size?

    python -m tunegap.studies.ghost_size

Batch sizes x ghost batch sizes (plain BatchNorm included), with the paper's sqrt learning-rate
scaling, at the workload's base epoch budget; the small-batch baseline is added automatically.
The map is the gap (points of test accuracy below the baseline) per (batch, ghost) cell.
"""

from __future__ import annotations

from tunegap.analysis import plots
from tunegap.analysis.effects import comparisons_within
from tunegap.cli import common_study_fields, study_builder, study_command, study_parser
from tunegap.cli_values import ghost_list, int_list
from tunegap.study import Study

QUESTION = (
    "Which ghost batch sizes close the generalization gap at each batch size, with sqrt "
    "learning-rate scaling and the base number of epochs?"
)


def figures(cells, trials, epochs) -> dict:
    return {
        "gap_map": plots.gap_heatmap(
            cells[~cells["is_baseline"]], rows="batch_size", cols="ghost_batch_size",
            title="gap to small batch (points): batch size x ghost batch size",
        )
    }


def comparisons(trials):
    """At each batch size, each ghost size against plain BatchNorm, seed by seed."""
    return comparisons_within(trials, group_by=["batch_size"], vary=["ghost_batch_size"],
                              reference=[None])


def parser():
    p = study_parser("ghost_size", __doc__, seeds="auto")
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=(128, 512, 2048))
    p.add_argument("--ghost-sizes", type=ghost_list, default=(None, 16, 32, 128, 512))
    p.add_argument("--lr-exponent", type=float, default=0.5)
    return p


def build(args) -> Study:
    return Study(
        name="ghost_size",
        grid={
            "batch_size": args.batch_sizes,
            "ghost_batch_size": args.ghost_sizes,
            "lr_exponent": (args.lr_exponent,),
        },
        question=QUESTION,
        figures=figures,
        comparisons=comparisons,
        **common_study_fields(args),
    )


main = study_command(parser, build)
study = study_builder(parser, build)


if __name__ == "__main__":
    main()
