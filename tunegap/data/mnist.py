"""MNIST from its four idx files (plain or .gz), read without torchvision.

tunegap must run with a CPU torch that has no matching torchvision build, so the idx format
is parsed here; torchvision is only used to download the files where `download=True`.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from tunegap.data.cache import data_root, download_or_raise
from tunegap.data.catalog import DATASET_INFO, register_dataset
from tunegap.data.tensors import TensorData, normalize_images

# idx type codes (yann.lecun.com/exdb/mnist): magic = 0x00 0x00 <type> <number of dims>.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (plain, or gzip when the name ends in .gz) as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file: magic number {data[:4].hex()}")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    if len(data) - header != math.prod(dims) * dtype.itemsize:
        raise ValueError(
            f"{path}: the header says shape {dims} but the file holds {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _mnist_dirs(root: Path) -> list[Path]:
    # Our own layout, torchvision's (root/MNIST/raw), and a plain folder named mnist.
    return [root, root / "MNIST" / "raw", root / "mnist"]


def _find_mnist(root: Path) -> dict[str, Path] | None:
    for folder in _mnist_dirs(root):
        found = {}
        for key, stem in MNIST_FILES.items():
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


@register_dataset("mnist")
def load_mnist(*, data_dir: str | Path | None = None, download: bool = True) -> TensorData:
    """MNIST, 60,000 train / 10,000 test 1x28x28 images, from the four idx files.

    Looks in `data_dir`, `data_dir/MNIST/raw` (torchvision's layout) and `data_dir/mnist`;
    each file may be plain or gzipped. The uint8 files load in a second or two, so they are
    read directly, not cached.
    """
    root = data_root(data_dir)
    files = _find_mnist(root)
    if files is None:
        where = ", ".join(str(d) for d in _mnist_dirs(root))
        not_found = (
            f"MNIST not found: looked for train-images-idx3-ubyte[.gz] and the three other idx "
            f"files in {where}; download them from {MNIST_URL} (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            f"into {root}, or pass --data-dir"
        )
        download_or_raise("mnist", root, not_found, download)
        files = _find_mnist(root)
        if files is None:
            raise FileNotFoundError(not_found)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"MNIST {split} files do not match: images {x.shape}, labels {y.shape} "
                f"({files[f'x_{split}']}, {files[f'y_{split}']})"
            )
    info = DATASET_INFO["mnist"]
    assert info.mean is not None and info.std is not None
    return TensorData(
        name="mnist",
        x_train=normalize_images(arrays["x_train"][:, None], info.mean, info.std),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=normalize_images(arrays["x_test"][:, None], info.mean, info.std),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=info.num_classes,
    )
