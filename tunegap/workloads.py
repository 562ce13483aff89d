"""Named workloads: a model, a dataset and the base regime it is trained with at B0.

A study varies batch size, ghost batch size, LR exponent and regime multiplier around a
workload's base regime; everything else about the training comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunegap.data import AUGMENTATIONS
from tunegap.datasets import STREAMING_DATASETS
from tunegap.regime import Regime
from tunegap.registry import lookup


@dataclass(frozen=True)
class Workload:
    """Everything fixed about a trial except the knobs a study searches over."""

    name: str
    model: str
    dataset: str
    regime: Regime
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 2048
    # The "large batch" of the paper's Table 1 for this workload (4096 for CIFAR there).
    large_batch_size: int = 4096
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    source: str = ""
    # Training-batch augmentation, a name in `tunegap.data.AUGMENTATIONS` (None: none).
    augment: str | None = None
    # Test accuracy (percent) whose first crossing gives steps_to_target; None: not measured.
    target_test_acc: float | None = None
    # True: the dataset is too big for memory and is read from disk batch by batch by
    # DataLoader workers (`tunegap.datasets.STREAMING_DATASETS` names those that can, and
    # `dataset_kwargs` go to that reader, e.g. `image_size`); `int(cpus_per_trial)` worker
    # processes. The dataset's own training transform augments then, so `augment` only
    # applies where the engine is handed in-memory `TensorData` of this workload instead.
    streaming: bool = False

    def __post_init__(self) -> None:
        if self.streaming and self.dataset not in STREAMING_DATASETS:
            raise ValueError(
                f"workload {self.name!r} streams dataset {self.dataset!r}, which cannot "
                f"stream: use one of {', '.join(sorted(STREAMING_DATASETS))}"
            )
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"augment {self.augment!r} of workload {self.name!r} is not allowed: use one "
                f"of {', '.join(sorted(AUGMENTATIONS))} or None"
            )


WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    if workload.name in WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is registered twice")
    WORKLOADS[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    """The workload called `name`; unknown names get the list of known ones."""
    return lookup(WORKLOADS, name, f"unknown workload {name!r}")


register_workload(
    Workload(
        name="mnist1d-cnn",
        model="cnn1d",
        dataset="mnist1d",
        dataset_kwargs={"num_samples": 10_000},
        regime=Regime(
            base_lr=0.05,
            base_batch_size=32,
            epochs=20,
            decay_epochs=(10, 15),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            clip_norm=5.0,
        ),
        eval_batch_size=2000,
        large_batch_size=2048,
        target_test_acc=95.0,
        source=(
            "tunegap's CPU-sized stand-in for the paper's Table 1 (../shared/PAPER.md): "
            "MNIST-1D 8k/2k, 3-layer 1D CNN, SGD momentum 0.9, wd 5e-4, clip 5, "
            "decays x0.1 at 50% and 75% of training, base lr 0.05 at B0=32"
        ),
    )
)


# ------------------------------------------------------------------------------------------
# The networks of the paper's Table 1 (Hoffer, Hubara & Soudry, NeurIPS 2017), for GPUs.
#
# Numbers come from the authors' code, github.com/eladhoffer/bigBatch ("bigBatch" below):
# each model file's `regime` dict (epoch -> lr, momentum, weight decay), run_experiments.sh
# (epochs per experiment), main_gbn.py / main_normal.py (defaults: --epochs 200,
# --mini-batch-size 128 = B0, clip_grad_norm 5.0 on every step) and preprocess.py
# (augmentation). Where the code's schedule is not one constant-factor step decay, the
# Regime spells out each step (`lr_factors`, `weight_decays`). Large batch 4096: the
# paper's Table 1. Ghost batches default to B0 (tunegap.remedies).

_BIGBATCH = "github.com/eladhoffer/bigBatch"
_CODE_COMMON = (
    f"B0=128 ({_BIGBATCH} main_gbn.py --mini-batch-size default, the paper's small batch); "
    "clip 5.0 (clip_grad_norm(..., 5.) in main_gbn.py and main_normal.py); large batch 4096 "
    "(paper Table 1)"
)
_CIFAR_AUGMENT = "augment crop_flip (preprocess.py pad_random_crop: pad 32->40, crop 32, flip)"

register_workload(
    Workload(
        name="mnist-f1",
        model="f1",
        dataset="mnist",
        regime=Regime(
            base_lr=0.1,
            base_batch_size=128,
            epochs=50,
            decay_epochs=(10, 20, 30),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            clip_norm=5.0,
        ),
        augment="crop_flip_pad2",
        eval_batch_size=10_000,
        large_batch_size=4096,
        cpus_per_trial=1.0,
        gpus_per_trial=0.25,
        source=(
            f"F1 of Keskar et al. 2017 as in {_BIGBATCH} models/mnist_f1.py; regime there: lr "
            "0.1, momentum 0.9, wd 1e-4, lr 1e-2/1e-3/1e-4 at epochs 10/20/30; 50 epochs "
            "(run_experiments.sh mnist runs, --epochs 50); augment crop_flip_pad2 "
            "(preprocess.py get_transform('mnist'): pad 28->32, crop 28, flip); " + _CODE_COMMON
        ),
    )
)

_SHALLOW_REGIME = Regime(
    base_lr=1e-3,
    base_batch_size=128,
    epochs=200,
    decay_epochs=(60, 120, 180),
    lr_factors=(10.0, 1.0, 0.1),
    momentum=0.0,
    weight_decay=5e-4,
    clip_norm=5.0,
)
_SHALLOW_SOURCE = (
    f"{_BIGBATCH} models/cifar_shallow.py; regime there: lr 1e-3 for epochs 0-59, 1e-2 from "
    "60, 1e-3 from 120, 1e-4 from 180, wd 5e-4, no momentum key (so SGD's default 0: the "
    "optimizer is built without momentum in main_*.py); 200 epochs (run_experiments.sh "
    "shallow runs, --epochs 200); "
    f"{_CIFAR_AUGMENT}; " + _CODE_COMMON
)

register_workload(
    Workload(
        name="cifar10-c1",
        model="c1",
        dataset="cifar10",
        regime=_SHALLOW_REGIME,
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=1.0,
        gpus_per_trial=0.25,
        source="C1 (Keskar et al. 2017, shallow conv, CIFAR-10) as in " + _SHALLOW_SOURCE,
    )
)

register_workload(
    Workload(
        name="cifar100-c3",
        model="c3",
        dataset="cifar100",
        regime=_SHALLOW_REGIME,
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=1.0,
        gpus_per_trial=0.25,
        source="C3 (Keskar et al. 2017, shallow conv, CIFAR-100) as in " + _SHALLOW_SOURCE,
    )
)

_RESNET_REGIME = Regime(
    base_lr=0.1,
    base_batch_size=128,
    epochs=200,
    decay_epochs=(81, 122, 164),
    decay_factor=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    clip_norm=5.0,
)
_RESNET_SOURCE = (
    f"ResNet-44 (He et al. 2016) as in {_BIGBATCH} models/resnet.py ResNet_cifar10, depth "
    "44 (used for cifar10 and cifar100 alike); regime there: lr 0.1, momentum 0.9, wd "
    "1e-4, lr 1e-2/1e-3/1e-4 at epochs 81/122/164 (He et al.'s 32k/48k iterations at "
    "B=128); 200 epochs = main_*.py --epochs default (the README and run_experiments.sh "
    f"examples pass --epochs 100, where only the decay at 81 happens); {_CIFAR_AUGMENT}; "
    + _CODE_COMMON
)

register_workload(
    Workload(
        name="cifar10-resnet44",
        model="resnet44",
        dataset="cifar10",
        regime=_RESNET_REGIME,
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=2.0,
        gpus_per_trial=0.5,
        source=_RESNET_SOURCE,
    )
)

register_workload(
    Workload(
        name="cifar100-resnet44",
        model="resnet44",
        dataset="cifar100",
        regime=_RESNET_REGIME,
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=2.0,
        gpus_per_trial=0.5,
        source=_RESNET_SOURCE,
    )
)

register_workload(
    Workload(
        name="cifar10-vgg",
        model="vgg",
        dataset="cifar10",
        regime=Regime(
            base_lr=0.1,
            base_batch_size=128,
            epochs=200,
            decay_epochs=(60, 120, 160),
            decay_factor=0.2,
            momentum=0.9,
            weight_decay=5e-4,
            clip_norm=5.0,
        ),
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=2.0,
        gpus_per_trial=1.0,
        source=(
            f"VGG-16 with BatchNorm (Simonyan & Zisserman 2015); {_BIGBATCH} has no VGG file, "
            "so model and regime are the authors' base code, github.com/eladhoffer/"
            "convNet.pytorch models/vgg.py (CIFAR VGG, batch_norm=True): lr 0.1, momentum "
            "0.9, wd 5e-4, lr x0.2 at epochs 60/120/160; 200 epochs = bigBatch main_*.py "
            f"--epochs default; {_CIFAR_AUGMENT}; " + _CODE_COMMON
        ),
    )
)

register_workload(
    Workload(
        name="cifar100-wrn16-4",
        model="wrn16_4",
        dataset="cifar100",
        regime=Regime(
            base_lr=0.1,
            base_batch_size=128,
            epochs=200,
            decay_epochs=(60, 120, 140),
            lr_factors=(0.2, 0.04, 0.001),
            momentum=0.9,
            weight_decay=1e-4,
            clip_norm=5.0,
        ),
        augment="crop_flip",
        large_batch_size=4096,
        cpus_per_trial=2.0,
        gpus_per_trial=1.0,
        source=(
            f"WideResNet-16-4 (Zagoruyko & Komodakis 2016) as in {_BIGBATCH} "
            "models/wide_resnet.py WResNet_cifar10 (multiplier 4, depth 16); regime there: "
            "lr 0.1, momentum 0.9, wd 1e-4, lr 2e-2/4e-3/1e-4 at epochs 60/120/140; 200 "
            f"epochs = main_*.py --epochs default; {_CIFAR_AUGMENT}; " + _CODE_COMMON
        ),
    )
)

register_workload(
    Workload(
        name="imagenet-alexnet",
        model="alexnet",
        dataset="imagenet",
        regime=Regime(
            base_lr=0.01,
            base_batch_size=256,
            epochs=30,
            decay_epochs=(10, 15, 20, 25),
            lr_factors=(0.5, 0.1, 0.05, 0.01),
            momentum=0.9,
            weight_decay=5e-4,
            weight_decays=(None, 0.0, None, None),
            clip_norm=5.0,
        ),
        augment="crop_flip",
        streaming=True,
        eval_batch_size=1000,
        large_batch_size=4096,
        cpus_per_trial=8.0,
        gpus_per_trial=1.0,
        source=(
            f"AlexNet with BatchNorm: {_BIGBATCH} models/__init__.py imports alexnet, the "
            "authors' AlexNetOWT_BN of github.com/eladhoffer/convNet.pytorch models/"
            "alexnet.py; regime there: lr 1e-2, momentum 0.9, wd 5e-4; lr 5e-3 at 10, 1e-3 "
            "and wd 0 at 15, 5e-4 at 20, 1e-4 at 25; 30 epochs is ours (5 epochs after the last change; the code's "
            "default 200 is for CIFAR). B0=256: main_normal.py's reference batch for the sqrt "
            "rule and regime adaptation, and convNet.pytorch's default batch size; large "
            "batch 4096 (paper); clip 5.0 (main_*.py). Streams the ImageFolder tree from disk "
            "(8 DataLoader workers) with the code's training transform, random-resized "
            "crop 224 + flip (preprocess.py inception_preproccess; "
            "tunegap.datasets.ImageFolderDataset), and resize 256 + centre crop 224 for "
            "validation; augment crop_flip applies only to in-memory data of this workload"
        ),
    )
)
