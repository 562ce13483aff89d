"""CIFAR-10 and CIFAR-100 from the python pickles of the official archives.

The batches are unpickled by a restricted unpickler that refuses any global but numpy's
array reconstruction: a pickle can run code on load. An archive alone in the data folder is
extracted first (under a file lock, as parallel trials may start together). The uint8
arrays load in a second or two, so they are read directly, not cached.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tunegap.data.cache import data_root, download_or_raise, file_lock, searched, unreadable
from tunegap.data.catalog import DATASET_INFO, normalization, register_dataset
from tunegap.data.tensors import TensorData, normalize_images


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    archive: str
    # The files of `folder`, as a missing-data message lists them.
    contents: str
    train_size: int


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_CIFAR = {
    "cifar10": _CifarLayout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key=b"labels",
        archive="cifar-10-python.tar.gz",
        contents="data_batch_1..5 and test_batch",
        train_size=50_000,
    ),
    "cifar100": _CifarLayout(
        title="CIFAR-100",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key=b"fine_labels",
        archive="cifar-100-python.tar.gz",
        contents="train and test",
        train_size=50_000,
    ),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays and lists) and nothing else.

    A pickle can run any code on load; the CIFAR files only need numpy's array
    reconstruction, so any other global is refused.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        # The official files were written by numpy 1 (numpy.core); numpy 2 calls it numpy._core.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) in self._ALLOWED:
            try:
                return super().find_class(module, name)
            except ModuleNotFoundError:  # numpy 1 has no numpy._core
                return super().find_class(module.replace("numpy._core", "numpy.core"), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_batch(
    path: str | Path, label_key: bytes = b"labels"
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    with open(path, "rb") as f:
        entry = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path} is not a CIFAR batch with b'data' and {label_key!r}: {keys}")
    images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.shape} labels")
    return images, labels


def _load_cifar(
    dataset: str, data_dir: str | Path | None, download: bool, normalize: str
) -> TensorData:
    mean, std = normalization(dataset, normalize)
    layout = _CIFAR[dataset]
    root = data_root(data_dir)
    folder = root / layout.folder
    needed = [folder / name for name in layout.train + layout.test]
    archive = root / layout.archive
    if not all(p.is_file() for p in needed) and archive.is_file():
        with file_lock(root / f".{dataset}.extract.lock"):
            if not all(p.is_file() for p in needed):
                with tarfile.open(archive) as tar:
                    # The "data" filter refuses absolute paths and links out of `root`
                    # (Python >= 3.11.4); older 3.11 releases extract as before.
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(root, filter="data")
                    else:
                        tar.extractall(root)
    if not all(p.is_file() for p in needed):
        not_found = (
            f"{layout.title} not found: looked for {layout.folder}/{layout.train[0]} in {root}; "
            f"download {CIFAR_URL}{layout.archive} and extract it there (or just put the "
            f"archive there), or pass --data-dir"
        )
        download_or_raise(dataset, root, not_found, download)
        if not all(p.is_file() for p in needed):
            raise FileNotFoundError(not_found)
    info = DATASET_INFO[dataset]
    splits = {}
    for split, names in (("train", layout.train), ("test", layout.test)):
        parts = [read_cifar_batch(folder / name, layout.label_key) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and not 0 <= labels.min() <= labels.max() < info.num_classes:
            raise ValueError(f"{folder}: labels outside 0..{info.num_classes - 1}")
        splits[split] = (normalize_images(images, mean, std), torch.from_numpy(labels))
    return TensorData(
        name=dataset,
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        num_classes=info.num_classes,
    )


def check_cifar(dataset: str, data_dir: str | Path | None) -> None:
    """A one-line FileNotFoundError unless `dataset`'s batch files (or its archive alone, which
    the reader extracts) are there and readable; nothing is unpickled."""
    layout = _CIFAR[dataset]
    root = data_root(data_dir)
    problems = [
        f"{layout.folder}/{name}: {why}"
        for name in layout.train + layout.test
        if (why := unreadable(root / layout.folder / name)) is not None
    ]
    archive = root / layout.archive
    if not problems or (unreadable(archive) is None and tarfile.is_tarfile(archive)):
        return
    if not (root / layout.folder).is_dir():
        found = f"there is no {layout.folder}/ nor {layout.archive}"
    else:
        found = "; ".join(problems[:2]) + ("; ..." if len(problems) > 2 else "")
    raise FileNotFoundError(
        f"{layout.title} is not in {searched(data_dir)}: expected {layout.folder}/ with "
        f"{layout.contents}, or the archive {layout.archive} ({found}); download "
        f"{CIFAR_URL}{layout.archive} on a machine with internet and extract it there"
    )


def _check_cifar10(*, data_dir: str | Path | None = None, **_: object) -> None:
    check_cifar("cifar10", data_dir)


def _check_cifar100(*, data_dir: str | Path | None = None, **_: object) -> None:
    check_cifar("cifar100", data_dir)


@register_dataset("cifar10", check=_check_cifar10, train_size=_CIFAR["cifar10"].train_size)
def load_cifar10(
    *, data_dir: str | Path | None = None, download: bool = True, normalize: str = "standard"
) -> TensorData:
    """CIFAR-10, 50,000 train / 10,000 test 3x32x32 images.

    Reads `data_dir/cifar-10-batches-py/` (data_batch_1..5, test_batch), extracting
    `data_dir/cifar-10-python.tar.gz` first if only the archive is there. `normalize`:
    "standard" (CIFAR-10's own mean/std) or "authors" (bigBatch's ImageNet mean/std).
    """
    return _load_cifar("cifar10", data_dir, download, normalize)


@register_dataset(
    "cifar100", check=_check_cifar100, train_size=_CIFAR["cifar100"].train_size
)
def load_cifar100(
    *, data_dir: str | Path | None = None, download: bool = True, normalize: str = "standard"
) -> TensorData:
    """CIFAR-100 with its 100 fine labels, 50,000 train / 10,000 test 3x32x32 images.

    Reads `data_dir/cifar-100-python/` (train, test), extracting
    `data_dir/cifar-100-python.tar.gz` first if only the archive is there. `normalize`:
    "standard" (CIFAR-100's own mean/std) or "authors" (bigBatch's ImageNet mean/std).
    """
    return _load_cifar("cifar100", data_dir, download, normalize)
