"""Ghost batch size: at which ghost sizes does Ghost BatchNorm close the gap, per batch size?

    python -m tunegap.studies.ghost_size

Batch sizes x ghost batch sizes (plain BatchNorm included), with the paper's sqrt learning-rate
scaling, at the workload's base epoch budget; the small-batch baseline is added automatically.
The map is the gap (points of test accuracy below the baseline) per (batch, ghost) cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from tunegap.analysis import plots
from tunegap.analysis.effects import comparisons_within
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import ghost_list, int_list
from tunegap.study import Study
from tunegap.study_checks import AUTO
from tunegap.study_options import StudyOptions, own_defaults, study_fields

QUESTION = (
    "Which ghost batch sizes close the generalization gap at each batch size, with sqrt "
    "learning-rate scaling and the base number of epochs?"
)


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": AUTO}


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


def study(*, batch_sizes: Sequence[int] = (128, 512, 2048),
          ghost_sizes: Sequence[int | None] = (None, 16, 32, 128, 512),
          lr_exponent: float = 0.5, **options: Unpack[StudyOptions]) -> Study:
    """The ghost_size study: `batch_sizes` x `ghost_sizes` (None: plain BatchNorm) at
    `lr_exponent`, beside the small-batch baseline; `options` as `StudyOptions`.

    >>> configs = study(batch_sizes=(512,), ghost_sizes=(None, 32), seeds=2).trial_configs()
    >>> [(c.batch_size, c.ghost_batch_size, c.seed) for c in configs][:3]
    [(32, None, 0), (512, None, 0), (512, 32, 0)]
    """
    return Study(
        name="ghost_size",
        grid={"batch_size": tuple(batch_sizes), "ghost_batch_size": tuple(ghost_sizes),
              "lr_exponent": (lr_exponent,)},
        question=QUESTION,
        figures=figures,
        comparisons=comparisons,
        **study_fields("ghost_size", options, **DEFAULTS),
    )


def parser():
    own = own_defaults(study)
    p = study_parser("ghost_size", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"), default=own["batch_sizes"])
    p.add_argument("--ghost-sizes", type=ghost_list, default=own["ghost_sizes"])
    p.add_argument("--lr-exponent", type=float, default=own["lr_exponent"])
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
