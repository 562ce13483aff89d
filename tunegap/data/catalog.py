"""The dataset registry: `register_dataset` to add a dataset, `load_dataset` to load one.

The built-in readers (`tunegap.data.mnist1d`, `.mnist`, `.cifar`, `.imagenet`) register
themselves here when `tunegap.data` is imported; a user registers their own the same way.
`DATASET_INFO` says what a model needs to know about a built-in dataset without loading it;
`dataset_hooks` what a dataset registered with `check=` or `train_size=` says about its files
and its size, also without loading it (`tunegap.workloads.check_workload_data` asks).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tunegap.data.tensors import TensorData
from tunegap.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset without loading it."""

    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


# The readers normalize images per channel with these usual mean and std (`normalize=
# "standard"`, the default), so zero padding of a normalized image (the crop augmentation)
# pads with the mean colour. The authors' pipeline (bigBatch preprocess.py) differs:
# CIFAR normalized with ImageNet statistics and MNIST with mean = std = 0.5, MNIST padded
# with black and CIFAR with fill=127; `normalize="authors"` (AUTHORS_STATS) and the
# augmentations of `tunegap.data.protocols` reproduce it, for `--protocol authors`.
DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo(num_classes=10, input_shape=(1, 40)),
    "mnist": DatasetInfo(10, (1, 28, 28), (0.1307,), (0.3081,)),
    # Fashion-MNIST's training-set mean and std (computed from the 60,000 images).
    "fashion-mnist": DatasetInfo(10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": DatasetInfo(1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# bigBatch preprocess.py get_transform: MNIST (0.5, 0.5), everything else its ImageNet stats.
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
AUTHORS_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.5,), (0.5,)),
    "fashion-mnist": ((0.5,), (0.5,)),  # the authors' MNIST pipeline: 28x28 grey as well
    "cifar10": _IMAGENET_STATS,
    "cifar100": _IMAGENET_STATS,
    "imagenet": _IMAGENET_STATS,
}
NORMALIZATIONS = ("standard", "authors")


def normalization(dataset: str, normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a built-in reader normalizes `dataset` with: "standard" (DATASET_INFO, the
    dataset's own statistics) or "authors" (AUTHORS_STATS, bigBatch's preprocess.py)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize {normalize!r} is not allowed for {dataset}: use one of "
            f"{', '.join(NORMALIZATIONS)}"
        )
    if normalize == "authors":
        return AUTHORS_STATS[dataset]
    info = DATASET_INFO[dataset]
    assert info.mean is not None and info.std is not None
    return info.mean, info.std


# A dataset function returns TensorData, or a mapping that `load_dataset` turns into one.
DatasetFunction = Callable[..., TensorData | Mapping[str, Any]]
DATASETS: Registry[DatasetFunction] = Registry("dataset")

_SPLITS = ("x_train", "y_train", "x_test", "y_test")

# A check raises a one-line FileNotFoundError or ValueError where the files are not there; a
# train size is a number, or a function giving it. Both get the workload's `dataset_kwargs`
# and `data_dir` (None: the default folder), as keywords.
DatasetCheck = Callable[..., None]
TrainSize = int | Callable[..., int]


@dataclass(frozen=True)
class DatasetHooks:
    """What a dataset says about its data before it is loaded (see `register_dataset`)."""

    function: DatasetFunction | None = None
    check: DatasetCheck | None = None
    train_size: TrainSize | None = None


# Per name; only valid while `function` is the one registered under that name.
_HOOKS: dict[str, DatasetHooks] = {}


def register_dataset(
    name: str,
    *,
    replace: bool = False,
    check: DatasetCheck | None = None,
    train_size: TrainSize | None = None,
) -> Callable[[DatasetFunction], DatasetFunction]:
    """Decorator: register a function that loads a dataset under `name`.

    The function takes whatever the workload's `dataset_kwargs` give (and `data_dir` when a
    trial sets one) and returns a `TensorData`, or a mapping with the tensors `x_train`,
    `y_train`, `x_test`, `y_test` and the int `num_classes`. `load_dataset` turns a mapping
    into a `TensorData` named after the dataset: labels become int64, inputs stay as given
    if floating point and become float32 otherwise. A second function under the same name
    needs `replace=True`.

    Optional, for refusing bad input before a study starts (`check_workload_data`):
    `check(data_dir=..., **dataset_kwargs)` looks cheaply whether the files are there and
    raises a one-line FileNotFoundError or ValueError if not (without one, nothing is
    checked); `train_size` is the number of training examples, or a function of the same
    keywords giving it cheaply (without one, the dataset is loaded to count them).

    >>> import torch
    >>> @register_dataset("two-blobs")
    ... def two_blobs(n: int = 8) -> dict:
    ...     x = torch.cat([torch.randn(n, 1, 2) - 2, torch.randn(n, 1, 2) + 2])
    ...     y = torch.arange(2).repeat_interleave(n)
    ...     return {"x_train": x, "y_train": y, "x_test": x, "y_test": y, "num_classes": 2}
    >>> data = load_dataset("two-blobs", n=4)
    >>> data.name, data.train_size, data.input_shape, data.y_train.dtype
    ('two-blobs', 8, (1, 2), torch.int64)
    """

    def add(function: DatasetFunction) -> DatasetFunction:
        DATASETS.add(name, function, replace=replace)
        _HOOKS[name] = DatasetHooks(function, check, train_size)
        return function

    return add


def dataset_hooks(name: str) -> DatasetHooks:
    """The `check` and `train_size` registered with the dataset called `name`; empty hooks
    where it has none, or where another function has replaced it since."""
    hooks = _HOOKS.get(name)
    if hooks is None or name not in DATASETS or DATASETS.get(name) is not hooks.function:
        return DatasetHooks()
    return hooks


def load_dataset(name: str, **kwargs: object) -> TensorData:
    """Load the dataset registered as `name`; one-line ValueErrors for unknown names and for
    a function that returns something `register_dataset` does not allow."""
    loaded = DATASETS.get(name)(**kwargs)
    if isinstance(loaded, TensorData):
        return loaded
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"dataset {name!r} returned a {type(loaded).__name__}: return a TensorData or a "
            f"mapping with {', '.join(_SPLITS)} and num_classes"
        )
    return _from_mapping(name, loaded)


def _from_mapping(name: str, arrays: Mapping[str, Any]) -> TensorData:
    """`arrays` (see `register_dataset`) checked and converted to `TensorData` called `name`."""
    missing = [key for key in (*_SPLITS, "num_classes") if key not in arrays]
    if missing:
        raise ValueError(f"dataset {name!r} returned a mapping without {', '.join(missing)}")
    num_classes = arrays["num_classes"]
    # numbers.Integral admits numpy integers; bool is an int but never a class count.
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool):
        raise ValueError(
            f"dataset {name!r}: num_classes is a {type(num_classes).__name__}, not an int"
        )
    if num_classes < 1:
        raise ValueError(f"dataset {name!r}: num_classes is {num_classes}, not >= 1")
    out: dict[str, torch.Tensor] = {}
    for key in _SPLITS:
        value = arrays[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"dataset {name!r}: {key} is a {type(value).__name__}, not a torch.Tensor"
            )
        out[key] = value
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if x.dim() < 1 or y.dim() != 1:
            raise ValueError(
                f"dataset {name!r}: x_{split} has shape {tuple(x.shape)} and y_{split} "
                f"{tuple(y.shape)}: x needs a sample axis, y must be 1-D"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"dataset {name!r}: x_{split} has {x.shape[0]} samples but y_{split} "
                f"has {y.shape[0]}"
            )
        # int64 of a fractional label would silently be another class.
        if y.is_complex() or (y.is_floating_point() and not torch.equal(y, y.round())):
            raise ValueError(f"dataset {name!r}: y_{split} holds non-integer labels")
        y = y.long()
        if y.numel() and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise ValueError(
                f"dataset {name!r}: y_{split} has labels outside [0, {num_classes}): "
                f"{int(y.min())}..{int(y.max())}"
            )
        out[f"x_{split}"] = x if x.is_floating_point() else x.float()
        out[f"y_{split}"] = y
    return TensorData(name=name, num_classes=int(num_classes), **out)
