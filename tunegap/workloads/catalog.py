"""The workload registry, and what a trial needs of it in a Ray worker."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tunegap.models  # noqa: F401  (its registry must exist before a snapshot names models)
from tunegap import registry
from tunegap.workloads.workload import Workload

WORKLOADS: registry.Registry[Workload] = registry.Registry("workload")


def register_workload(workload: Workload, *, replace: bool = False) -> Workload:
    """Register `workload` under its own name and return it.

    Its model and dataset are looked up by name when a trial starts, so they may be
    registered before or after it, but before the study runs.

    >>> from tunegap import Regime, Workload, register_workload
    >>> w = register_workload(Workload(
    ...     name="mnist1d-short", model="cnn1d", dataset="mnist1d",
    ...     regime=Regime(base_lr=0.05, base_batch_size=32, epochs=4, decay_epochs=(2, 3))))
    >>> get_workload("mnist1d-short").regime.epochs
    4
    """
    if not isinstance(workload, Workload):
        raise ValueError(
            f"register_workload takes a tunegap.Workload, not {type(workload).__name__}"
        )
    return WORKLOADS.add(workload.name, workload, replace=replace)


def get_workload(name: str) -> Workload:
    """The workload called `name`; an unknown name gets one line listing the known ones.

    >>> get_workload("mnist1d-cnn").regime.base_batch_size
    32
    """
    return WORKLOADS.get(name)


def workload_registrations(name: str, optimizers: Iterable[str] = ()
                           ) -> dict[str, dict[str, Any]]:
    """The workload with its model, dataset and augmentation, and the `optimizers` its
    trials use, for `tunegap.registry.install`.

    Looking them up here also checks, before Ray starts, that each one exists.
    """
    import tunegap.optim  # noqa: F401  (registers the built-in optimizers)

    workload = get_workload(name)
    dataset_kind = "streaming dataset" if workload.streaming else "dataset"
    return registry.snapshot({
        "workload": [workload.name],
        "model": [workload.model],
        dataset_kind: [workload.dataset],
        "augmentation": [workload.augment],
        "optimizer": sorted(set(optimizers)),
    })
