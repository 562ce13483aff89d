"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): Zalando's 28x28 grey article images.

The same four idx files as MNIST (same names and format), 60,000 training and 10,000 test
images of ten classes. Read from `--data-dir` where one is given (its own folder, torchvision's
FashionMNIST/raw or a fashion-mnist/ inside it); else from the default data folder, then from
Debian's package `dataset-fashion-mnist` (`apt-get install -y dataset-fashion-mnist`, files in
/usr/share/datasets/fashion-mnist/); else downloaded with torchvision where it and a network
exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunegap.data.cache import data_root, download_or_raise, searched
from tunegap.data.catalog import DATASET_INFO, normalization, register_dataset
from tunegap.data.mnist import (
    check_idx_counts,
    find_idx_files,
    idx_length,
    read_idx_splits,
)
from tunegap.data.tensors import TensorData, normalize_images

NAME = "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = (
    "install Debian's package (apt-get install -y dataset-fashion-mnist, into "
    f"{DEBIAN_DIR}), put the four idx files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in "
    "--data-dir, or let torchvision download them where a network exists"
)


def _folders(data_dir: str | Path | None) -> list[Path]:
    root = data_root(data_dir)
    mine = [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    # A --data-dir given is the only place looked in: pointing at a folder means "these".
    return mine if data_dir is not None else [*mine, DEBIAN_DIR]


def find_fashion_mnist(data_dir: str | Path | None = None) -> dict[str, Path] | None:
    """The four files, from the first folder holding all of them (see the module)."""
    return find_idx_files(_folders(data_dir))


def check_fashion_mnist(*, data_dir: str | Path | None = None, **_: object) -> None:
    """A one-line FileNotFoundError naming the three ways to provide the files, unless they
    are found; ValueError where their headers disagree. Only the headers are read."""
    files = find_fashion_mnist(data_dir)
    if files is None:
        where = searched(data_dir) + ("" if data_dir is not None else f" or {DEBIAN_DIR}")
        raise FileNotFoundError(f"Fashion-MNIST is not in {where}: {HOW_TO_GET}")
    check_idx_counts("Fashion-MNIST", files)


def fashion_mnist_train_size(*, data_dir: str | Path | None = None, **_: object) -> int:
    files = find_fashion_mnist(data_dir)
    return 60_000 if files is None else idx_length(files["x_train"])


@register_dataset(NAME, check=check_fashion_mnist, train_size=fashion_mnist_train_size)
def load_fashion_mnist(*, data_dir: str | Path | None = None, download: bool = True,
                       normalize: str = "standard") -> TensorData:
    """Fashion-MNIST, 60,000 train / 10,000 test 1x28x28 images (see the module docstring
    for where it is read from); `normalize`: "standard" (its own mean 0.2860 / std 0.3530)
    or "authors" (0.5 / 0.5, as bigBatch normalizes MNIST)."""
    mean, std = normalization(NAME, normalize)
    files = find_fashion_mnist(data_dir)
    if files is None:
        root = data_root(data_dir)
        not_found = f"Fashion-MNIST is not in {searched(data_dir)}: {HOW_TO_GET}"
        download_or_raise(NAME, root, not_found, download)
        files = find_fashion_mnist(data_dir)
        if files is None:
            raise FileNotFoundError(not_found)
    arrays = read_idx_splits("Fashion-MNIST", files)
    return TensorData(
        name=NAME,
        x_train=normalize_images(arrays["x_train"][:, None], mean, std),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=normalize_images(arrays["x_test"][:, None], mean, std),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=DATASET_INFO[NAME].num_classes,
    )
