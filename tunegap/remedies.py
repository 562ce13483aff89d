"""The columns of the paper's Table 1 as trial configurations.

SB is the small-batch reference (B0); LB the large batch with nothing changed; then the three
remedies are added one by one: +LR (sqrt learning-rate scaling), +GBN (ghost batches of B0
samples), +RA (regime adaptation: as many updates as SB).
"""

from __future__ import annotations

from typing import Any

from tunegap.names import TABLE1_COLUMNS
from tunegap.regime import MATCHED
from tunegap.workloads import Workload

__all__ = ["TABLE1_COLUMNS", "table1_rows"]


def table1_rows(
    workload: Workload, *, large_batch_size: int | None = None, ghost_batch_size: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(label, TrialConfig keyword arguments) for each Table 1 column, cumulative remedies."""
    small = workload.regime.base_batch_size
    large = large_batch_size or workload.large_batch_size
    ghost = ghost_batch_size or small
    lb = {"workload": workload.name, "batch_size": large}
    lr = {**lb, "lr_exponent": 0.5}
    gbn = {**lr, "ghost_batch_size": ghost}
    return [
        ("SB", {"workload": workload.name, "batch_size": small}),
        ("LB", lb),
        ("+LR", lr),
        ("+GBN", gbn),
        ("+RA", {**gbn, "regime_multiplier": MATCHED}),
    ]
