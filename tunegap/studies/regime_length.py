"""Regime length ("train longer"): how many more epochs close the gap at a large batch?

    python -m tunegap.studies.regime_length

At one large batch size (with sqrt LR scaling and Ghost BatchNorm, as in the paper's last
column), the regime multiplier rho scales the epochs and the LR-decay epochs, from 1 up to
"matched" (= ceil(B/B0): as many updates as the small batch). Curves are plotted against the
number of updates.
"""

from __future__ import annotations

from tunegap.analysis import plots
from tunegap.cli import common_study_fields, study_builder, study_command, study_parser
from tunegap.cli_values import multiplier_list, positive_int
from tunegap.study import Study
from tunegap.workloads import get_workload

QUESTION = (
    "At a fixed large batch (with sqrt LR scaling and GBN), how long must training be, as a "
    "multiple of the base regime, before the gap closes?"
)


def figures(cells, trials, epochs) -> dict:
    grid = cells[~cells["is_baseline"]]
    return {
        "gap_map": plots.gap_heatmap(grid, rows="batch_size", cols="regime_multiplier",
                                      title="gap to small batch (points): regime multiplier"),
        "test_acc_vs_updates": plots.curves(epochs, trials, x="updates", y="test_acc",
                                             hue="regime_multiplier", logx=True),
    }


def parser():
    p = study_parser("regime_length", __doc__, seeds="auto")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="the large batch (default: the workload's large batch size)")
    p.add_argument("--multipliers", type=multiplier_list, default=(1, 2, 4, 8, 16, "matched"))
    p.add_argument("--ghost-batch-size", default="b0",
                   help="ghost size, 'none' for BatchNorm (default: the workload's B0)")
    p.add_argument("--lr-exponent", type=float, default=0.5)
    return p


def build(args) -> Study:
    try:
        workload = get_workload(args.workload)
        batch = args.batch_size or workload.large_batch_size
        ghost = workload.regime.base_batch_size if args.ghost_batch_size == "b0" else args.ghost_batch_size
    except ValueError:
        batch, ghost = args.batch_size or 0, None  # Study reports the unknown workload
    return Study(
        name="regime_length",
        grid={
            "batch_size": (batch,),
            "ghost_batch_size": (ghost,),
            "lr_exponent": (args.lr_exponent,),
            "regime_multiplier": args.multipliers,
        },
        question=QUESTION,
        figures=figures,
        **common_study_fields(args),
    )


main = study_command(parser, build)
study = study_builder(parser, build)


if __name__ == "__main__":
    main()
