"""The authors' input pipelines (github.com/eladhoffer/bigBatch), for `--protocol authors`.

bigBatch builds its transforms in preprocess.py `get_transform` unless the model file has
its own `input_transform` (only AlexNet does):

* MNIST: ``Pad(2, fill=0)`` (black) + RandomCrop(28) + flip, normalized with mean = std = 0.5.
* CIFAR-10/100: ``Pad(4, fill=127)`` + RandomCrop(32) + flip, normalized with ImageNet's
  mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225). The fill is the int 127 on an RGB
  PIL image, which 2017 torchvision passed to ``ImageOps.expand`` as is, and Pillow reads an
  int colour of a 3-band image as packed RGB: the "grey" pad is (127, 0, 0), dark red
  (checked with Pillow: ``ImageOps.expand(rgb, 1, fill=127).getpixel((0, 0)) == (127, 0,
  0)``). Later torchvision (which spreads a number over the bands) would pad grey
  (127, 127, 127); `AUTHORS_CIFAR_FILL` is what the authors' code ran with.
* ImageNet (AlexNet's `input_transform`): train Scale(256) (shorter side to 256) +
  RandomCrop(224) + flip, evaluation Scale(256) + CenterCrop(224), ImageNet mean/std.

Our defaults differ (each dataset's own mean/std, zero padding of normalized images, i.e.
the mean colour; torchvision's RandomResizedCrop for ImageNet); `authors_pipeline` gives the
dataset kwargs and augmentation name that select the authors' instead.
"""

from __future__ import annotations

import functools
from typing import Any

from tunegap.data.catalog import AUTHORS_STATS, DATASETS
from tunegap.data.cifar import load_cifar10, load_cifar100
from tunegap.data.imagenet import load_imagenet
from tunegap.data.mnist import load_mnist
from tunegap.data.streaming import STREAMING_DATASETS, load_imagenet_streaming
from tunegap.data.tensors import AUGMENTATIONS, random_crop_flip

__all__ = ["AUTHORS_CIFAR_FILL", "AUTHORS_MNIST_FILL", "authors_fill", "authors_pipeline"]

# Pad colours as uint8 pixel values, before normalization (see the module docstring).
AUTHORS_MNIST_FILL: tuple[int, ...] = (0,)
AUTHORS_CIFAR_FILL: tuple[int, ...] = (127, 0, 0)


def authors_fill(dataset: str, pixel: tuple[int, ...]) -> tuple[float, ...]:
    """`pixel` (uint8 per channel) in the units of `dataset` normalized the authors' way."""
    mean, std = AUTHORS_STATS[dataset]
    return tuple((p / 255.0 - m) / s for p, m, s in zip(pixel, mean, std, strict=True))


# Only right on data loaded with normalize="authors": the fill is in those units.
AUGMENTATIONS.add(
    "mnist_authors",
    functools.partial(random_crop_flip, padding=2, fill=authors_fill("mnist", AUTHORS_MNIST_FILL)),
)
AUGMENTATIONS.add(
    "cifar_authors",
    functools.partial(
        random_crop_flip, padding=4, fill=authors_fill("cifar10", AUTHORS_CIFAR_FILL)
    ),
)

# dataset -> (its built-in reader, the authors' augmentation); a dataset registered under the
# same name by a user (replace=True) is theirs, not ours, and is left alone.
_IN_MEMORY: dict[str, tuple[Any, str]] = {
    "mnist": (load_mnist, "mnist_authors"),
    "cifar10": (load_cifar10, "cifar_authors"),
    "cifar100": (load_cifar100, "cifar_authors"),
}


def authors_pipeline(
    dataset: str, augment: str | None, dataset_kwargs: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """(dataset kwargs, augmentation name) that reproduce bigBatch's input pipeline.

    MNIST and CIFAR-10/100 get ``normalize="authors"`` and the authors' pad-crop-flip
    ("mnist_authors", "cifar_authors"; bigBatch always augments these, so the workload's
    own augmentation is replaced); ImageNet gets ``train_transform="scale_crop"`` (streamed:
    Scale(resize=256) + RandomCrop(224) + flip; its evaluation transform already is
    Scale(256) + CenterCrop(224)) and keeps `augment`, which only in-memory data uses
    (in-memory ImageNet refuses "scale_crop"). Any other dataset (mnist1d, a user's)
    comes back unchanged. `dataset_kwargs` is not modified.
    """
    kwargs = dict(dataset_kwargs)
    if dataset in _IN_MEMORY:
        reader, authors_augment = _IN_MEMORY[dataset]
        if dataset in DATASETS and DATASETS.get(dataset) is reader:
            kwargs["normalize"] = "authors"
            return kwargs, authors_augment
        return kwargs, augment
    if dataset == "imagenet" and _builtin_imagenet():
        kwargs["train_transform"] = "scale_crop"
    return kwargs, augment


def _builtin_imagenet() -> bool:
    # Both readers take train_transform; a user's replacement may not.
    return (
        "imagenet" in DATASETS
        and DATASETS.get("imagenet") is load_imagenet
        and "imagenet" in STREAMING_DATASETS
        and STREAMING_DATASETS.get("imagenet") is load_imagenet_streaming
    )
