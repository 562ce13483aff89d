"""In-memory stand-ins for datasets the tests cannot download."""

from __future__ import annotations

import torch

from tunegap.data import TensorData


def fake_cifar(n_train: int = 256, n_test: int = 64) -> TensorData:
    """Random CIFAR-10-shaped images and labels (for speed and shape checks, not accuracy)."""
    g = torch.Generator().manual_seed(0)
    return TensorData(
        name="cifar10",
        x_train=torch.randn(n_train, 3, 32, 32, generator=g),
        y_train=torch.randint(0, 10, (n_train,), generator=g),
        x_test=torch.randn(n_test, 3, 32, 32, generator=g),
        y_test=torch.randint(0, 10, (n_test,), generator=g),
        num_classes=10,
    )
