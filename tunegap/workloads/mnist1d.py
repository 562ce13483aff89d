"""The default workload: MNIST-1D on a small 1D CNN, the paper's whole pattern on a CPU."""

from __future__ import annotations

from tunegap.regime import Regime
from tunegap.workloads.catalog import register_workload
from tunegap.workloads.workload import Workload

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
