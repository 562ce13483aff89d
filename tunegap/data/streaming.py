"""Datasets streamed from disk batch by batch, for those that do not fit in memory.

`tunegap.train.Engine` streams a workload with `streaming=True`: `load_streaming_dataset`
opens its `StreamingData` (today only "imagenet", an ImageFolder tree decoded image by image
by `ImageFolderDataset`), and `StreamingLoader` batches it with DataLoader workers, seeded
and restorable like the in-memory `tunegap.data.DeviceLoader`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tunegap.data.catalog import DATASET_INFO
from tunegap.data.imagenet import (
    IMAGE_EXTENSIONS,
    decode_resize_center_crop,
    find_imagenet,
    keep_per_class,
    list_image_folder,
    pil_image,
)
from tunegap.registry import Registry


def _random_resized_crop(
    img: Any, size: int, image_module: Any, generator: torch.Generator | None = None
) -> Any:
    """Inception-style crop (8%-100% of the area, aspect 3/4-4/3), resized to `size`.

    torchvision's RandomResizedCrop, the usual ImageNet training transform since Goyal et
    al. 2017 (with a flip). Not the authors' AlexNet transform: bigBatch's preprocess.py
    has it (inception_preproccess) but AlexNet's own `input_transform` overrides it with
    Scale(256) + RandomCrop(224) + flip (`_scale_random_crop`, `train_transform=
    "scale_crop"`, what `--protocol authors` uses). Randomness from `generator`, or where it
    is None from torch's global generator (which a DataLoader seeds per worker).
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


def _scale_random_crop(
    img: Any, resize: int, size: int, image_module: Any, generator: torch.Generator | None = None
) -> Any:
    """Shorter side to `resize`, then a random `size` x `size` crop: the authors' AlexNet
    training transform (bigBatch models/alexnet.py `input_transform`: Scale(256) +
    RandomCrop(224), then a flip), with 2017 torchvision's Scale arithmetic (the longer
    side truncated, bilinear). Randomness as in `_random_resized_crop`."""
    w, h = img.size
    if min(w, h) != resize:
        if w < h:
            w, h = resize, int(resize * h / w)
        else:
            w, h = int(resize * w / h), resize
        img = img.resize((w, h), image_module.Resampling.BILINEAR)
    left = int(torch.randint(0, w - size + 1, (), generator=generator))
    top = int(torch.randint(0, h - size + 1, (), generator=generator))
    return img.crop((left, top, left + size, top + size))


# How `ImageFolderDataset` crops a training image (before its flip).
TRAIN_TRANSFORMS = ("random_resized_crop", "scale_crop")


class ImageFolderDataset(Dataset):
    """An ImageFolder split decoded image by image: for ImageNet, which does not fit in memory.

    `train=True` gives the training transform, `train=False` the evaluation one (shorter
    side to `resize`, centre crop). The training transform is `train_transform`:
    "random_resized_crop" (the default: torchvision's RandomResizedCrop, Goyal-style, at
    `image_size`) or "scale_crop" (the authors' AlexNet one: shorter side to `resize`, a
    random `image_size` crop), then a horizontal flip either way. Items
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
        train_transform: str = "random_resized_crop",
    ) -> None:
        if train_transform not in TRAIN_TRANSFORMS:
            raise ValueError(
                f"train_transform {train_transform!r} is not allowed: use one of "
                f"{', '.join(TRAIN_TRANSFORMS)}"
            )
        if train_transform == "scale_crop" and resize < image_size:
            raise ValueError(
                f"resize {resize} is smaller than image_size {image_size}: scale_crop crops "
                "the resized image"
            )
        self.train_transform = train_transform
        self.classes, self.samples = list_image_folder(split_dir, classes)
        if max_per_class is not None:
            self.samples = keep_per_class(self.samples, max_per_class)
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
            image_module = pil_image()
            with image_module.open(path) as img:
                img = img.convert("RGB")
                if self.train_transform == "scale_crop":
                    img = _scale_random_crop(
                        img, self.resize, self.image_size, image_module, generator
                    )
                else:
                    img = _random_resized_crop(img, self.image_size, image_module, generator)
                array = np.asarray(img, dtype=np.uint8)
            if bool(torch.rand((), generator=generator) < 0.5):
                array = array[:, ::-1]
        else:
            array = decode_resize_center_crop(path, self.resize, self.image_size)
        x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255)
        return x.sub_(self.mean).div_(self.std), label


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


# Datasets a Workload may stream (`Workload.streaming=True`): name -> reader of StreamingData.
STREAMING_DATASETS: Registry[Callable[..., StreamingData]] = Registry("streaming dataset")


def load_streaming_dataset(name: str, **kwargs: Any) -> StreamingData:
    """Open a dataset for streaming by name (see `STREAMING_DATASETS`)."""
    if name not in STREAMING_DATASETS:
        # A dataset that exists but only in memory: say "cannot stream", not "unknown".
        choices = ", ".join(STREAMING_DATASETS.names())
        raise ValueError(f"dataset {name!r} cannot stream: use one of {choices}")
    return STREAMING_DATASETS.get(name)(**kwargs)


@STREAMING_DATASETS.decorator("imagenet")
def load_imagenet_streaming(
    *,
    data_dir: str | Path | None = None,
    image_size: int = 224,
    resize: int | None = None,
    max_per_class: int | None = None,
    train_transform: str = "random_resized_crop",
) -> StreamingData:
    """An ImageFolder ImageNet (`train/<class>/*`, `val/<class>/*`) to stream from disk.

    Validation images get the shorter side resized to `resize` (default `image_size * 8/7`:
    256 for 224) and a centre crop. Training images get `train_transform` + flip:
    "random_resized_crop" (default; torchvision's RandomResizedCrop at `image_size`, the
    Goyal et al. recipe, not the authors') or "scale_crop" (the authors' AlexNet
    Scale(256) + RandomCrop(224): shorter side to `resize`, a random `image_size` crop; see
    `tunegap.data.protocols.authors_pipeline`). `max_per_class` keeps the first images of
    each class in both splits.
    """
    root = find_imagenet(data_dir)
    if resize is None:
        resize = round(image_size * 256 / 224)
    common: dict[str, Any] = {
        "image_size": image_size,
        "resize": resize,
        "max_per_class": max_per_class,
        "train_transform": train_transform,
    }
    train = ImageFolderDataset(root / "train", train=True, **common)
    test = ImageFolderDataset(root / "val", train=False, classes=train.classes, **common)
    if not len(train) or not len(test):
        raise FileNotFoundError(
            f"ImageNet in {root} has {len(train)} training and {len(test)} validation images "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)}: both splits need images"
        )
    return StreamingData(name="imagenet", train=train, test=test, num_classes=len(train.classes))


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
