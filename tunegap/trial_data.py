"""A trial's data, before the engine trains on it: the workload's data set loaded (in memory
or opened for streaming; under the authors' protocol through their input pipeline), a fixed
training subset (`train_size`), a held-out validation split (`validation_fraction`), the
device, and the DataLoader workers of a streaming data set."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from tunegap.config import TrialConfig
from tunegap.data import (
    DATASETS,
    StreamingData,
    TensorData,
    load_dataset,
    load_streaming_dataset,
)
from tunegap.registry import accepts_keyword

# `train_size` draws its subset with this seed: every trial of a study sees the same samples.
TRAIN_SUBSET_SEED = 0
# `validation_fraction` holds out the same samples for every trial of a study, drawn apart
# from the subset's draw.
VALIDATION_SEED = 1


def training_subset(data: TensorData, size: int | None) -> TensorData:
    """`size` samples of the training split, drawn once with `TRAIN_SUBSET_SEED`."""
    if size is None or size == data.train_size:
        return data
    if size > data.train_size:
        raise ValueError(f"train_size {size} is not allowed: the training set of {data.name} "
                         f"has {data.train_size} samples")
    generator = torch.Generator().manual_seed(TRAIN_SUBSET_SEED)
    keep = torch.randperm(data.train_size, generator=generator)[:size].sort().values
    keep = keep.to(data.x_train.device)
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def validation_split(data: TensorData, fraction: float
                     ) -> tuple[TensorData, tuple[torch.Tensor, torch.Tensor] | None]:
    """(the training data less a held-out share, the held-out (x, y)); the share is
    round(fraction * train_size) samples (at least one), drawn once with `VALIDATION_SEED`.

    >>> data = TensorData(name="toy", x_train=torch.arange(10.0).view(10, 1, 1),
    ...                   y_train=torch.zeros(10, dtype=torch.long), x_test=torch.zeros(2, 1, 1),
    ...                   y_test=torch.zeros(2, dtype=torch.long), num_classes=2)
    >>> kept, (x_val, _) = validation_split(data, 0.2)
    >>> kept.train_size, x_val.shape[0], sorted(kept.x_train.flatten().tolist() + x_val.flatten().tolist()) == list(range(10))
    (8, 2, True)
    """
    if not fraction:
        return data, None
    n_val = max(1, round(fraction * data.train_size))
    if n_val >= data.train_size:
        raise ValueError(f"validation_fraction {fraction:g} is not allowed here: it holds out "
                         f"all {data.train_size} training samples of {data.name}")
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    order = torch.randperm(data.train_size, generator=generator).to(data.x_train.device)
    held, kept = order[:n_val].sort().values, order[n_val:].sort().values
    rest = replace(data, x_train=data.x_train[kept], y_train=data.y_train[kept])
    return rest, (data.x_train[held], data.y_train[held])


def pick_device(name: str) -> torch.device:
    """ "auto" means CUDA where present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available: use cpu or auto")
    return torch.device(name)


def load_workload_data(config: TrialConfig) -> TensorData | StreamingData:
    """The workload's dataset: in memory, or opened for streaming where the workload streams;
    under the authors' protocol, read and augmented through their input pipeline."""
    workload = config.get_workload()
    kwargs, _ = data_pipeline(config)
    if workload.streaming:
        if config.data_dir is not None:
            kwargs["data_dir"] = config.data_dir
        return load_streaming_dataset(workload.dataset, **kwargs)
    # A user's dataset function need not read files: it gets `data_dir` only if it takes one.
    if config.data_dir is not None and accepts_keyword(DATASETS.get(workload.dataset), "data_dir"):
        kwargs["data_dir"] = config.data_dir
    return load_dataset(workload.dataset, **kwargs)


def data_pipeline(config: TrialConfig) -> tuple[dict[str, Any], str | None]:
    """The dataset kwargs and augmentation name a trial reads its data with: the workload's,
    or under the authors' protocol their input pipeline for that dataset."""
    workload = config.get_workload()
    kwargs: dict[str, Any] = dict(workload.dataset_kwargs)
    if not config.authors:
        return kwargs, workload.augment
    from tunegap.data.protocols import authors_pipeline

    return authors_pipeline(workload.dataset, workload.augment, kwargs)


def default_workers(cpus_per_trial: float) -> int:
    """DataLoader worker processes for a streaming workload: one per CPU of the trial."""
    return max(0, int(cpus_per_trial))
