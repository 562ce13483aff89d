"""Missing data and batches larger than the training set are refused up front, in one line:
by `check_workload_data` (what a study calls before Ray starts) and by `tunegap train`, on
small files written in the real CIFAR, MNIST and ImageNet on-disk formats."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_datasets import write_idx, write_mnist

from tunegap.data import DATASETS, load_mnist1d, register_dataset
from tunegap.data.catalog import dataset_hooks
from tunegap.data.mnist1d import mnist1d_train_size
from tunegap.regime import Regime
from tunegap.workloads import WORKLOADS, Workload, check_workload_data, register_workload

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "tunegap.train"]

# workload -> (the data set's title in the message, a piece of the layout it names)
FILE_WORKLOADS = {
    "cifar10-c1": ("CIFAR-10", "cifar-10-batches-py/ with data_batch_1..5 and test_batch"),
    "cifar100-c3": ("CIFAR-100", "cifar-100-python/ with train and test"),
    "mnist-f1": ("MNIST", "train-images-idx3-ubyte"),
    "imagenet-alexnet": ("ImageNet", "train/<class>/*.JPEG and val/<class>/*"),
}


# ----------------------------------------------------------------------------- writers


def write_cifar(root: Path, dataset: str = "cifar10", n: int = 3) -> Path:
    """The python pickles of the official archive, `n` images each; returns their folder."""
    if dataset == "cifar10":
        folder, key, classes = root / "cifar-10-batches-py", b"labels", 10
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder, key, classes = root / "cifar-100-python", b"fine_labels", 100
        names = ["train", "test"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: [int(v) for v in rng.integers(0, classes, n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder


def write_image_folder(root: Path, per_class: int = 3) -> Path:
    from PIL import Image

    for split, count in (("train", per_class), ("val", 1)):
        for wnid, colour in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (24, 20), colour).save(folder / f"{wnid}_{i}.JPEG")
    (root / "imagenet" / "train" / "n01" / "notes.txt").write_text("not an image")
    return root / "imagenet"


def run_train(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [*TRAIN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - start


def assert_refused_in_one_line(done: subprocess.CompletedProcess, seconds: float) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m tunegap.train: error: ")
    assert seconds < 30
    return lines[0]


@pytest.fixture
def temporary_names() -> Iterator[list[tuple[str, str]]]:
    """(kind, name) of workloads and datasets a test registers, removed afterwards."""
    names: list[tuple[str, str]] = []
    yield names
    for kind, name in names:
        registry = WORKLOADS if kind == "workload" else DATASETS
        if name in registry:
            registry.remove(name)


def add_workload(names: list, name: str, dataset: str, **changes: object) -> str:
    register_workload(
        Workload(
            name=name,
            model=str(changes.pop("model", "cnn1d")),
            dataset=dataset,
            regime=Regime(base_lr=0.05, base_batch_size=4, epochs=1, decay_epochs=()),
            **changes,  # type: ignore[arg-type]
        ),
        replace=True,
    )
    names.append(("workload", name))
    return name


# ------------------------------------------------------------------- missing data: CLI


@pytest.mark.parametrize("workload", sorted(FILE_WORKLOADS))
def test_train_refuses_an_empty_data_dir_in_one_line_without_downloading(tmp_path, workload):
    title, layout = FILE_WORKLOADS[workload]
    done, seconds = run_train("--workload", workload, "--batch-size", "128",
                              "--data-dir", str(tmp_path))
    line = assert_refused_in_one_line(done, seconds)
    assert f"{title} is not in --data-dir {tmp_path}: expected" in line and layout in line
    assert "on a machine with internet" in line
    # No reader ran: it would leave a download lock or an extraction behind.
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_data_dir_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    done, seconds = run_train("--workload", "mnist-f1", "--batch-size", "128",
                              "--data-dir", str(missing))
    line = assert_refused_in_one_line(done, seconds)
    assert f"MNIST is not in --data-dir {missing}, no such folder" in line
    assert not missing.exists()


# ------------------------------------------------------------- missing data: library


@pytest.mark.parametrize("workload", sorted(FILE_WORKLOADS))
@pytest.mark.parametrize("where", ["empty", "missing", "other_data"])
def test_check_refuses_missing_data_naming_the_folder_and_layout(tmp_path, workload, where):
    title, layout = FILE_WORKLOADS[workload]
    data_dir = tmp_path / "nowhere" if where == "missing" else tmp_path
    if where == "other_data":  # a folder with some other data set in it
        write_mnist(tmp_path, gz=False) if not workload.startswith("mnist") else write_cifar(tmp_path)
    with pytest.raises(ValueError) as err:
        check_workload_data(workload, str(data_dir), [128])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{title} is not in --data-dir {data_dir}")
    assert layout in message


def test_check_without_data_dir_names_the_default_folder(monkeypatch, tmp_path):
    import tunegap.data.cache as cache

    monkeypatch.setattr(cache, "DEFAULT_DATA_DIR", tmp_path)
    default = re.escape(f"CIFAR-10 is not in {tmp_path} (the default --data-dir): expected")
    with pytest.raises(ValueError, match=f"^{default}"):
        check_workload_data("cifar10-c1", None)


def test_a_cifar_folder_missing_one_batch_names_it(tmp_path):
    (write_cifar(tmp_path) / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"data_batch_3: No such file") as err:
        check_workload_data("cifar10-c1", str(tmp_path))
    assert "data_batch_1:" not in str(err.value)


def test_a_cifar_archive_alone_is_enough_as_the_reader_extracts_it(tmp_path):
    folder = write_cifar(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    check_workload_data("cifar10-c1", str(tmp_path), [128])
    assert not (tmp_path / "cifar-10-batches-py").exists()  # checked, not extracted
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match="CIFAR-10 is not in"):
        check_workload_data("cifar10-c1", str(tmp_path))


def test_broken_or_mismatched_mnist_files_are_refused_from_their_headers(tmp_path):
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])  # a truncated download
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: the header says shape"):
        check_workload_data("mnist-f1", str(tmp_path))
    write_mnist(tmp_path, gz=False, n_train=6)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5))
    with pytest.raises(ValueError, match=r"MNIST train files do not match: 6 images .* 5 labels"):
        check_workload_data("mnist-f1", str(tmp_path))


def test_imagenet_without_images_or_with_unknown_validation_classes_is_refused(tmp_path):
    root = write_image_folder(tmp_path)
    (root / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match=r"val has class folders the training split lacks"):
        check_workload_data("imagenet-alexnet", str(tmp_path))
    for image in (root / "val").glob("*/*.JPEG"):
        image.unlink()
    with pytest.raises(ValueError, match=r"has no images in val/<class>/"):
        check_workload_data("imagenet-alexnet", str(tmp_path))


# ----------------------------------------------------------------- data that is there


@pytest.mark.parametrize("layout", ["plain", "gz_in_torchvision_raw", "plain_in_mnist"])
def test_small_mnist_passes_and_is_sized_from_its_header(tmp_path, layout):
    folder = {"plain": tmp_path, "gz_in_torchvision_raw": tmp_path / "MNIST" / "raw",
              "plain_in_mnist": tmp_path / "mnist"}[layout]
    write_mnist(folder, n_train=6, gz=layout.startswith("gz"))
    check_workload_data("mnist-f1", str(tmp_path), [1, 6])
    with pytest.raises(ValueError, match=r"^batch size 7 is larger than the 6 training examples"):
        check_workload_data("mnist-f1", str(tmp_path), [6, 7])


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_small_cifar_passes_and_is_sized_as_the_real_set(tmp_path, dataset):
    write_cifar(tmp_path, dataset)
    workload = "cifar10-c1" if dataset == "cifar10" else "cifar100-c3"
    check_workload_data(workload, str(tmp_path), [128, 4096, 50_000])
    with pytest.raises(ValueError, match=r"^batch size 65536 is larger than the 50000"):
        check_workload_data(workload, str(tmp_path), [4096, 65536])


def test_small_imagenet_passes_and_is_sized_by_counting_its_images(tmp_path, temporary_names):
    write_image_folder(tmp_path, per_class=3)
    check_workload_data("imagenet-alexnet", str(tmp_path), [6])
    with pytest.raises(ValueError, match=r"^batch size 7 is larger than the 6 training examples"):
        check_workload_data("imagenet-alexnet", str(tmp_path), [7])
    subset = add_workload(temporary_names, "test-imagenet-subset", "imagenet", model="alexnet",
                          streaming=True, dataset_kwargs={"max_per_class": 1})
    with pytest.raises(ValueError, match=r"larger than the 2 training examples"):
        check_workload_data(subset, str(tmp_path), [3])


def test_train_runs_on_small_cifar_and_refuses_a_batch_above_its_real_count(tmp_path):
    write_cifar(tmp_path, n=4)  # 20 training images
    done, seconds = run_train("--workload", "cifar10-c1", "--batch-size", "64",
                              "--data-dir", str(tmp_path))
    line = assert_refused_in_one_line(done, seconds)
    assert line.endswith("batch size 64 is larger than the 20 training examples of workload "
                         "'cifar10-c1': use at most 20")
    done, _ = run_train("--workload", "cifar10-c1", "--batch-size", "20", "--epochs", "1",
                        "--device", "cpu", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^# completed: .* updates 1 ", done.stdout.splitlines()[-1])


# ------------------------------------------------------------- batch size vs training set


def test_mnist1d_size_is_known_without_generating_it(data_dir):
    assert mnist1d_train_size() == load_mnist1d(data_dir=data_dir).train_size == 8000
    assert mnist1d_train_size(num_samples=1234) == 984
    assert load_mnist1d(num_samples=1234, data_dir=data_dir).train_size == 984


def test_train_refuses_a_batch_above_the_mnist1d_training_set(tmp_path):
    done, seconds = run_train("--batch-size", "16384", "--data-dir", str(tmp_path))
    line = assert_refused_in_one_line(done, seconds)
    assert line.endswith("batch size 16384 is larger than the 8000 training examples of "
                         "workload 'mnist1d-cnn': use at most 8000")
    assert list(tmp_path.iterdir()) == []  # refused before MNIST-1D was generated


def test_train_accepts_exactly_the_mnist1d_training_set(data_dir):
    check_workload_data("mnist1d-cnn", str(data_dir), [8000])
    done, _ = run_train("--batch-size", "8000", "--epochs", "1", "--device", "cpu",
                        "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^# completed: .* updates 1 ", done.stdout.splitlines()[-1])


def test_several_batch_sizes_above_the_training_set_are_all_named():
    with pytest.raises(ValueError, match=r"^batch sizes 8192, 16384 are larger than the 8000"):
        check_workload_data("mnist1d-cnn", None, [32, 16384, 8192, 8000, 16384])


# ------------------------------------------------------------------ user datasets, hooks


def blobs(n_train: int = 10) -> dict:
    import torch

    x = torch.randn(n_train + 4, 1, 40)
    y = torch.arange(n_train + 4) % 2
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:],
            "y_test": y[n_train:], "num_classes": 2}


def test_a_user_dataset_without_hooks_is_not_file_checked_but_sized(tmp_path, temporary_names):
    calls = []

    @register_dataset("test-blobs", replace=True)
    def test_blobs(n_train: int = 10) -> dict:
        calls.append(n_train)
        return blobs(n_train)

    temporary_names.append(("dataset", "test-blobs"))
    name = add_workload(temporary_names, "test-blobs-cnn", "test-blobs",
                        dataset_kwargs={"n_train": 12})
    check_workload_data(name, str(tmp_path / "nowhere"))  # no hook, no file check
    assert calls == []  # and no loading without batch sizes
    check_workload_data(name, str(tmp_path / "nowhere"), [12])
    with pytest.raises(ValueError, match=r"^batch size 13 is larger than the 12 training"):
        check_workload_data(name, None, [13])
    assert calls == [12, 12]


def test_declared_hooks_are_used_instead_of_loading(tmp_path, temporary_names):
    def never_loaded() -> dict:
        raise AssertionError("the dataset was loaded")

    def check(*, data_dir: str | None, **kwargs: object) -> None:
        if not (Path(str(data_dir)) / "lab.bin").is_file():
            raise FileNotFoundError(f"lab data is not in --data-dir {data_dir}: expected lab.bin")

    register_dataset("test-lab", replace=True, check=check, train_size=100)(never_loaded)
    temporary_names.append(("dataset", "test-lab"))
    name = add_workload(temporary_names, "test-lab-cnn", "test-lab")
    with pytest.raises(ValueError, match=r"^lab data is not in --data-dir .*: expected lab.bin$"):
        check_workload_data(name, str(tmp_path), [8])
    (tmp_path / "lab.bin").write_bytes(b"x")
    check_workload_data(name, str(tmp_path), [100])
    with pytest.raises(ValueError, match=r"larger than the 100 training examples"):
        check_workload_data(name, str(tmp_path), [101])


def test_replacing_a_dataset_drops_its_hooks(temporary_names):
    register_dataset("test-hooked", replace=True, train_size=5)(lambda: blobs(5))
    temporary_names.append(("dataset", "test-hooked"))
    assert dataset_hooks("test-hooked").train_size == 5
    register_dataset("test-hooked", replace=True)(lambda: blobs(7))
    assert dataset_hooks("test-hooked").train_size is None
    register_dataset("test-hooked", replace=True, train_size=9)(lambda: blobs(9))
    DATASETS["test-hooked"] = lambda: blobs(3)  # the dict-style way, around the decorator
    assert dataset_hooks("test-hooked").train_size is None
    assert dataset_hooks("mnist").check is not None and dataset_hooks("no-such").check is None


def test_train_runs_a_plugin_dataset_without_hooks_whatever_the_data_dir(tmp_path):
    plugin = tmp_path / "lab_plugin.py"
    plugin.write_text(textwrap.dedent('''
        import torch
        import tunegap

        @tunegap.register_dataset("plugin-blobs")
        def plugin_blobs() -> dict:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(24, 1, 40, generator=g)
            y = torch.arange(24) % 2
            return {"x_train": x[:16], "y_train": y[:16], "x_test": x[16:],
                    "y_test": y[16:], "num_classes": 2}

        tunegap.register_workload(tunegap.Workload(
            name="plugin-blobs-cnn", model="cnn1d", dataset="plugin-blobs",
            regime=tunegap.Regime(base_lr=0.05, base_batch_size=4, epochs=1,
                                  decay_epochs=())))
    '''))
    common = ["--plugin", str(plugin), "--workload", "plugin-blobs-cnn", "--device", "cpu",
              "--data-dir", str(tmp_path / "nowhere")]
    done, _ = run_train(*common, "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert "# completed" in done.stdout
    done, seconds = run_train(*common, "--batch-size", "17")
    assert assert_refused_in_one_line(done, seconds).endswith(
        "batch size 17 is larger than the 16 training examples of workload "
        "'plugin-blobs-cnn': use at most 16")
