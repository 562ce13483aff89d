"""Every workload builds its model for its dataset, resolves its regime, and trains."""

from __future__ import annotations

import math

import pytest
import torch

from tunegap.config import TrialConfig
from tunegap.data import DATASET_INFO, TensorData, get_augment
from tunegap.engine import Engine
from tunegap.models import build_model
from tunegap.regime import Regime
from tunegap.workloads import WORKLOADS, Workload, get_workload

TABLE1 = (
    "mnist-f1",
    "cifar10-c1",
    "cifar10-resnet44",
    "cifar10-vgg",
    "cifar100-c3",
    "cifar100-resnet44",
    "cifar100-wrn16-4",
    "imagenet-alexnet",
)


def fake_data(dataset: str) -> TensorData:
    """Random TensorData with the dataset's shape and classes (no files needed)."""
    info = DATASET_INFO[dataset]
    n_train, n_test = 4, 2  # one training step at batch 4: the big models cost seconds
    g = torch.Generator().manual_seed(0)
    return TensorData(
        name=dataset,
        x_train=torch.randn(n_train, *info.input_shape, generator=g),
        y_train=torch.randint(0, info.num_classes, (n_train,), generator=g),
        x_test=torch.randn(n_test, *info.input_shape, generator=g),
        y_test=torch.randint(0, info.num_classes, (n_test,), generator=g),
        num_classes=info.num_classes,
    )


def test_every_table1_network_has_a_workload():
    assert set(TABLE1) <= set(WORKLOADS)


@pytest.mark.parametrize("name", TABLE1)
def test_regime_resolves_at_small_and_large_batch(name):
    workload = get_workload(name)
    regime = workload.regime
    assert regime.base_batch_size in (128, 256) and workload.large_batch_size == 4096
    assert all(0 < d < regime.epochs for d in regime.decay_epochs)
    assert regime.clip_norm == 5.0
    train_size = 50_000
    small = regime.resolve(regime.base_batch_size, train_size=train_size)
    assert small.lr == regime.base_lr and small.epochs == regime.epochs
    matched = Regime(**{**regime.__dict__, "lr_exponent": 0.5, "regime_multiplier": "matched"})
    large = matched.resolve(workload.large_batch_size, train_size=train_size)
    ratio = workload.large_batch_size / regime.base_batch_size
    assert large.lr == pytest.approx(regime.base_lr * math.sqrt(ratio))
    assert large.epochs == regime.epochs * math.ceil(ratio)
    assert large.decay_epochs == tuple(d * math.ceil(ratio) for d in regime.decay_epochs)


# The authors' regime dicts ({epoch: lr} and weight decay) as their model files write them
# (bigBatch models/*.py; VGG and AlexNet from convNet.pytorch), at B0.
AUTHORS_SCHEDULES = {
    "mnist-f1": ({0: 1e-1, 10: 1e-2, 20: 1e-3, 30: 1e-4}, {0: 1e-4}),
    "cifar10-c1": ({0: 1e-3, 60: 1e-2, 120: 1e-3, 180: 1e-4}, {0: 5e-4}),
    "cifar100-c3": ({0: 1e-3, 60: 1e-2, 120: 1e-3, 180: 1e-4}, {0: 5e-4}),
    "cifar10-resnet44": ({0: 1e-1, 81: 1e-2, 122: 1e-3, 164: 1e-4}, {0: 1e-4}),
    "cifar100-resnet44": ({0: 1e-1, 81: 1e-2, 122: 1e-3, 164: 1e-4}, {0: 1e-4}),
    "cifar10-vgg": ({0: 1e-1, 60: 2e-2, 120: 4e-3, 160: 8e-4}, {0: 5e-4}),
    "cifar100-wrn16-4": ({0: 1e-1, 60: 2e-2, 120: 4e-3, 140: 1e-4}, {0: 1e-4}),
    "imagenet-alexnet": ({0: 1e-2, 10: 5e-3, 15: 1e-3, 20: 5e-4, 25: 1e-4}, {0: 5e-4, 15: 0.0}),
}


@pytest.mark.parametrize("name", TABLE1)
def test_base_schedule_is_the_authors_regime_step_by_step(name):
    regime = get_workload(name).regime
    resolved = regime.resolve(regime.base_batch_size)
    lrs, weight_decays = AUTHORS_SCHEDULES[name]
    for schedule, at in ((lrs, resolved.lr_at), (weight_decays, resolved.weight_decay_at)):
        starts = sorted(schedule)
        ends = [*starts[1:], regime.epochs]
        for start, end in zip(starts, ends, strict=True):
            for epoch in (start, end - 0.01):
                assert at(epoch) == pytest.approx(schedule[start], rel=1e-9), (name, epoch)


@pytest.mark.parametrize("name", TABLE1)
def test_workload_names_its_sources_and_resources(name):
    workload = get_workload(name)
    assert "github.com/eladhoffer" in workload.source
    assert workload.gpus_per_trial > 0 and workload.cpus_per_trial >= 1


@pytest.mark.parametrize("name", TABLE1)
def test_model_fits_its_dataset_and_augmentation_keeps_shapes(name):
    workload = get_workload(name)
    info = DATASET_INFO[workload.dataset]
    data = fake_data(workload.dataset)
    model = build_model(workload.model, num_classes=info.num_classes, **workload.model_kwargs)
    with torch.no_grad():
        assert model.eval()(data.x_test).shape == (2, info.num_classes)
    augment = get_augment(workload.augment)
    assert augment is not None
    assert augment(data.x_train, torch.Generator().manual_seed(0)).shape == data.x_train.shape


# One per kind of network (BatchNorm1d MLP, wide ResNet, ImageNet-sized): a CPU step of the
# others costs seconds each and adds nothing the model test above does not check.
@pytest.mark.parametrize("name", ["mnist-f1", "cifar100-wrn16-4", "imagenet-alexnet"])
def test_one_epoch_through_the_engine_on_fake_data(name):
    workload = get_workload(name)
    config = TrialConfig(
        workload=name, batch_size=4, ghost_batch_size=2, epochs=1, device="cpu", seed=0
    )
    torch.manual_seed(0)
    engine = Engine(config, data=fake_data(workload.dataset))
    # What the engine does once it passes the workload's augmentation to its loader.
    engine.loader.augment = get_augment(workload.augment)
    metrics = engine.train_epoch()
    assert metrics["epoch"] == 1 and engine.done
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["test_acc"] <= 100


def test_unknown_workload_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown workload 'cifar10-resnet45'") as err:
        get_workload("cifar10-resnet45")
    for name in TABLE1:
        assert name in str(err.value)


def test_unknown_augmentation_name_is_refused():
    base = get_workload("cifar10-c1")
    with pytest.raises(ValueError, match=r"augment 'rotate'.*crop_flip"):
        Workload(name="x", model="c1", dataset="cifar10", regime=base.regime, augment="rotate")
