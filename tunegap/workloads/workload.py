"""`Workload`: a model, a dataset and the base regime it is trained with at B0.

A study varies batch size, ghost batch size, LR exponent and regime multiplier around a
workload's base regime; everything else about the training comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunegap.data import AUGMENTATIONS, STREAMING_DATASETS
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
    # Training-batch augmentation, a name in `tunegap.data.AUGMENTATIONS` (None: none).
    augment: str | None = None
    # Test accuracy (percent) whose first crossing gives steps_to_target; None: not measured.
    target_test_acc: float | None = None
    # True: the dataset is too big for memory and is read from disk batch by batch by
    # DataLoader workers (`tunegap.data.STREAMING_DATASETS` names those that can, and
    # `dataset_kwargs` go to that reader, e.g. `image_size`); `int(cpus_per_trial)` worker
    # processes. The dataset's own training transform augments then, so `augment` only
    # applies where the engine is handed in-memory `TensorData` of this workload instead.
    streaming: bool = False

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
