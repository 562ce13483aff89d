"""Batch size (the paper's Figure 1): test error against batch size at a fixed epoch budget.

    python -m tunegap.studies.batch_size

For each batch size: plain large batch, +LR (sqrt scaling) and +LR+GBN (ghost = B0), all with
the workload's base number of epochs, so larger batches make fewer updates.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tunegap import gapmap
from tunegap.study import (
    Study,
    StudyError,
    common_study_fields,
    int_list,
    positive_int,
    study_main,
    study_parser,
)
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
    cells = cells.copy()
    cells["remedy"] = cells.apply(remedy_label, axis=1)
    return {"error_vs_batch": gapmap.error_vs_batch(cells, hue="remedy")}


def parser():
    p = study_parser("batch_size", __doc__, seeds=2)
    p.add_argument("--batch-sizes", type=int_list("--batch-sizes"),
                   default=(32, 64, 128, 256, 512, 1024, 2048, 4096))
    p.add_argument("--ghost-batch-size", type=positive_int("--ghost-batch-size"), default=None,
                   help="ghost size of the +GBN curve (default: the workload's B0)")
    return p


def build(args) -> Study:
    try:
        b0 = get_workload(args.workload).regime.base_batch_size
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
    return Study(name="batch_size", points=tuple(points), question=QUESTION, figures=figures,
                 **common_study_fields(args))


def main(argv: Sequence[str] | None = None) -> None:
    study_main(parser(), build, argv)


if __name__ == "__main__":
    main()
