"""Regime length ("train longer"): how many more epochs close the gap at a large batch?

    python -m tunegap.studies.regime_length

At one large batch size (with sqrt LR scaling and Ghost BatchNorm, as in the paper's last
column), the regime multiplier rho scales the epochs and the LR-decay epochs, from 1 up to
"matched" (= ceil(B/B0): as many updates as the small batch). Curves are plotted against the
number of updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Unpack

from tunegap.analysis import plots
from tunegap.cli import args_builder, study_command, study_parser
from tunegap.cli_values import multiplier_list, positive_int
from tunegap.regime import MATCHED
from tunegap.study import Study
from tunegap.study_checks import AUTO, check_optional_count
from tunegap.study_options import StudyOptions, own_defaults, study_fields
from tunegap.workloads import get_workload

QUESTION = (
    "At a fixed large batch (with sqrt LR scaling and GBN), how long must training be, as a "
    "multiple of the base regime, before the gap closes?"
)


# The study's own defaults of the common options, for its function and its command alike.
DEFAULTS = {"seeds": AUTO}


def figures(cells, trials, epochs) -> dict:
    grid = cells[~cells["is_baseline"]]
    return {
        "gap_map": plots.gap_heatmap(grid, rows="batch_size", cols="regime_multiplier",
                                      title="gap to small batch (points): regime multiplier"),
        "test_acc_vs_updates": plots.curves(epochs, trials, x="updates", y="test_acc",
                                             hue="regime_multiplier", logx=True),
    }


def study(*, batch_size: int | None = None,
          multipliers: Sequence[float | Literal["matched"]] = (1, 2, 4, 8, 16, MATCHED),
          ghost_batch_size: int | Literal["b0"] | None = "b0", lr_exponent: float = 0.5,
          **options: Unpack[StudyOptions]) -> Study:
    """The regime_length study: the large `batch_size` (default the workload's) trained
    `multipliers` times the base regime ("matched": as many updates as the small batch),
    with ghost `ghost_batch_size` ("b0": the workload's B0, None: BatchNorm) at
    `lr_exponent`; `options` as `StudyOptions`."""
    check_optional_count("--batch-size", batch_size)
    fields = study_fields("regime_length", options, **DEFAULTS)
    try:
        workload = get_workload(fields["workload"])
        batch = batch_size or workload.large_batch_size
        ghost = workload.regime.base_batch_size if ghost_batch_size == "b0" else ghost_batch_size
    except ValueError:
        batch, ghost = batch_size or 0, None  # Study reports the unknown workload
    return Study(
        name="regime_length",
        grid={
            "batch_size": (batch,),
            "ghost_batch_size": (ghost,),
            "lr_exponent": (lr_exponent,),
            "regime_multiplier": tuple(multipliers),
        },
        question=QUESTION,
        figures=figures,
        **fields,
    )


def parser():
    own = own_defaults(study)
    p = study_parser("regime_length", __doc__, defaults=DEFAULTS)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=own["batch_size"],
                   help="the large batch (default: the workload's large batch size)")
    p.add_argument("--multipliers", type=multiplier_list, default=own["multipliers"])
    p.add_argument("--ghost-batch-size", default=own["ghost_batch_size"],
                   help="ghost size, 'none' for BatchNorm (default: the workload's B0)")
    p.add_argument("--lr-exponent", type=float, default=own["lr_exponent"])
    return p


main = study_command(parser, study)
build = args_builder(study)


if __name__ == "__main__":
    main()
