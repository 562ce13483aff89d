"""The authors' input pipelines (`tunegap.data.protocols`, `--protocol authors`) on small files
written in the real on-disk formats: normalization, pad colours, ImageNet's scale + crop,
and that every default is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_datasets import cifar_entry, write_cifar10, write_mnist, write_pickle
from tunegap.data import (
    DATASET_INFO,
    ImageFolderDataset,
    authors_pipeline,
    get_augment,
    load_dataset,
    load_imagenet,
    load_streaming_dataset,
    random_crop_flip,
    register_dataset,
)
from tunegap.data.protocols import AUTHORS_CIFAR_FILL
from tunegap.workloads import Workload, get_workload

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def expected(raw: np.ndarray, mean, std) -> torch.Tensor:
    shape = (1, -1) + (1,) * (raw.ndim - 2)
    x = torch.tensor(raw, dtype=torch.float64) / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(shape)
    s = torch.tensor(std, dtype=torch.float64).view(shape)
    return ((x - m) / s).float()


def reference_pad_crop_flip(x: torch.Tensor, seed: int, pad: int, fill) -> torch.Tensor:
    """The per-image pad (with `fill` per channel), crop and flip, with random_crop_flip's draws."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    mirror = torch.rand(n, generator=g) < 0.5
    padded = torch.stack([F.pad(x[:, k], (pad,) * 4, value=fill[k]) for k in range(c)], 1)
    out = []
    for img, (dy, dx), m in zip(padded, offsets.tolist(), mirror.tolist(), strict=True):
        crop = img[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(2) if m else crop)
    return torch.stack(out)


# ------------------------------------------------------------------------------- MNIST


def test_mnist_authors_normalization_and_black_padding(tmp_path):
    arrays = write_mnist(tmp_path, gz=False, n_train=8)
    kwargs, augment = authors_pipeline("mnist", "crop_flip_pad2", {})
    assert (kwargs, augment) == ({"normalize": "authors"}, "mnist_authors")
    data = load_dataset("mnist", data_dir=tmp_path, **kwargs)
    raw = arrays["train-images-idx3-ubyte"][:, None]
    torch.testing.assert_close(data.x_train, expected(raw, (0.5,), (0.5,)))
    # Black (0) is -1 after (x - 0.5) / 0.5; the padding is black, not the mean colour.
    white = torch.ones(64, 1, 28, 28)
    out = get_augment("mnist_authors")(white, torch.Generator().manual_seed(1))
    assert torch.equal(out, reference_pad_crop_flip(white, 1, 2, [-1.0]))
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    # The default is unchanged: MNIST's own mean/std, zero (mean-colour) padding.
    default = load_dataset("mnist", data_dir=tmp_path)
    torch.testing.assert_close(default.x_train, expected(raw, (0.1307,), (0.3081,)))
    pad2 = get_augment("crop_flip_pad2")(white, torch.Generator().manual_seed(1))
    assert torch.equal(pad2, reference_pad_crop_flip(white, 1, 2, [0.0]))


# ------------------------------------------------------------------------------- CIFAR


def test_authors_cifar_fill_is_what_pillow_made_of_fill_127():
    """bigBatch pads CIFAR with transforms.Pad(4, fill=127): ImageOps.expand with the int 127
    on an RGB image, which Pillow reads as a packed colour."""
    from PIL import Image, ImageOps

    padded = ImageOps.expand(Image.new("RGB", (2, 2), (10, 20, 30)), border=1, fill=127)
    assert padded.getpixel((0, 0)) == AUTHORS_CIFAR_FILL == (127, 0, 0)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_authors_normalization_and_padding(tmp_path, dataset):
    if dataset == "cifar10":
        raw = write_cifar10(tmp_path, n=4)["data_batch_1"][b"data"].reshape(-1, 3, 32, 32)
    else:
        train = cifar_entry(5, b"fine_labels", 100, 0)
        write_pickle(tmp_path / "cifar-100-python" / "train", train)
        write_pickle(tmp_path / "cifar-100-python" / "test", cifar_entry(2, b"fine_labels", 100, 1))
        raw = train[b"data"].reshape(-1, 3, 32, 32)
    kwargs, augment = authors_pipeline(dataset, "crop_flip", {"download": False})
    assert (kwargs, augment) == ({"download": False, "normalize": "authors"}, "cifar_authors")
    data = load_dataset(dataset, data_dir=tmp_path, **kwargs)
    torch.testing.assert_close(data.x_train[: len(raw)], expected(raw, IMAGENET_MEAN, IMAGENET_STD))
    fill = [
        (p / 255 - m) / s for p, m, s in zip((127, 0, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    x = data.x_train[:4]
    out = get_augment(augment)(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, reference_pad_crop_flip(x, 2, 4, fill))
    # Some crops do show the padding: the fill colour is in the batch.
    red = torch.tensor(fill).view(3, 1)
    assert (out.permute(1, 0, 2, 3).reshape(3, -1) - red).abs().sum(0).min() < 1e-6
    # The default is unchanged: the dataset's own mean/std.
    info = DATASET_INFO[dataset]
    default = load_dataset(dataset, data_dir=tmp_path)
    torch.testing.assert_close(default.x_train[: len(raw)], expected(raw, info.mean, info.std))


def test_bad_normalize_and_fill_are_one_line_errors(tmp_path):
    write_mnist(tmp_path, gz=False)
    with pytest.raises(
        ValueError,
        match=r"^normalize 'imagenet' is not allowed for mnist: use one of standard, authors$",
    ):
        load_dataset("mnist", data_dir=tmp_path, normalize="imagenet")
    with pytest.raises(ValueError, match="fill has 3 values but the batch has 1 channels"):
        random_crop_flip(torch.zeros(2, 1, 4, 4), fill=(0.0, 0.0, 0.0))


# ---------------------------------------------------------------------------- ImageNet


@pytest.fixture
def patterned_folder(tmp_path):
    """PNG (lossless) images, wider than tall, with a pattern no two windows share."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.png")
    return tmp_path


def scaled_reference(path, resize: int) -> np.ndarray:
    """torchvision 2017 Scale(resize): shorter side to `resize`, longer truncated, bilinear."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        size = (int(resize * w / h), resize) if w >= h else (resize, int(resize * h / w))
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR))


def test_imagenet_authors_train_transform_is_scale_then_random_crop_224(patterned_folder):
    kwargs, augment = authors_pipeline("imagenet", "crop_flip", {"max_per_class": 2})
    assert kwargs == {"max_per_class": 2, "train_transform": "scale_crop"}
    assert augment == "crop_flip"
    data = load_streaming_dataset("imagenet", data_dir=patterned_folder, **kwargs)
    train = data.train
    assert train.train_transform == "scale_crop" and train.resize == 256
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(-1, 1, 1),
        torch.tensor(IMAGENET_STD).view(-1, 1, 1),
    )
    scaled = scaled_reference(train.samples[0][0], 256)
    assert scaled.shape == (256, 295, 3)
    flips = set()
    for seed in range(6):
        x, label = train[(0, seed)]
        assert x.shape == (3, 224, 224) and label == 0
        # The same draws as the transform: left, top, then the coin for the flip.
        g = torch.Generator().manual_seed(seed)
        left = int(torch.randint(0, 295 - 224 + 1, (), generator=g))
        top = int(torch.randint(0, 256 - 224 + 1, (), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        crop = scaled[top : top + 224, left : left + 224]
        crop = crop[:, ::-1] if flip else crop
        ref = torch.from_numpy(crop.transpose(2, 0, 1).copy()).float() / 255
        # An unresized crop of the scaled image: pixel for pixel, at the scale of the whole.
        torch.testing.assert_close(x, (ref - mean) / std)
        flips.add(flip)
    assert flips == {True, False}
    # Evaluation stays Scale(256) + CenterCrop(224).
    assert data.test[0][0].shape == (3, 224, 224)


def test_imagenet_default_train_transform_is_unchanged_random_resized_crop(patterned_folder):
    root = patterned_folder / "imagenet"
    default = ImageFolderDataset(root / "train", train=True, image_size=32)
    assert default.train_transform == "random_resized_crop"
    scale_crop = ImageFolderDataset(
        root / "train", train=True, image_size=32, resize=40, train_transform="scale_crop"
    )
    # A random-resized crop is resampled from a random area: not a crop of the scaled image.
    differ = [not torch.equal(default[(0, s)][0], scale_crop[(0, s)][0]) for s in range(4)]
    assert all(differ)
    streaming = load_streaming_dataset("imagenet", data_dir=patterned_folder, image_size=32)
    assert streaming.train.train_transform == "random_resized_crop"


def test_bad_imagenet_transform_choices_are_refused(patterned_folder):
    root = patterned_folder / "imagenet"
    with pytest.raises(ValueError, match="train_transform 'inception' is not allowed"):
        ImageFolderDataset(root / "train", train=True, train_transform="inception")
    with pytest.raises(ValueError, match="resize 200 is smaller than image_size 224"):
        ImageFolderDataset(root / "train", train=True, resize=200, train_transform="scale_crop")
    # In memory the images are centre crops already: the authors' crop needs streaming.
    with pytest.raises(ValueError, match=r"scale_crop.*streaming=True"):
        load_imagenet(data_dir=patterned_folder, train_transform="scale_crop")


# ----------------------------------------------------------------------- the rest alone


def test_datasets_without_an_authors_pipeline_come_back_unchanged():
    given = {"n": 4}
    assert authors_pipeline("mnist1d", "flip", given) == ({"n": 4}, "flip")
    assert authors_pipeline("mnist1d", None, {}) == ({}, None)

    @register_dataset("protocol-toy", replace=True)
    def toy(n: int = 4) -> dict:
        x = torch.randn(n, 1, 2)
        y = torch.zeros(n, dtype=torch.int64)
        return {"x_train": x, "y_train": y, "x_test": x, "y_test": y, "num_classes": 1}

    kwargs, augment = authors_pipeline("protocol-toy", None, given)
    assert (kwargs, augment) == ({"n": 4}, None)
    assert given == {"n": 4}  # the caller's dict is not modified
    assert load_dataset("protocol-toy", **kwargs).train_size == 4


def test_workloads_accept_the_authors_augmentations():
    base = get_workload("cifar10-c1")
    for name in ("cifar_authors", "mnist_authors"):
        Workload(name="x", model="c1", dataset="cifar10", regime=base.regime, augment=name)
