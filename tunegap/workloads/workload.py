"""`Workload`: a model, a dataset and the base regime it is trained with at B0.

A study varies batch size, ghost batch size, LR exponent and regime multiplier around a
workload's base regime; everything else about the training comes from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunegap.data import AUGMENTATIONS, STREAMING_DATASETS
from tunegap.names import TABLE1_COLUMNS
from tunegap.regime import Regime


@dataclass(frozen=True)
class PaperNumbers:
    """One row of the paper's Table 1: test accuracy (%) per column, and where it is from.

    >>> from tunegap import get_workload
    >>> get_workload("cifar10-resnet44").paper_table1["+RA"]
    93.07
    """

    accuracy: Mapping[str, float]
    source: str

    def __post_init__(self) -> None:
        if set(self.accuracy) != set(TABLE1_COLUMNS):
            raise ValueError(
                f"paper numbers need exactly the columns {', '.join(TABLE1_COLUMNS)}, "
                f"not {', '.join(self.accuracy)}"
            )
        for column, value in self.accuracy.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 100):
                raise ValueError(f"paper accuracy {column}={value!r}: use a percentage")
        if not self.source.strip():
            raise ValueError("paper numbers need their source")

    def __getitem__(self, column: str) -> float:
        return float(self.accuracy[column])

    def __iter__(self) -> Iterator[str]:
        return iter(TABLE1_COLUMNS)

    def gap(self, column: str) -> float:
        """SB minus `column`, in points (the paper's own generalization gap)."""
        return self["SB"] - self[column]


@dataclass(frozen=True)
class PublishedFigure:
    """An outside test accuracy (%) for a comparable network on the same data, and where it
    is from: the small batch's accuracy is printed beside it."""

    accuracy: float
    source: str

    def __post_init__(self) -> None:
        if not (isinstance(self.accuracy, int | float) and math.isfinite(self.accuracy)
                and 0 <= self.accuracy <= 100):
            raise ValueError(f"published accuracy {self.accuracy!r}: use a percentage")
        if not self.source.strip():
            raise ValueError("a published figure needs its source")


@dataclass(frozen=True, kw_only=True)
class Workload:
    """Everything fixed about a trial except the knobs a study searches over: a model and a
    dataset (registered names), the base regime at B0, and where each number came from.

    >>> from tunegap import Regime
    >>> w = Workload(name="mnist1d-long", model="cnn1d", dataset="mnist1d",
    ...              regime=Regime(base_lr=0.05, base_batch_size=32, epochs=40,
    ...                            decay_epochs=(20, 30)), large_batch_size=2048)
    >>> w.regime.resolve(w.large_batch_size).updates_per_epoch is None
    True
    """

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
    # Training-batch augmentation, a name in `tunegap.data.AUGMENTATIONS` (None: none).
    augment: str | None = None
    # Test accuracy (percent) whose first crossing gives steps_to_target; None: not measured.
    target_test_acc: float | None = None
    # The paper's Table 1 row for this network and data (None: the paper has none).
    paper_table1: PaperNumbers | None = None
    # The closest published figure for a comparable network on this data (None: none).
    published: PublishedFigure | None = None
    # True: the dataset is too big for memory and is read from disk batch by batch by
    # DataLoader workers (`tunegap.data.STREAMING_DATASETS` names those that can, and
    # `dataset_kwargs` go to that reader, e.g. `image_size`); `int(cpus_per_trial)` worker
    # processes. The dataset's own training transform augments then, so `augment` only
    # applies where the engine is handed in-memory `TensorData` of this workload instead.
    streaming: bool = False
    # True: on a CPU too, the model and its images are laid out channels_last (NHWC), where
    # oneDNN's convolutions run faster than on NCHW for this model (measured per workload by
    # benchmarks/fashion_epoch.py; off by default, as it depends on the model: measure first).
    cpu_channels_last: bool = False

    def __post_init__(self) -> None:
        if self.streaming and self.dataset not in STREAMING_DATASETS:
            raise ValueError(
                f"workload {self.name!r} streams dataset {self.dataset!r}, which cannot "
                f"stream: use one of {', '.join(sorted(STREAMING_DATASETS))}"
            )
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"augment {self.augment!r} of workload {self.name!r} is not allowed: use one "
                f"of {', '.join(sorted(AUGMENTATIONS))} or None"
            )
