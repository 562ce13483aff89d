"""ImageNet as an ImageFolder tree (`train/<class>/*.JPEG`, `val/<class>/*`), decoded with
Pillow: the folder layout, the evaluation decode, and a subset held in memory
(`load_imagenet`). Streaming the whole tree from disk is `tunegap.data.streaming`.

Full ImageNet cannot be downloaded without registration, so a missing tree is one
`FileNotFoundError` saying where it was looked for and how to lay it out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunegap.data.cache import data_root, save_npz, searched
from tunegap.data.catalog import DATASET_INFO, register_dataset
from tunegap.data.tensors import TensorData, normalize_images

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp")
IMAGENET_URL = "https://image-net.org/download.php"


def pil_image() -> Any:
    """Pillow's `PIL.Image` module, or an ImportError saying how to install it."""
    # Imported on first use: only ImageNet needs Pillow.
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "reading ImageNet needs Pillow to decode the images: pip install pillow"
        ) from err
    return Image


def _candidates(root: Path) -> list[Path]:
    return [root, root / "imagenet", root / "ILSVRC2012"]


def _imagenet_folder(root: Path) -> Path | None:
    for folder in _candidates(root):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    return None


def find_imagenet(data_dir: str | Path | None = None) -> Path:
    """The folder holding `train/` and `val/` class folders, or one clear FileNotFoundError."""
    root = data_root(data_dir)
    folder = _imagenet_folder(root)
    if folder is not None:
        return folder
    candidates = _candidates(root)
    raise FileNotFoundError(
        "ImageNet not found: looked for train/<class>/*.JPEG and val/<class>/* in "
        f"{', '.join(str(c) for c in candidates)}; get ILSVRC2012 from {IMAGENET_URL} "
        "(registration required), arrange train/ and val/ as one folder per class (the "
        "ImageFolder layout; torchvision cannot download it), and pass --data-dir"
    )


def _is_image(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[os.DirEntry[str]]:
    with os.scandir(split_dir) as entries:
        return [e for e in entries if e.is_dir()]


def _count_images(split_dir: Path, max_per_class: int | None = None, stop: int = 0) -> int:
    """Images in `split_dir/<class>/`, at most `max_per_class` a class, as `list_image_folder`
    finds them but without sorting or building paths; `stop` > 0 ends the count there."""
    total = 0
    for folder in _class_folders(split_dir):
        with os.scandir(folder.path) as entries:
            count = sum(1 for e in entries if _is_image(e))
        total += count if max_per_class is None else min(count, max_per_class)
        if 0 < stop <= total:
            break
    return total


def check_imagenet(*, data_dir: str | Path | None = None, **_: object) -> None:
    """A one-line FileNotFoundError unless an ImageFolder tree with images in both splits is
    where `find_imagenet` looks, or ValueError where validation has classes training lacks;
    folders are listed, no image is opened."""
    root = data_root(data_dir)
    folder = _imagenet_folder(root)
    if folder is None:
        raise FileNotFoundError(
            f"ImageNet is not in {searched(data_dir)}: expected train/<class>/*.JPEG and "
            "val/<class>/* in that folder, its imagenet/ or its ILSVRC2012/; get "
            f"ILSVRC2012 from {IMAGENET_URL} (registration required) on a machine with "
            "internet and arrange train/ and val/ as one folder per class"
        )
    for split in ("train", "val"):
        if not _count_images(folder / split, stop=1):
            raise FileNotFoundError(
                f"ImageNet in {folder} has no images in {split}/<class>/ with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}: both splits need images"
            )
    train = {e.name for e in _class_folders(folder / "train")}
    unknown = sorted({e.name for e in _class_folders(folder / "val")} - train)
    if unknown:
        raise ValueError(
            f"{folder / 'val'} has class folders the training split lacks: {unknown[:5]}"
        )


def imagenet_train_size(
    *, data_dir: str | Path | None = None, max_per_class: int | None = None, **_: object
) -> int:
    """The number of training images `load_imagenet` or the streaming reader would use, by
    listing the class folders (about a second for the full 1.28M); call `check_imagenet`
    first."""
    folder = _imagenet_folder(data_root(data_dir))
    return 0 if folder is None else _count_images(folder / "train", max_per_class)


def list_image_folder(
    split_dir: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) of an ImageFolder tree, in sorted order.

    Class indices follow the sorted folder names (as torchvision's ImageFolder); pass the
    training split's `classes` when listing the validation split so the indices agree.
    """
    split_dir = Path(split_dir)
    folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if classes is None:
        classes = folders
    else:
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise ValueError(
                f"{split_dir} has class folders the training split lacks: {unknown[:5]}"
            )
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        files = sorted(
            e.name
            for e in os.scandir(folder)
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        samples += [(folder / f, index) for f in files]
    return list(classes), samples


def keep_per_class(samples: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """The first `limit` samples of each class, in the order given."""
    counts: dict[int, int] = {}
    kept = []
    for path, label in samples:
        if counts.get(label, 0) < limit:
            counts[label] = counts.get(label, 0) + 1
            kept.append((path, label))
    return kept


def decode_resize_center_crop(path: Path, resize: int, size: int) -> np.ndarray:
    """The evaluation transform: shorter side to `resize`, centre `size` x `size` crop, as
    uint8 HWC RGB."""
    image_module = pil_image()
    with image_module.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = resize / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), image_module.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _decode_split(
    samples: Sequence[tuple[Path, int]], resize: int, size: int, workers: int
) -> np.ndarray:
    out = np.empty((len(samples), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        out[i] = decode_resize_center_crop(samples[i][0], resize, size).transpose(2, 0, 1)

    # Pillow releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(len(samples))))
    return out


@register_dataset("imagenet", check=check_imagenet, train_size=imagenet_train_size)
def load_imagenet(
    *,
    data_dir: str | Path | None = None,
    image_size: int = 224,
    resize: int = 256,
    max_per_class: int | None = None,
    max_gib: float = 16.0,
    workers: int | None = None,
    cache: bool = True,
    train_transform: str | None = None,
) -> TensorData:
    """An ImageFolder ImageNet (or a subset of it) decoded into memory as `TensorData`.

    Full ImageNet is about 770 GiB as float32 224x224 tensors: far too big. This loads a
    subset (`max_per_class` images per class from each split) when it fits in `max_gib`, and
    otherwise refuses with a ValueError pointing to streaming from disk
    (`tunegap.data.load_imagenet_streaming`). Every image is resized (shorter side
    `resize`) and centre-cropped to `image_size`; training augmentation is then the
    loader's job (e.g. "crop_flip"). Decoded subsets are cached as .npz in the ImageNet
    folder when it is writable. `train_transform` is the streaming reader's
    (`load_imagenet_streaming`): centre crops held in memory cannot be re-cropped, so only
    None is allowed here; the authors' "scale_crop" needs streaming.
    """
    if train_transform is not None:
        raise ValueError(
            f"train_transform {train_transform!r} needs the images decoded per epoch: "
            "in-memory ImageNet holds centre crops, so stream it (a Workload with "
            "streaming=True)"
        )
    root = find_imagenet(data_dir)
    classes, train = list_image_folder(root / "train")
    _, test = list_image_folder(root / "val", classes)
    if max_per_class is not None:
        train, test = keep_per_class(train, max_per_class), keep_per_class(test, max_per_class)
    if not train or not test:
        raise FileNotFoundError(
            f"ImageNet in {root} has {len(train)} training and {len(test)} validation images "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)}: both splits need images"
        )
    gib = (len(train) + len(test)) * 3 * image_size**2 * 4 / 2**30
    if gib > max_gib:
        raise ValueError(
            f"ImageNet in {root} would take {gib:.0f} GiB in memory ({len(train) + len(test)} "
            f"images at {image_size}x{image_size}), more than max_gib={max_gib:g}: pass "
            "max_per_class for an in-memory subset, or stream it (a Workload with "
            "streaming=True, or tunegap.data.load_imagenet_streaming)"
        )
    # The key covers every file and the transform, so another subset never reads this cache.
    key = hashlib.sha1(
        repr((image_size, resize, [str(p) for p, _ in train], [str(p) for p, _ in test])).encode()
    ).hexdigest()[:12]
    cache_path = root / f".tunegap-imagenet-{key}.npz"
    if cache and cache_path.is_file():
        with np.load(cache_path) as f:
            x_train, x_test = f["x_train"], f["x_test"]
    else:
        n_workers = workers or min(16, os.cpu_count() or 1)
        x_train = _decode_split(train, resize, image_size, n_workers)
        x_test = _decode_split(test, resize, image_size, n_workers)
        if cache:
            with contextlib.suppress(OSError):  # a read-only data folder: no cache
                save_npz(cache_path, x_train=x_train, x_test=x_test)
    info = DATASET_INFO["imagenet"]
    assert info.mean is not None and info.std is not None
    return TensorData(
        name="imagenet",
        x_train=normalize_images(x_train, info.mean, info.std),
        y_train=torch.tensor([label for _, label in train], dtype=torch.int64),
        x_test=normalize_images(x_test, info.mean, info.std),
        y_test=torch.tensor([label for _, label in test], dtype=torch.int64),
        num_classes=len(classes),
    )
