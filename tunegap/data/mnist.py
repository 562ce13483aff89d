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

from tunegap.data.cache import data_root, download_or_raise, searched
from tunegap.data.catalog import DATASET_INFO, normalization, register_dataset
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
    return find_idx_files(_mnist_dirs(root))


def find_idx_files(folders: list[Path]) -> dict[str, Path] | None:
    """The four idx files (MNIST's names, each plain or .gz) from the first folder that
    holds all four; None where none does."""
    for folder in folders:
        found = {}
        for key, stem in MNIST_FILES.items():
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def idx_length(path: str | Path) -> int:
    """The first dimension of an idx file (the number of images or labels), from its header
    alone; a one-line ValueError where the header is not an idx one or, for a plain file,
    disagrees with the file's size (a truncated download)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES:
                raise ValueError(f"{path} is not an idx file: magic number {magic.hex()}")
            dims = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
    except (OSError, EOFError, struct.error) as err:
        raise ValueError(f"{path} cannot be read as an idx file: {err}") from None
    if not dims:
        raise ValueError(f"{path} is an idx file without dimensions")
    if path.suffix != ".gz":
        expected = 4 + 4 * len(dims) + math.prod(dims) * np.dtype(_IDX_TYPES[magic[2]]).itemsize
        if path.stat().st_size != expected:
            raise ValueError(
                f"{path}: the header says shape {dims} ({expected} bytes) but the file holds "
                f"{path.stat().st_size} bytes"
            )
    return dims[0]


def check_idx_counts(name: str, files: dict[str, Path]) -> None:
    """A one-line ValueError where a split's image and label files disagree in length."""
    counts = {key: idx_length(path) for key, path in files.items()}
    for split in ("train", "test"):
        if counts[f"x_{split}"] != counts[f"y_{split}"]:
            raise ValueError(
                f"{name} {split} files do not match: {counts[f'x_{split}']} images in "
                f"{files[f'x_{split}']} but {counts[f'y_{split}']} labels in "
                f"{files[f'y_{split}']}"
            )


def read_idx_splits(name: str, files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The four arrays, checked to pair up (images [N, 28, 28], labels [N])."""
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} {split} files do not match: images {x.shape}, labels {y.shape} "
                f"({files[f'x_{split}']}, {files[f'y_{split}']})"
            )
    return arrays


def check_mnist(*, data_dir: str | Path | None = None, **_: object) -> None:
    """A one-line FileNotFoundError unless the four idx files are in one of the folders
    `load_mnist` reads, or ValueError where their headers are broken or disagree; only the
    headers are read."""
    root = data_root(data_dir)
    files = _find_mnist(root)
    if files is None:
        raise FileNotFoundError(
            f"MNIST is not in {searched(data_dir)}: expected {', '.join(MNIST_FILES.values())} "
            f"(each may end in .gz) in that folder, its MNIST/raw/ or its mnist/; download "
            f"them from {MNIST_URL} on a machine with internet"
        )
    check_idx_counts("MNIST", files)


def mnist_train_size(*, data_dir: str | Path | None = None, **_: object) -> int:
    """The number of training images, from the header of train-images-idx3-ubyte (60,000
    for the real files); call `check_mnist` first."""
    files = _find_mnist(data_root(data_dir))
    return 60_000 if files is None else idx_length(files["x_train"])


@register_dataset("mnist", check=check_mnist, train_size=mnist_train_size)
def load_mnist(
    *, data_dir: str | Path | None = None, download: bool = True, normalize: str = "standard"
) -> TensorData:
    """MNIST, 60,000 train / 10,000 test 1x28x28 images, from the four idx files.

    Looks in `data_dir`, `data_dir/MNIST/raw` (torchvision's layout) and `data_dir/mnist`;
    each file may be plain or gzipped. The uint8 files load in a second or two, so they are
    read directly, not cached. `normalize`: "standard" (MNIST's mean 0.1307 / std 0.3081)
    or "authors" (bigBatch's 0.5 / 0.5, so black is -1).
    """
    mean, std = normalization("mnist", normalize)
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
    arrays = read_idx_splits("MNIST", files)
    return TensorData(
        name="mnist",
        x_train=normalize_images(arrays["x_train"][:, None], mean, std),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=normalize_images(arrays["x_test"][:, None], mean, std),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=DATASET_INFO["mnist"].num_classes,
    )
