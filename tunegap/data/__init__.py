"""Datasets by name, as device-resident tensors or streamed from disk.

`load_dataset("cifar10")` returns a `TensorData` for `DeviceLoader`;
`load_streaming_dataset("imagenet")` a `StreamingData` for `StreamingLoader`. Each on-disk
format has its own reader module (`mnist1d`, `mnist`, `cifar`, `imagenet`), read without
torchvision, and registers itself with `register_dataset` when this package is imported; a
user registers their own the same way (see `register_dataset`). `authors_pipeline` gives the
dataset kwargs and augmentation of the authors' input pipelines (`--protocol authors`).
"""

from __future__ import annotations

# Importing the reader modules fills DATASETS and STREAMING_DATASETS.
from tunegap.data.cache import DEFAULT_DATA_DIR
from tunegap.data.catalog import (
    DATASET_INFO,
    DATASETS,
    DatasetInfo,
    load_dataset,
    register_dataset,
)
from tunegap.data.cifar import load_cifar10, load_cifar100, read_cifar_batch
from tunegap.data.fashion_mnist import load_fashion_mnist
from tunegap.data.imagenet import find_imagenet, list_image_folder, load_imagenet
from tunegap.data.mnist import load_mnist, read_idx
from tunegap.data.mnist1d import load_mnist1d
from tunegap.data.protocols import authors_pipeline
from tunegap.data.streaming import (
    STREAMING_DATASETS,
    ImageFolderDataset,
    StreamingData,
    StreamingLoader,
    load_imagenet_streaming,
    load_streaming_dataset,
)
from tunegap.data.tensors import (
    AUGMENTATIONS,
    Augment,
    DeviceLoader,
    TensorData,
    get_augment,
    normalize_images,
    random_crop_flip,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DATASET_INFO",
    "DEFAULT_DATA_DIR",
    "STREAMING_DATASETS",
    "Augment",
    "DatasetInfo",
    "DeviceLoader",
    "ImageFolderDataset",
    "StreamingData",
    "StreamingLoader",
    "TensorData",
    "authors_pipeline",
    "find_imagenet",
    "get_augment",
    "list_image_folder",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_fashion_mnist",
    "load_imagenet",
    "load_imagenet_streaming",
    "load_mnist",
    "load_mnist1d",
    "load_streaming_dataset",
    "normalize_images",
    "random_crop_flip",
    "read_cifar_batch",
    "read_idx",
    "register_dataset",
]
