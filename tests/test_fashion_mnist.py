"""Fashion-MNIST: the real files of Debian's package where installed (.ci/run installs it),
small files in the same idx format in --data-dir, and the one-line refusal of an empty one."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from study_procs import HANG_S
from test_datasets import write_mnist

from tunegap.config import TrialConfig
from tunegap.data import TensorData
from tunegap.data.fashion_mnist import DEBIAN_DIR, check_fashion_mnist, load_fashion_mnist
from tunegap.engine import Engine
from tunegap.workloads import check_workload_data, get_workload, register_workload

debian = pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_DIR}): apt-get install "
           "-y dataset-fashion-mnist",
)


@debian
def test_the_debian_files_load_with_their_own_normalization():
    data = load_fashion_mnist(download=False)
    assert tuple(data.x_train.shape) == (60_000, 1, 28, 28)
    assert tuple(data.x_test.shape) == (10_000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    # Standardized with the training set's own mean and std.
    assert abs(float(data.x_train.mean())) < 0.01 and abs(float(data.x_train.std()) - 1) < 0.01
    check_workload_data("fashion-cnn", None, [128, 2048])


@debian
def test_tunegap_train_trains_fashion_cnn_on_the_real_files(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tunegap", "train", "--workload",
                           "fashion-cnn", "--batch-size", "2048", "--epochs", "1",
                           "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=HANG_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("# completed: test_acc")
    assert float(last.split("test_acc")[1].split()[0]) > 50  # far above 10% chance


def test_files_in_data_dir_are_read_and_an_empty_one_is_refused(tmp_path):
    arrays = write_mnist(tmp_path / "fm", gz=True, n_train=20, n_test=10)
    data = load_fashion_mnist(data_dir=tmp_path / "fm", download=False)
    assert tuple(data.x_train.shape) == (20, 1, 28, 28)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].astype(np.int64).tolist()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        check_fashion_mnist(data_dir=tmp_path / "empty")
    assert "\n" not in str(err.value)
    done = subprocess.run([sys.executable, "-m", "tunegap", "train", "--workload",
                           "fashion-cnn", "--data-dir", str(tmp_path / "empty"),
                           "--batch-size", "128", "--epochs", "1"], capture_output=True,
                          text=True, timeout=HANG_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Fashion-MNIST is not in --data-dir" in lines[0]


def test_fashion_cnn_trains_channels_last_on_cpu_with_the_same_maths():
    """fashion-cnn lays its model and images out NHWC on the CPU too (`cpu_channels_last`,
    1.4x faster epochs in benchmarks/fashion_epoch.py): the same training in PyTorch's NCHW
    layout, under a copy of the workload without it, gives the same curve up to rounding."""
    g = torch.Generator().manual_seed(0)
    data = TensorData(name="fashion-mnist", x_train=torch.randn(512, 1, 28, 28, generator=g),
                      y_train=torch.randint(0, 10, (512,), generator=g),
                      x_test=torch.randn(256, 1, 28, 28, generator=g),
                      y_test=torch.randint(0, 10, (256,), generator=g), num_classes=10)
    nchw = dataclasses.replace(get_workload("fashion-cnn"), name="fashion-cnn-nchw-test",
                               cpu_channels_last=False)
    register_workload(nchw, replace=True)
    curves = {}
    for workload in ("fashion-cnn", nchw.name):
        engine = Engine(TrialConfig(workload=workload, batch_size=128, ghost_batch_size=32,
                                    epochs=2, device="cpu"), data=data)
        # The second conv's: the first's single input channel is laid out alike either way.
        conv = [m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        assert engine.channels_last == (workload == "fashion-cnn")
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) \
            == engine.channels_last
        curves[workload] = engine.run()
    for nhwc, plain in zip(curves["fashion-cnn"], curves[nchw.name], strict=True):
        assert nhwc["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
        assert nhwc["test_acc"] == pytest.approx(plain["test_acc"], abs=0.5)
