"""Image datasets read from their own on-disk formats: MNIST, CIFAR-10, CIFAR-100, ImageNet.

No torchvision is needed to read them (tunegap must run with a CPU torch that has no matching
torchvision build): MNIST from its idx files (plain or .gz), CIFAR from the python pickles of
the official archives, ImageNet from an ImageFolder tree (`train/<class>/*.JPEG`,
`val/<class>/*`) decoded with Pillow: a subset into memory (`load_imagenet`), or the whole
tree streamed from disk by DataLoader workers (`load_imagenet_streaming` + `StreamingLoader`,
what `tunegap.train.Engine` uses for a workload with `streaming=True`). Where the files are missing, `download=True` fetches
MNIST and CIFAR with torchvision when it can be imported; otherwise a `FileNotFoundError`
says in one line what was looked for, where, and how to provide it.

Images come back as `TensorData`: float32, NCHW, normalized per channel with the dataset's
usual mean and std (`DATASET_INFO`); labels int64. Zero padding of a normalized image, as
the crop augmentation in `tunegap.data` does, therefore pads with the mean colour; the
authors' code padded CIFAR with grey (fill=127) before normalizing, nearly the same.
(The authors normalized CIFAR with ImageNet statistics and MNIST with mean = std = 0.5. The
difference is a per-channel shift and scale of the inputs, which the BatchNorm after the
first layer of every network here largely absorbs; only padded borders differ.)

The MNIST and CIFAR files are uint8 arrays that load in one or two seconds, so they are read
directly; decoded ImageNet subsets are cached as .npz next to the data.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import pickle
import struct
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tunegap.data import DEFAULT_DATA_DIR, TensorData, _save_npz_atomically
from tunegap.registry import lookup


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset without loading it."""

    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo(num_classes=10, input_shape=(1, 40)),
    "mnist": DatasetInfo(10, (1, 28, 28), (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": DatasetInfo(1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalize_images(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 NCHW -> float32 (x / 255 - mean) / std per channel."""
    # torch.tensor copies (the idx reader's arrays are read-only views); one fused
    # scale-and-shift pass after the conversion is several times faster than three passes.
    x = torch.tensor(images).float()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    return x.mul_(1.0 / (255.0 * std_t)).add_(-mean_t / std_t)


def _root(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so parallel trials download or extract one copy, not several."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run unlocked
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_or_raise(dataset: str, root: Path, not_found: str, download: bool) -> None:
    """Download into `root` with torchvision (its layout) where asked and possible.

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
    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    try:
        with _file_lock(root / f".{dataset}.download.lock"):
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
    except Exception as err:
        raise FileNotFoundError(f"{not_found} (download with torchvision failed: {err})") from err


# ---------------------------------------------------------------------------------- MNIST

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


def load_mnist(*, data_dir: str | Path | None = None, download: bool = True) -> TensorData:
    """MNIST, 60,000 train / 10,000 test 1x28x28 images, from the four idx files.

    Looks in `data_dir`, `data_dir/MNIST/raw` (torchvision's layout) and `data_dir/mnist`;
    each file may be plain or gzipped.
    """
    root = _root(data_dir)
    files = _find_mnist(root)
    if files is None:
        where = ", ".join(str(d) for d in _mnist_dirs(root))
        not_found = (
            f"MNIST not found: looked for train-images-idx3-ubyte[.gz] and the three other idx "
            f"files in {where}; download them from {MNIST_URL} (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            f"into {root}, or pass --data-dir"
        )
        _download_or_raise("mnist", root, not_found, download)
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


# ---------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    archive: str


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_CIFAR = {
    "cifar10": _CifarLayout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key=b"labels",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": _CifarLayout(
        title="CIFAR-100",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key=b"fine_labels",
        archive="cifar-100-python.tar.gz",
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


def _load_cifar(dataset: str, data_dir: str | Path | None, download: bool) -> TensorData:
    layout = _CIFAR[dataset]
    root = _root(data_dir)
    folder = root / layout.folder
    needed = [folder / name for name in layout.train + layout.test]
    archive = root / layout.archive
    if not all(p.is_file() for p in needed) and archive.is_file():
        with _file_lock(root / f".{dataset}.extract.lock"):
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
        _download_or_raise(dataset, root, not_found, download)
        if not all(p.is_file() for p in needed):
            raise FileNotFoundError(not_found)
    info = DATASET_INFO[dataset]
    assert info.mean is not None and info.std is not None
    splits = {}
    for split, names in (("train", layout.train), ("test", layout.test)):
        parts = [read_cifar_batch(folder / name, layout.label_key) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and not 0 <= labels.min() <= labels.max() < info.num_classes:
            raise ValueError(f"{folder}: labels outside 0..{info.num_classes - 1}")
        splits[split] = (normalize_images(images, info.mean, info.std), torch.from_numpy(labels))
    return TensorData(
        name=dataset,
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        num_classes=info.num_classes,
    )


def load_cifar10(*, data_dir: str | Path | None = None, download: bool = True) -> TensorData:
    """CIFAR-10, 50,000 train / 10,000 test 3x32x32 images.

    Reads `data_dir/cifar-10-batches-py/` (data_batch_1..5, test_batch), extracting
    `data_dir/cifar-10-python.tar.gz` first if only the archive is there.
    """
    return _load_cifar("cifar10", data_dir, download)


def load_cifar100(*, data_dir: str | Path | None = None, download: bool = True) -> TensorData:
    """CIFAR-100 with its 100 fine labels, 50,000 train / 10,000 test 3x32x32 images.

    Reads `data_dir/cifar-100-python/` (train, test), extracting
    `data_dir/cifar-100-python.tar.gz` first if only the archive is there.
    """
    return _load_cifar("cifar100", data_dir, download)


# ------------------------------------------------------------------------------- ImageNet

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp")
IMAGENET_URL = "https://image-net.org/download.php"


def _pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "reading ImageNet needs Pillow to decode the images: pip install pillow"
        ) from err
    return Image


def find_imagenet(data_dir: str | Path | None = None) -> Path:
    """The folder holding `train/` and `val/` class folders, or one clear FileNotFoundError."""
    root = _root(data_dir)
    candidates = [root, root / "imagenet", root / "ILSVRC2012"]
    for folder in candidates:
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    raise FileNotFoundError(
        "ImageNet not found: looked for train/<class>/*.JPEG and val/<class>/* in "
        f"{', '.join(str(c) for c in candidates)}; get ILSVRC2012 from {IMAGENET_URL} "
        "(registration required), arrange train/ and val/ as one folder per class (the "
        "ImageFolder layout; torchvision cannot download it), and pass --data-dir"
    )


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


def _decode_resize_center_crop(path: Path, resize: int, size: int) -> np.ndarray:
    """Shorter side to `resize`, centre `size` x `size` crop, as uint8 HWC RGB."""
    image_module = _pil_image()
    with image_module.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = resize / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), image_module.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _random_resized_crop(
    img: Any, size: int, image_module: Any, generator: torch.Generator | None = None
) -> Any:
    """Inception-style crop (8%-100% of the area, aspect 3/4-4/3), resized to `size`.

    The authors' ImageNet training transform (RandomSizedCrop + flip). Randomness from
    `generator`, or where it is None from torch's global generator (which a DataLoader
    seeds per worker).
    """
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=generator))
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            break
    else:  # no crop fitted: the whole image's centre square
        cw = ch = min(w, h)
        left, top = (w - cw) // 2, (h - ch) // 2
    return img.resize(
        (size, size), image_module.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
    )


class ImageFolderDataset(Dataset):
    """An ImageFolder split decoded image by image: for ImageNet, which does not fit in memory.

    `train=True` gives the authors' training transform (random-resized crop + horizontal
    flip), `train=False` the evaluation one (shorter side to `resize`, centre crop). Items
    are (float32 CHW normalized image, int label). `max_per_class` keeps the first images of
    each class (sorted by name), for a subset.

    An index may be `(index, seed)`: the training transform of that item then draws from a
    generator seeded with `seed` alone, so the image does not depend on which DataLoader
    worker decodes it (`StreamingLoader` passes one seed per sample and epoch). A plain
    index draws from torch's global generator.
    """

    def __init__(
        self,
        split_dir: str | Path,
        *,
        train: bool,
        classes: Sequence[str] | None = None,
        image_size: int = 224,
        resize: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        max_per_class: int | None = None,
    ) -> None:
        self.classes, self.samples = list_image_folder(split_dir, classes)
        if max_per_class is not None:
            self.samples = _per_class(self.samples, max_per_class)
        self.train = train
        self.image_size = image_size
        self.resize = resize
        info = DATASET_INFO["imagenet"]
        self.mean = torch.tensor(mean or info.mean).view(-1, 1, 1)
        self.std = torch.tensor(std or info.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        generator = None
        if isinstance(index, tuple):
            index, seed = index
            generator = torch.Generator().manual_seed(seed)
        return self.load(index, train=self.train, generator=generator)

    def load(
        self, index: int, *, train: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, int]:
        """Item `index` with the training (`train=True`) or the evaluation transform."""
        path, label = self.samples[index]
        if train:
            image_module = _pil_image()
            with image_module.open(path) as img:
                img = _random_resized_crop(
                    img.convert("RGB"), self.image_size, image_module, generator
                )
                array = np.asarray(img, dtype=np.uint8)
            if bool(torch.rand((), generator=generator) < 0.5):
                array = array[:, ::-1]
        else:
            array = _decode_resize_center_crop(path, self.resize, self.image_size)
        x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255)
        return x.sub_(self.mean).div_(self.std), label


def imagenet_loaders(
    *,
    batch_size: int,
    data_dir: str | Path | None = None,
    workers: int = 8,
    image_size: int = 224,
    eval_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Streaming (train, val) loaders over an ImageFolder ImageNet, with pinned memory.

    Plain DataLoaders for use outside the engine; `tunegap.train.Engine` streams through
    `load_imagenet_streaming` and `StreamingLoader` (seeded, restorable shuffling).
    """
    root = find_imagenet(data_dir)
    train = ImageFolderDataset(root / "train", train=True, image_size=image_size)
    val = ImageFolderDataset(
        root / "val", train=False, classes=train.classes, image_size=image_size
    )
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
    }
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=False, **common),
        DataLoader(val, batch_size=eval_batch_size or batch_size, shuffle=False, **common),
    )


# ------------------------------------------------------------------ streaming for the engine


@dataclass(frozen=True)
class StreamingData:
    """A train/test split read from disk batch by batch: the engine's data when a workload
    streams (`Workload.streaming`), the counterpart of the in-memory `TensorData`.

    `train` decodes with the training transform, `test` with the evaluation one; both are
    `ImageFolderDataset`s over the same class list.
    """

    name: str
    train: ImageFolderDataset
    test: ImageFolderDataset
    num_classes: int

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    def train_subset(self, count: int, *, workers: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` training images spread evenly over the split (all classes, not the first
        one alone), with the evaluation transform: a fixed batch for the sharpness probe."""
        n = len(self.train)
        k = min(count, n)
        indices = [i * n // k for i in range(k)]

        def load(i: int) -> tuple[torch.Tensor, int]:
            return self.train.load(i, train=False)

        # Pillow releases the GIL while decoding, so threads decode in parallel.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            items = list(pool.map(load, indices))
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def load_imagenet_streaming(
    *,
    data_dir: str | Path | None = None,
    image_size: int = 224,
    resize: int | None = None,
    max_per_class: int | None = None,
) -> StreamingData:
    """An ImageFolder ImageNet (`train/<class>/*`, `val/<class>/*`) to stream from disk.

    Training images get the authors' random-resized crop + flip at `image_size`, validation
    images the shorter side resized to `resize` (default `image_size * 8/7`: 256 for 224)
    and a centre crop. `max_per_class` keeps the first images of each class in both splits.
    """
    root = find_imagenet(data_dir)
    if resize is None:
        resize = round(image_size * 256 / 224)
    common: dict[str, Any] = {
        "image_size": image_size,
        "resize": resize,
        "max_per_class": max_per_class,
    }
    train = ImageFolderDataset(root / "train", train=True, **common)
    test = ImageFolderDataset(root / "val", train=False, classes=train.classes, **common)
    if not len(train) or not len(test):
        raise FileNotFoundError(
            f"ImageNet in {root} has {len(train)} training and {len(test)} validation images "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)}: both splits need images"
        )
    return StreamingData(name="imagenet", train=train, test=test, num_classes=len(train.classes))


# Datasets a Workload may stream (`Workload.streaming=True`): name -> reader of StreamingData.
STREAMING_DATASETS: dict[str, Any] = {"imagenet": load_imagenet_streaming}


def load_streaming_dataset(name: str, **kwargs: Any) -> StreamingData:
    """Open a dataset for streaming by name (see `STREAMING_DATASETS`)."""
    return lookup(STREAMING_DATASETS, name, f"dataset {name!r} cannot stream")(**kwargs)


class _ChunkSampler(Sampler[list[Any]]):
    """Index lists of at most `chunk_size` samples that never straddle two batches of
    `batch_size`, so the loader can join them back into exactly the batches of the epoch.

    With a generator: each epoch one permutation and one seed per sample, both drawn from
    it, and the items are `(index, seed)`; without: plain indices in order.
    """

    def __init__(
        self, size: int, batch_size: int, chunk_size: int, generator: torch.Generator | None
    ) -> None:
        self.size, self.batch_size, self.chunk_size = size, batch_size, chunk_size
        self.generator = generator

    def __len__(self) -> int:
        full, last = divmod(self.size, self.batch_size)
        per_batch = -(-self.batch_size // self.chunk_size)
        return full * per_batch + -(-last // self.chunk_size)

    def __iter__(self) -> Iterator[list[Any]]:
        items: list[Any]
        if self.generator is None:
            items = list(range(self.size))
        else:
            order = torch.randperm(self.size, generator=self.generator)
            seeds = torch.randint(0, 2**62, (self.size,), generator=self.generator)
            items = list(zip(order.tolist(), seeds.tolist(), strict=True))
        for start in range(0, self.size, self.batch_size):
            end = min(start + self.batch_size, self.size)
            for chunk in range(start, end, self.chunk_size):
                yield items[chunk : min(chunk + self.chunk_size, end)]


class StreamingLoader:
    """Batches of a map-style dataset, decoded by DataLoader worker processes, on `device`.

    The streaming counterpart of `tunegap.data.DeviceLoader`, with the same interface
    (`len`, iteration, `state_dict`): with `shuffle`, each epoch's order and each sample's
    seed for its random transform (items are `(index, seed)`, see `ImageFolderDataset`) are
    drawn in the main process from one seeded CPU generator, so a seed gives the same
    batches whatever `num_workers` is, and restoring the generator state between epochs
    continues with the same order. The last batch may be smaller: no sample is dropped.

    Workers decode chunks of at most `chunk_size` images that the main process moves to the
    device (from pinned memory on CUDA) and joins there into batches, so a batch of 4096
    does not wait on one worker, and host memory in flight stays at about
    num_workers * 2 chunks. Workers start per epoch (no persistent workers): nothing lingers
    between epochs, and their own RNG is not used by the transform.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        chunk_size: int = 128,
    ) -> None:
        if batch_size < 1 or chunk_size < 1 or num_workers < 0:
            raise ValueError(
                f"batch_size {batch_size} and chunk_size {chunk_size} must be >= 1, "
                f"num_workers {num_workers} >= 0"
            )
        self.size = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        sampler = _ChunkSampler(
            self.size, batch_size, min(chunk_size, batch_size), self.generator if shuffle else None
        )
        self.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            # Only seeds the workers' own RNG (base seed per epoch); not checkpointed, as
            # the transform draws from the per-sample seeds above.
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        have, start = 0, 0
        for x, y in self.loader:
            xs.append(x.to(self.device, non_blocking=True))
            ys.append(y.to(self.device, non_blocking=True))
            have += y.shape[0]
            if have == min(self.batch_size, self.size - start):
                if len(xs) == 1:
                    yield xs[0], ys[0]
                else:
                    yield torch.cat(xs), torch.cat(ys)
                xs, ys = [], []
                start += have
                have = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def _decode_split(
    samples: Sequence[tuple[Path, int]], resize: int, size: int, workers: int
) -> np.ndarray:
    out = np.empty((len(samples), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        out[i] = _decode_resize_center_crop(samples[i][0], resize, size).transpose(2, 0, 1)

    # Pillow releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(len(samples))))
    return out


def load_imagenet(
    *,
    data_dir: str | Path | None = None,
    image_size: int = 224,
    resize: int = 256,
    max_per_class: int | None = None,
    max_gib: float = 16.0,
    workers: int | None = None,
    cache: bool = True,
) -> TensorData:
    """An ImageFolder ImageNet (or a subset of it) decoded into memory as `TensorData`.

    Full ImageNet is about 770 GiB as float32 224x224 tensors: far too big. This loads a
    subset (`max_per_class` images per class from each split) when it fits in `max_gib`, and
    otherwise refuses with a ValueError pointing to `ImageFolderDataset` / `imagenet_loaders`,
    which stream from disk. Every image is resized (shorter side `resize`) and centre-cropped
    to `image_size`; training augmentation is then the loader's job (e.g. "crop_flip").
    Decoded subsets are cached as .npz in the ImageNet folder when it is writable.
    """
    root = find_imagenet(data_dir)
    classes, train = list_image_folder(root / "train")
    _, test = list_image_folder(root / "val", classes)
    if max_per_class is not None:
        train, test = _per_class(train, max_per_class), _per_class(test, max_per_class)
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
            "streaming=True, or tunegap.datasets.imagenet_loaders)"
        )
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
                _save_npz_atomically(cache_path, x_train=x_train, x_test=x_test)
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


def _per_class(samples: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    counts: dict[int, int] = {}
    kept = []
    for path, label in samples:
        if counts.get(label, 0) < limit:
            counts[label] = counts.get(label, 0) + 1
            kept.append((path, label))
    return kept
