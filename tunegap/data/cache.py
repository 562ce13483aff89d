"""Where dataset files live, and how parallel trials share them without clobbering.

Every reader takes `data_dir` (default ~/.cache/tunegap, `DEFAULT_DATA_DIR`). Several Ray
trials may start on the same node at once: downloads and extractions run under one
cross-process file lock per dataset, and caches are written with `tunegap.atomic`, so a
reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from filelock import FileLock

from tunegap.atomic import write_atomically

DEFAULT_DATA_DIR = Path.home() / ".cache" / "tunegap"


def data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """`data_dir` with `~` expanded, or `DEFAULT_DATA_DIR` where it is None."""
    return Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR


def searched(data_dir: str | os.PathLike[str] | None) -> str:
    """The folder a missing-data message names, as the user gave it: `--data-dir X`, or the
    default folder where they gave none."""
    if data_dir is None:
        return f"{DEFAULT_DATA_DIR} (the default --data-dir)"
    missing = "" if data_root(data_dir).is_dir() else ", no such folder"
    return f"--data-dir {os.fspath(data_dir)}{missing}"


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as a file ("No such file or directory", "Permission
    denied", ...), or None where it can: one byte read, so the check stays cheap."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def file_lock(path: Path) -> FileLock:
    """An exclusive lock on `path` (a `with` block), so parallel trials download or extract
    one copy, not several."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """`arrays` as an uncompressed .npz at `path`, written atomically."""
    # The temporary file keeps the .npz suffix, so np.savez writes exactly that name.
    return write_atomically(path, lambda tmp: np.savez(tmp, **arrays))


def download_or_raise(dataset: str, root: Path, not_found: str, download: bool) -> None:
    """Download `dataset` into `root` with torchvision (its layout) where asked and possible.

    Otherwise raise the one-line `not_found` error, saying why no download happened.
    """
    if not download:
        raise FileNotFoundError(not_found)
    try:
        import torchvision.datasets as tvd
    except Exception:  # absent, or a build that does not load with this torch
        raise FileNotFoundError(
            f"{not_found} (download=True needs torchvision, the 'vision' extra)"
        ) from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[dataset]
    try:
        with file_lock(root / f".{dataset}.download.lock"):
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
    except Exception as err:
        raise FileNotFoundError(f"{not_found} (download with torchvision failed: {err})") from err
