"""Named workloads: a model, a dataset and the base regime it is trained with at B0.

A study varies batch size, ghost batch size, LR exponent and regime multiplier around a
workload's base regime; everything else about the training comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tunegap.regime import Regime


@dataclass(frozen=True)
class Workload:
    """Everything fixed about a trial except the knobs a study searches over."""

    name: str
    model: str
    dataset: str
    regime: Regime
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 2048
    # The "large batch" of the paper's Table 1 for this workload (4096 for CIFAR there).
    large_batch_size: int = 4096
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    source: str = ""

    def with_regime(self, **changes: Any) -> Workload:
        """A copy whose base regime has `changes` applied (e.g. epochs for a quick look)."""
        return replace(self, regime=replace(self.regime, **changes))


WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    if workload.name in WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is registered twice")
    WORKLOADS[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    """The workload called `name`; unknown names get the list of known ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(
            f"unknown workload {name!r}: use one of {', '.join(sorted(WORKLOADS))}"
        ) from None


register_workload(
    Workload(
        name="mnist1d-cnn",
        model="cnn1d",
        dataset="mnist1d",
        dataset_kwargs={"num_samples": 10_000},
        regime=Regime(
            base_lr=0.05,
            base_batch_size=32,
            epochs=20,
            decay_epochs=(10, 15),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            clip_norm=5.0,
        ),
        eval_batch_size=2000,
        large_batch_size=2048,
        source=(
            "tunegap's CPU-sized stand-in for the paper's Table 1 (../shared/PAPER.md): "
            "MNIST-1D 8k/2k, 3-layer 1D CNN, SGD momentum 0.9, wd 5e-4, clip 5, "
            "decays x0.1 at 50% and 75% of training, base lr 0.05 at B0=32"
        ),
    )
)
