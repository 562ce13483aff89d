"""Named workloads: a model, a dataset and the base regime it is trained with at B0.

`mnist1d` holds the CPU-sized default, `paper` the networks of the paper's Table 1; a user
adds their own with `register_workload(Workload(...))`. `check_workload_data` refuses missing
data and batches larger than the training set before anything starts.
"""

from __future__ import annotations

# Importing the catalogue modules fills the registry.
from tunegap.workloads import fashion as _fashion  # noqa: F401
from tunegap.workloads import mnist1d as _mnist1d  # noqa: F401
from tunegap.workloads import paper as _paper  # noqa: F401
from tunegap.workloads.catalog import (
    WORKLOADS,
    get_workload,
    register_workload,
    workload_registrations,
)
from tunegap.workloads.checks import check_batch_sizes, check_workload_data
from tunegap.workloads.workload import PaperNumbers, Workload

__all__ = [
    "WORKLOADS",
    "PaperNumbers",
    "Workload",
    "check_batch_sizes",
    "check_workload_data",
    "get_workload",
    "register_workload",
    "workload_registrations",
]
