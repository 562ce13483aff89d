"""The engine's streaming path: an ImageFolder tree read from disk by DataLoader workers.

A tiny tree (3 classes x 8 training / 4 validation noisy 40x40 PNGs) and Keskar's C1 at
32x32 through a test workload that streams the "imagenet" dataset: metrics and update
counts, determinism for a seed with and without worker processes, and checkpoint restore.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tunegap.config import TrialConfig
from tunegap.data import (
    ImageFolderDataset,
    StreamingData,
    StreamingLoader,
    load_imagenet_streaming,
)
from tunegap.engine import Engine
from tunegap.names import METRIC_NAMES
from tunegap.regime import Regime
from tunegap.train import main
from tunegap.trial_data import load_workload_data
from tunegap.workloads import Workload, get_workload, register_workload

NAME = "stream-test-c1"
CLASSES = {"n01": (200, 40, 40), "n02": (40, 200, 40), "n03": (40, 40, 200)}
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 4
N_TRAIN, N_VAL = 3 * TRAIN_PER_CLASS, 3 * VAL_PER_CLASS


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR with DIR/train/<class>/*.png and DIR/val/<class>/*.png: class colour plus noise,
    so random crops of one image differ."""
    from PIL import Image as image
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for wnid, colour in CLASSES.items():
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.asarray(colour) + rng.normal(0, 40, (40, 40, 3))
                img = image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
                img.save(folder / f"{wnid}_{i}.png")
    return root


@pytest.fixture
def workload() -> Workload:
    """A streaming workload with a small model and 32x32 crops, registered afresh per test
    (the registry has no removal; the test name stays registered, harmlessly)."""
    w = Workload(
        name=NAME,
        model="c1",
        dataset="imagenet",
        streaming=True,
        dataset_kwargs={"image_size": 32},
        regime=Regime(
            base_lr=0.05,
            base_batch_size=10,
            epochs=2,
            decay_epochs=(1,),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            clip_norm=5.0,
        ),
        eval_batch_size=5,
        cpus_per_trial=2.0,
    )
    return register_workload(w, replace=True)


def make_config(root: Path, **kw: object) -> TrialConfig:
    base: dict[str, object] = dict(workload=NAME, batch_size=10, device="cpu", data_dir=str(root))
    base.update(kw)
    return TrialConfig(**base)  # type: ignore[arg-type]


def without_time(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "seconds"}


def test_a_streaming_workload_opens_its_folders_instead_of_loading_them(tree, workload):
    data = load_workload_data(make_config(tree))
    assert isinstance(data, StreamingData) and isinstance(data.train, ImageFolderDataset)
    assert (data.train_size, data.test_size, data.num_classes) == (N_TRAIN, N_VAL, 3)
    x, y = data.train[(5, 11)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    # An (index, seed) item is a function of the seed: the same crop every time, others apart.
    assert torch.equal(x, data.train[(5, 11)][0]) and not torch.equal(x, data.train[(5, 12)][0])
    assert data.test.resize == 37  # 32 * 256/224: the 256-for-224 ratio of the eval transform
    # ImageNet AlexNet streams by default, at the authors' 224.
    alexnet = get_workload("imagenet-alexnet")
    assert alexnet.streaming and "image_size" not in alexnet.dataset_kwargs


def test_only_datasets_that_can_stream_may_be_streamed(workload):
    with pytest.raises(ValueError, match=r"cannot stream: use one of imagenet"):
        Workload(name="x", model="c1", dataset="cifar10", regime=workload.regime, streaming=True)


def test_two_epochs_report_every_metric_and_count_updates(tree, workload):
    engine = Engine(make_config(tree), num_workers=0)
    assert engine.streaming and engine.resolved.updates_per_epoch == math.ceil(N_TRAIN / 10)
    history = engine.run()
    assert [m["epoch"] for m in history] == [1, 2] and engine.done
    assert [m["updates"] for m in history] == [3, 6]  # ceil(24 / 10) per epoch
    for m in history:
        assert set(METRIC_NAMES) <= set(m) and m["diverged"] is False
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_loss"])
        assert 0 <= m["train_acc"] <= 100 and 0 <= m["test_acc"] <= 100
        assert m["train_test_gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
        assert m["weight_distance"] > 0
    # Test accuracy is over the 12 validation images: a multiple of 100/12.
    assert history[-1]["test_acc"] * N_VAL / 100 == pytest.approx(
        round(history[-1]["test_acc"] * N_VAL / 100)
    )
    assert history[1]["lr"] == pytest.approx(0.005)  # decayed x0.1 at epoch 1


def test_same_seed_same_run_with_or_without_workers_other_seed_other_run(tree, workload):
    in_process = Engine(make_config(tree), num_workers=0).run()
    again = Engine(make_config(tree), num_workers=0).run()
    two_workers = Engine(make_config(tree), num_workers=2).run()
    two_workers_again = Engine(make_config(tree), num_workers=2).run()
    other_seed = Engine(make_config(tree, seed=1), num_workers=0).run()
    expected = [without_time(m) for m in in_process]
    assert [without_time(m) for m in again] == expected
    assert [without_time(m) for m in two_workers] == [without_time(m) for m in two_workers_again]
    # Order and each sample's crop come from the main process's generator: workers change
    # nothing about the batches.
    assert [without_time(m) for m in two_workers] == expected
    assert other_seed[-1]["train_loss"] != in_process[-1]["train_loss"]


def test_restore_from_checkpoint_continues_identically(tree, workload):
    config = make_config(tree, epochs=3, ghost_batch_size=5, lr_exponent=0.5)
    straight = Engine(config, num_workers=2).run()
    assert len(straight) == 3

    first = Engine(config, num_workers=2)
    first.train_epoch()
    buffer = io.BytesIO()
    state = first.state_dict()
    assert set(state) == {
        "config", "model", "optimizer", "loader", "initial_params", "epoch", "updates",
        "diverged", "torch_rng", "cuda_rng",
    }  # fmt: skip
    assert set(state["loader"]) == {"generator"}  # the same format as the in-memory loader
    torch.save(state, buffer)
    del first
    buffer.seek(0)
    resumed = Engine(config, num_workers=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    rest = resumed.run()
    assert [without_time(m) for m in rest] == [without_time(m) for m in straight[1:]]


def test_loader_batches_are_seeded_restorable_and_independent_of_workers_and_chunks(tree):
    data = load_imagenet_streaming(data_dir=tree, image_size=16)

    def epoch(loader: StreamingLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(loader)

    a = StreamingLoader(data.train, batch_size=10, seed=3, num_workers=0)
    b = StreamingLoader(data.train, batch_size=10, seed=3, num_workers=2, chunk_size=3)
    assert len(a) == len(b) == 3
    a1, b1 = epoch(a), epoch(b)
    assert [y.shape[0] for _, y in a1] == [10, 10, 4]  # no sample dropped
    assert sorted(torch.cat([y for _, y in a1]).tolist()) == sorted(
        label for _, label in data.train.samples
    )
    for (xa, ya), (xb, yb) in zip(a1, b1, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[1:] == (3, 16, 16)
    state = a.state_dict()
    a2 = epoch(a)
    assert not torch.equal(a2[0][0], a1[0][0])  # a new order (and new crops) each epoch
    restored = StreamingLoader(data.train, batch_size=10, seed=3, num_workers=0)
    restored.load_state_dict(state)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
        for p, q in zip(epoch(restored), a2, strict=True)
    )
    other = epoch(StreamingLoader(data.train, batch_size=10, seed=4, num_workers=0))
    assert not torch.equal(other[0][0], a1[0][0])
    # Unshuffled (evaluation): the folder in order, the centre crop, the same every time.
    val = StreamingLoader(data.test, batch_size=5, shuffle=False, num_workers=0)
    labels = torch.cat([y for _, y in val]).tolist()
    assert labels == [label for _, label in data.test.samples]
    assert torch.equal(next(iter(val))[0], next(iter(val))[0])


def test_sharpness_and_noise_probes_run_on_streamed_data(tree, workload):
    engine = Engine(
        make_config(tree, epochs=1, sharpness_every=1, noise_scale_every=1), num_workers=0
    )
    m = engine.train_epoch()
    assert math.isfinite(m["sharpness"])
    x, y = engine.sharpness_samples()  # decoded once: training images of every class
    assert engine.sharpness_samples()[0] is x
    assert x.shape == (N_TRAIN, 3, 32, 32) and set(y.tolist()) == {0, 1, 2}


def test_cli_trains_a_streaming_workload(tree, workload, capsys):
    argv = ["--workload", NAME, "--batch-size", "10", "--epochs", "1", "--device", "cpu",
            "--data-dir", str(tree), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"# {NAME} B=10") and "updates=3" in lines[0]
    assert lines[1].startswith("epoch    1  updates      3")
    assert lines[-1].startswith("# completed: test_acc")
    with pytest.raises(SystemExit) as stop:
        main([*argv[:-1], "-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0]


def test_a_restored_tune_trial_streams_on_as_an_uninterrupted_one(tree, workload, tmp_path):
    from tunegap.runner import trainable
    config = {"workload": NAME, "batch_size": 10, "ghost_batch_size": 5, "seed": 2,
              "epochs": 3, "device": "cpu", "data_dir": str(tree)}  # fmt: skip
    keys = ("epoch", "updates", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
            "weight_distance", "done")  # fmt: skip

    def strip(result: dict) -> dict:
        return {k: result[k] for k in keys}

    straight = trainable.GapTrainable(config=config)
    expected = [strip(straight.train()) for _ in range(3)]
    straight.stop()
    first = trainable.GapTrainable(config=config)
    first.train()
    checkpoint = first.save(str(tmp_path))
    first.stop()
    resumed = trainable.GapTrainable(config=config)
    resumed.restore(checkpoint)
    got = [strip(resumed.train()) for _ in range(2)]
    resumed.stop()
    assert got == expected[1:] and got[-1]["done"]
