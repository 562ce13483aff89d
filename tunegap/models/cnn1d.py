"""A small 1D CNN for MNIST-1D: three strided conv layers with BatchNorm and ReLU.

Small enough to train in seconds per epoch on a CPU, and with BatchNorm in every layer, so
Ghost BatchNorm has something to act on.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model


class CNN1d(nn.Module):
    """Conv1d(k5,s2) -> Conv1d(k3,s2) -> Conv1d(k3,s2), each + BatchNorm1d + ReLU, then linear."""

    def __init__(
        self, *, in_channels: int = 1, length: int = 40, channels: int = 32, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for kernel in (5, 3, 3):
            layers += [
                nn.Conv1d(c_in, channels, kernel, stride=2, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(channels),
                nn.ReLU(inplace=True),
            ]
            c_in = channels
            length = (length + 2 * (kernel // 2) - kernel) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("cnn1d")
def cnn1d(
    *, num_classes: int = 10, in_channels: int = 1, length: int = 40, channels: int = 32
) -> CNN1d:
    return CNN1d(in_channels=in_channels, length=length, channels=channels, num_classes=num_classes)
