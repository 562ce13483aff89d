"""Dataset readers on small files written in the real on-disk formats, and the batch
augmentation of the device loader."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tunegap.data import (
    AUGMENTATIONS,
    DATASET_INFO,
    DATASETS,
    DeviceLoader,
    ImageFolderDataset,
    get_augment,
    load_cifar10,
    load_dataset,
    load_imagenet,
    load_mnist,
    random_crop_flip,
    read_cifar_batch,
    read_idx,
)


def _torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as on yann.lecun.com: magic 0x00 0x00 0x08 ndim, big-endian dims, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(folder: Path, *, gz: bool, n_train: int = 6, n_test: int = 4) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) + 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def cifar_entry(n: int, label_key: bytes, classes: int, seed: int) -> dict:
    """A batch dict with the keys of the official python pickles."""
    rng = np.random.default_rng(seed)
    entry = {
        b"batch_label": b"training batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [v // 5 for v in entry[label_key]]
    return entry


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10(root: Path, n: int = 3) -> dict[str, dict]:
    entries = {f"data_batch_{i}": cifar_entry(n, b"labels", 10, i) for i in range(1, 6)}
    entries["test_batch"] = cifar_entry(n, b"labels", 10, 99)
    for name, entry in entries.items():
        write_pickle(root / "cifar-10-batches-py" / name, entry)
    return entries


# ------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("layout", ["plain_in_root", "gz_in_torchvision_raw"])
def test_mnist_reads_idx_files_plain_or_gzipped(tmp_path, layout):
    folder = tmp_path if layout == "plain_in_root" else tmp_path / "MNIST" / "raw"
    arrays = write_mnist(folder, gz=layout.startswith("gz"))
    data = load_mnist(data_dir=tmp_path, download=False)
    assert data.name == "mnist" and data.num_classes == 10
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    assert torch.allclose(data.x_train[:, 0], (raw - 0.1307) / 0.3081, atol=1e-6)


def test_idx_reader_checks_magic_and_size(tmp_path):
    good = tmp_path / "a-idx1-ubyte"
    write_idx(good, np.arange(5, dtype=np.uint8))
    assert read_idx(good).tolist() == [0, 1, 2, 3, 4]
    assert int.from_bytes(good.read_bytes()[:4], "big") == 2049  # the labels magic number
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(short)


def test_mnist_with_mismatched_files_is_refused(tmp_path):
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="MNIST train files do not match"):
        load_mnist(data_dir=tmp_path, download=False)


# ------------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_python_batches_with_channel_planes(tmp_path):
    entries = write_cifar10(tmp_path)
    # Image 0 of batch 1: red plane 255, green and blue 0 (rows are R(1024) G(1024) B(1024)).
    entries["data_batch_1"][b"data"][0] = np.repeat(np.array([255, 0, 0], np.uint8), 1024)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", entries["data_batch_1"])
    data = load_cifar10(data_dir=tmp_path, download=False)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    labels = [v for i in range(1, 6) for v in entries[f"data_batch_{i}"][b"labels"]]
    assert data.y_train.tolist() == labels
    assert data.y_test.tolist() == entries["test_batch"][b"labels"]
    info = DATASET_INFO["cifar10"]
    expected = [(v - m) / s for v, m, s in zip((1.0, 0.0, 0.0), info.mean, info.std, strict=True)]
    assert torch.allclose(data.x_train[0].mean((1, 2)), torch.tensor(expected), atol=1e-5)
    assert data.x_train[0].std((1, 2)).max() < 1e-6


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train, test = cifar_entry(4, b"fine_labels", 100, 1), cifar_entry(2, b"fine_labels", 100, 2)
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", test)
    data = load_dataset("cifar100", data_dir=str(tmp_path), download=False)
    assert data.num_classes == 100 and data.x_train.shape == (4, 3, 32, 32)
    assert data.y_train.tolist() == train[b"fine_labels"]
    assert data.y_test.tolist() == test[b"fine_labels"]


def test_cifar_archive_alone_is_extracted(tmp_path):
    source = tmp_path / "src"
    entries = write_cifar10(source)
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_cifar10(data_dir=archive.parent, download=False)
    assert data.y_test.tolist() == entries["test_batch"][b"labels"]
    assert (archive.parent / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_cifar_pickles_written_by_numpy_1_load(tmp_path):
    # The official files name numpy's reconstructor numpy.core.multiarray (numpy 1).
    blob = pickle.dumps(cifar_entry(2, b"labels", 10, 0), protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "batch").write_bytes(blob)
    images, labels = read_cifar_batch(tmp_path / "batch")
    assert images.shape == (2, 3, 32, 32) and labels.dtype == np.int64


class _Exploit:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": _Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*print"):
        read_cifar_batch(tmp_path / "evil")


# ----------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("name", "looked_for", "how"),
    [
        ("mnist", "train-images-idx3-ubyte", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("cifar10", "cifar-10-batches-py/data_batch_1", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python/train", "cifar-100-python.tar.gz"),
        ("imagenet", "train/<class>/*.JPEG", "image-net.org"),
    ],
)
def test_missing_data_is_one_line_saying_what_where_and_how(tmp_path, name, looked_for, how):
    kwargs = {} if name == "imagenet" else {"download": False}
    with pytest.raises(FileNotFoundError) as err:
        DATASETS.get(name)(data_dir=tmp_path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "not found" in message
    assert looked_for in message and str(tmp_path) in message and how in message
    assert "--data-dir" in message


@pytest.mark.skipif(_torchvision_loads(), reason="torchvision present: download=True would fetch")
def test_download_without_torchvision_says_so_in_the_same_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found.*needs torchvision") as err:
        load_cifar10(data_dir=tmp_path, download=True)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- ImageNet


@pytest.fixture
def image_folder(tmp_path) -> Path:
    from PIL import Image as image
    colours = {"n01": (255, 0, 0), "n02": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 1)):
        for k, (wnid, colour) in enumerate(colours.items()):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                img = image.new("RGB", (24 + 4 * i, 20), colour)
                suffix = ".JPEG" if (i + k) % 2 == 0 else ".png"
                img.save(folder / f"{wnid}_{i}{suffix}")
    (tmp_path / "imagenet" / "train" / "n01" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagenet_subset_loads_into_memory_and_is_cached(image_folder):
    data = load_imagenet(data_dir=image_folder, image_size=16, resize=18, workers=2)
    assert data.num_classes == 2 and data.x_train.shape == (6, 3, 16, 16)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [0, 1]
    # Class 0 is red, class 1 blue (JPEG is lossy: compare the channel means loosely).
    red, blue = data.x_train[0].mean((1, 2)), data.x_train[3].mean((1, 2))
    assert red[0] > 1.5 and red[2] < -1.0 and blue[2] > 1.5 and blue[0] < -1.5
    caches = list((image_folder / "imagenet").glob(".tunegap-imagenet-*.npz"))
    assert len(caches) == 1
    again = load_imagenet(data_dir=image_folder, image_size=16, resize=18)
    assert torch.equal(again.x_train, data.x_train)
    small = load_imagenet(data_dir=image_folder, image_size=16, resize=18, max_per_class=1)
    assert small.y_train.tolist() == [0, 1]


def test_imagenet_too_big_for_memory_points_to_streaming(image_folder):
    with pytest.raises(ValueError, match=r"max_per_class.*streaming=True.*load_imagenet_streaming"):
        load_imagenet(data_dir=image_folder, max_gib=1e-6)


def test_image_folder_dataset_streams_train_and_eval_transforms(image_folder):
    root = image_folder / "imagenet"
    train = ImageFolderDataset(root / "train", train=True, image_size=16)
    val = ImageFolderDataset(root / "val", train=False, classes=train.classes, image_size=16)
    assert len(train) == 6 and len(val) == 2 and train.classes == ["n01", "n02"]
    x, y = train[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert val[0][0].shape == (3, 16, 16) and val[1][1] == 1


def test_validation_classes_must_exist_in_training(image_folder):
    (image_folder / "imagenet" / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match="n99"):
        load_imagenet(data_dir=image_folder, image_size=16, resize=18)


# ------------------------------------------------------------------------ augmentation


def reference_crop_flip(x: torch.Tensor, offsets: torch.Tensor, mirror: torch.Tensor, pad: int):
    """The per-image loop the vectorized version must equal."""
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[2:]
    out = []
    for img, (dy, dx), m in zip(padded, offsets.tolist(), mirror.tolist(), strict=True):
        crop = img[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(2) if m else crop)
    return torch.stack(out)


def test_crop_flip_equals_the_per_image_loop_with_the_same_draws():
    x = torch.randn(64, 3, 8, 10)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=4)
    g = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 9, (64, 2), generator=g)
    mirror = torch.rand(64, generator=g) < 0.5
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, reference_crop_flip(x, offsets, mirror, 4))
    # Crops and flips do happen, in a fair share of the images.
    assert 16 < int(mirror.sum()) < 48 and (offsets != 4).any(1).sum() > 48


def test_crop_flip_is_deterministic_with_a_seed_and_varies_without_one():
    x = torch.randn(32, 3, 16, 16)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    c = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_disabled_is_the_identity():
    x = torch.randn(4, 3, 8, 8)
    assert random_crop_flip(x, torch.Generator(), padding=0, flip=False) is x
    assert get_augment(None) is None
    loader = DeviceLoader(x, torch.arange(4), batch_size=4, shuffle=False, augment=None)
    assert torch.equal(next(iter(loader))[0], x)


def test_flip_only_and_pad2_variants():
    x = torch.randn(16, 1, 28, 28)
    flipped = AUGMENTATIONS.get("flip")(x, torch.Generator().manual_seed(0))
    same = [torch.equal(f, i) or torch.equal(f, i.flip(2)) for f, i in zip(flipped, x, strict=True)]
    assert all(same)
    pad2 = AUGMENTATIONS.get("crop_flip_pad2")(x, torch.Generator().manual_seed(0))
    assert pad2.shape == x.shape and not torch.equal(pad2, x)


def test_loader_applies_the_augmentation_reproducibly_and_restorably():
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40)
    make = lambda: DeviceLoader(x, y, batch_size=16, seed=5, augment=get_augment("crop_flip"))  # noqa: E731
    a, b = make(), make()
    first_a = [bx for bx, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(first_a, [bx for bx, _ in b], strict=True))
    state = a.state_dict()
    second = [bx for bx, _ in a]
    c = make()
    c.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(second, [bx for bx, _ in c], strict=True))
    assert not torch.equal(first_a[0], x[:16])


def test_unknown_augmentation_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"unknown augmentation 'jitter'.*crop_flip"):
        get_augment("jitter")
    with pytest.raises(ValueError, match="NCHW"):
        random_crop_flip(torch.zeros(4, 1, 40))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_on_cuda_equals_cpu():
    x = torch.randn(128, 3, 32, 32)
    cpu = random_crop_flip(x, torch.Generator().manual_seed(0))
    gpu = random_crop_flip(x.cuda(), torch.Generator().manual_seed(0))
    assert torch.equal(gpu.cpu(), cpu)
