"""Datasets held as tensors on the training device, a batch loader over them, augmentation.

Small datasets (MNIST-1D, MNIST, CIFAR) fit in device memory, so an epoch is a seeded random
permutation and index slicing: no DataLoader workers, no host-device copies per batch.
Augmentation (random crop after padding, horizontal flip) runs on the batch, on its device,
as one gather (`random_crop_flip`, named in `AUGMENTATIONS`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from tunegap.registry import Registry


@dataclass(frozen=True, kw_only=True)
class TensorData:
    """A train/test split as tensors; `x_*` are float32 with a channel axis.

    >>> import torch
    >>> data = TensorData(name="toy", x_train=torch.randn(100, 1, 40),
    ...                   y_train=torch.randint(0, 3, (100,)), x_test=torch.randn(20, 1, 40),
    ...                   y_test=torch.randint(0, 3, (20,)), num_classes=3)
    >>> data.train_size, data.input_shape
    (100, (1, 40))
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to_memory_format(self, memory_format: torch.memory_format) -> TensorData:
        """The same data with images laid out as `memory_format` (e.g. channels_last)."""
        return replace(
            self,
            x_train=self.x_train.contiguous(memory_format=memory_format),
            x_test=self.x_test.contiguous(memory_format=memory_format),
        )

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on `device`."""
        return TensorData(
            name=self.name,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            num_classes=self.num_classes,
        )


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


Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Per image: a random `H x W` crop of the padded image, then a coin-flip mirror.

    The standard CIFAR augmentation (pad 4, crop 32, flip), for a whole NCHW batch on its
    own device in one gather: no per-image Python loop, no host copy of the images. The
    random offsets and flips are drawn on the CPU from `generator` (the loader's, so a seed
    gives the same augmentation on every device), and only those 3 numbers per image are
    moved to the batch's device. With `padding=0` and `flip=False` the batch is returned
    as is. The padding is `fill`, one value or one per channel, in the batch's (normalized)
    units: the default 0 pads normalized images with the dataset's mean colour.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip needs an NCHW batch, got shape {tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding {padding!r} is not allowed: use an integer >= 0")
    n, c, h, w = x.shape
    if n == 0 or (padding == 0 and not flip):
        return x
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    device = x.device
    offsets, mirror = offsets.to(device, non_blocking=True), mirror.to(device, non_blocking=True)
    padded_w = w + 2 * padding
    rows = offsets[:, :1] + torch.arange(h, device=device)  # [n, h]
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # [n, w]
    cols = torch.where(mirror[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, -1)
    padded = _pad(x, padding, fill) if padding else x
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def _pad(x: torch.Tensor, padding: int, fill: float | Sequence[float]) -> torch.Tensor:
    """`x` padded by `padding` on each side with `fill` (a scalar or one value per channel)."""
    if isinstance(fill, numbers.Real):
        return F.pad(x, (padding, padding, padding, padding), value=float(fill))
    values = torch.tensor([float(v) for v in fill], dtype=x.dtype, device=x.device)
    n, c, h, w = x.shape
    if values.numel() != c:
        raise ValueError(f"fill has {values.numel()} values but the batch has {c} channels")
    padded = values.view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    return padded


# Names a Workload can give in `augment`. The geometry of padding 4 is the authors' CIFAR
# transform (pad to 40, crop 32, flip), of padding 2 their MNIST one (pad to 32, crop 28,
# flip), but these pad with the normalized mean colour (0); the authors' pad colours are
# "mnist_authors" and "cifar_authors" (tunegap.data.protocols).
AUGMENTATIONS: Registry[Augment] = Registry("augmentation")
AUGMENTATIONS.add("crop_flip", random_crop_flip)
AUGMENTATIONS.add("crop_flip_pad2", functools.partial(random_crop_flip, padding=2))
AUGMENTATIONS.add("flip", functools.partial(random_crop_flip, padding=0))


def get_augment(name: str | None) -> Augment | None:
    """The augmentation called `name` (None: no augmentation); unknown names list the known."""
    if name is None:
        return None
    if name not in AUGMENTATIONS:
        # Registry.get's line, plus the None a workload may also give.
        choices = ", ".join(AUGMENTATIONS.names())
        raise ValueError(f"unknown augmentation {name!r}: use one of {choices} or None")
    return AUGMENTATIONS.get(name)


class DeviceLoader:
    """Batches of a device-resident dataset, reshuffled each epoch by a seeded generator.

    The permutation is drawn on the CPU generator (so a seed gives the same order on every
    device) and moved to the data's device once per epoch. The last batch of an epoch may be
    smaller: no sample is dropped. `state_dict` holds the generator state for checkpoints.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        augment: Augment | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            if order is None:
                xb = self.x[start : start + self.batch_size]
                yb = self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                xb, yb = self.x[idx], self.y[idx]
            if self.augment is not None:
                xb = self.augment(xb, self.generator)
            yield xb, yb

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state: restoring it between epochs continues with the same order."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
