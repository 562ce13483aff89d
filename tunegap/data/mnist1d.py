"""MNIST-1D (Greydanus 2020): generated offline by the `mnist1d` package, cached as .npz."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from tunegap.data.cache import data_root, save_npz
from tunegap.data.catalog import register_dataset
from tunegap.data.tensors import TensorData

_KEYS = ("x", "y", "x_test", "y_test")
# The package's defaults (mnist1d.data.get_dataset_args, make_dataset), which load_mnist1d
# keeps: num_samples // 10 samples of each of 10 templates, the first 80% of them to train.
_CLASSES = 10
_TRAIN_SPLIT = 0.8


def mnist1d_train_size(*, num_samples: int = 10_000, **_: object) -> int:
    """The number of training samples `load_mnist1d(num_samples=...)` gives, without
    generating them (8,000 for the default 10,000)."""
    return int(num_samples // _CLASSES * _CLASSES * _TRAIN_SPLIT)


def check_mnist1d(**_: object) -> None:
    """MNIST-1D is generated, not read: only the generator package must be there."""
    if importlib.util.find_spec("mnist1d") is None:
        raise FileNotFoundError(
            "MNIST-1D needs the mnist1d package to generate it: pip install mnist1d"
        )


@register_dataset("mnist1d", check=check_mnist1d, train_size=mnist1d_train_size)
def load_mnist1d(
    *, num_samples: int = 10_000, seed: int = 42, extra_test_samples: int = 0,
    data_dir: str | Path | None = None,
) -> TensorData:
    """MNIST-1D, 80% train / 20% test as in the package, inputs [N, 1, 40].

    `extra_test_samples` appends that many more test samples, generated the same way with
    another seed (seed + 1): the training set and the first test samples stay exactly those
    of `num_samples`, so a trial trains the same and is only measured more precisely.

    The arrays are cached in `data_dir` (default ~/.cache/tunegap) under a name that encodes
    the generation arguments, so a change of arguments never reads a stale file.
    """
    arrays = _generated(num_samples, seed, data_dir)
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if extra_test_samples:
        # Whole classes at a time, as the package generates them, then cut to the count.
        more = _generated(-(-extra_test_samples // _CLASSES) * _CLASSES * 2, seed + 1, data_dir)
        x_more = np.concatenate([more["x"], more["x_test"]])[:extra_test_samples]
        y_more = np.concatenate([more["y"], more["y_test"]])[:extra_test_samples]
        x_test, y_test = np.concatenate([x_test, x_more]), np.concatenate([y_test, y_more])
    return TensorData(
        name="mnist1d",
        x_train=torch.from_numpy(arrays["x"]).float().unsqueeze(1),
        y_train=torch.from_numpy(arrays["y"]).long(),
        x_test=torch.from_numpy(x_test).float().unsqueeze(1),
        y_test=torch.from_numpy(y_test).long(),
        num_classes=10,
    )


def _generated(num_samples: int, seed: int, data_dir: str | Path | None) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    key = hashlib.sha1(repr(sorted(vars(args).items())).encode()).hexdigest()[:10]
    path = data_root(data_dir) / f"mnist1d-{num_samples}-{seed}-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in _KEYS}
    made = make_dataset(args)
    arrays = {k: np.asarray(made[k]) for k in _KEYS}
    save_npz(path, **arrays)
    return arrays
