"""Real images on two CPU cores: Fashion-MNIST (Debian's `dataset-fashion-mnist`).

Two workloads, each with a base regime short enough that the matched +RA run of the large
batch fits a study on a CPU; `studies/table1_fashion`, `studies/table1_fashion_f1` and
`studies/frontier_fashion` measure the gap on them.
"""

from __future__ import annotations

from tunegap.regime import Regime
from tunegap.workloads.catalog import register_workload
from tunegap.workloads.workload import PublishedFigure, Workload

BENCHMARK = "github.com/zalandoresearch/fashion-mnist, README benchmark table"

register_workload(
    Workload(
        name="fashion-f1",
        model="f1",
        dataset="fashion-mnist",
        regime=Regime(
            base_lr=0.1,
            base_batch_size=128,
            epochs=2,
            decay_epochs=(1,),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            clip_norm=5.0,
        ),
        eval_batch_size=10_000,
        large_batch_size=4096,
        target_test_acc=85.0,
        published=PublishedFigure(88.3, f"{BENCHMARK}: MLPClassifier 256-128-100"),
        source=(
            "F1 (Keskar et al. 2017) as in github.com/eladhoffer/bigBatch models/mnist_f1.py: "
            "5 x [Linear 512, BatchNorm1d, ReLU], SGD lr 0.1, momentum 0.9, wd 1e-4, B0=128 "
            "(the paper's MNIST row); on Fashion-MNIST, no augmentation; shortened for a CPU "
            "from the authors' 50 epochs (decays at 10/20/30) to 2 epochs with one decay at "
            "epoch 1, and a large batch of 4096 (matched +RA: 64 epochs), where those 2 epochs "
            "leave a clear gap (at 2048 the gap was 0.67 points, no larger than a 0.5 margin)"
        ),
    )
)

register_workload(
    Workload(
        name="fashion-cnn",
        model="conv2d_small",
        dataset="fashion-mnist",
        regime=Regime(
            base_lr=0.05,
            base_batch_size=128,
            epochs=4,
            decay_epochs=(2, 3),
            decay_factor=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            clip_norm=5.0,
        ),
        eval_batch_size=10_000,
        large_batch_size=1024,
        target_test_acc=88.0,
        published=PublishedFigure(93.4, f"{BENCHMARK}: 2 Conv + pooling + BatchNorm"),
        # 1.4x faster epochs on CPU at B0 and at the large batch (benchmarks/fashion_epoch.py).
        cpu_channels_last=True,
        source=(
            "two conv layers with pooling and BatchNorm, two dense layers (the shape of "
            "DeepOBS fmnist_2c2d and of the Fashion-MNIST benchmark's 2 conv + pooling + "
            "BatchNorm entry), narrowed to 16/32 channels of 3x3 and 128 hidden units for a "
            "CPU; SGD momentum 0.9, wd 5e-4, clip 5, base lr 0.05 at B0=128, 4 epochs with "
            "decays x0.1 at epochs 2 and 3 (50% and 75%), large batch 1024 (matched +RA: 32 "
            "epochs, about 10 minutes a seed with two seeds at once on 2 CPU cores, laid out "
            "channels_last; 2048's 64 would not fit a study)"
        ),
    )
)
