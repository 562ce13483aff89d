"""A small 2D conv net with BatchNorm for 28x28 grey images (Fashion-MNIST on a CPU).

The shape of DeepOBS's `fmnist_2c2d` and of the Fashion-MNIST benchmark's "2 conv +
pooling + BatchNorm" entry (two conv layers, each followed by max-pooling, then two dense
layers), narrowed so that an epoch of 60,000 images takes seconds on two CPU cores:

    [Conv 3x3 (c) -> BN -> ReLU -> MaxPool 2] -> [Conv 3x3 (2c) -> BN -> ReLU -> MaxPool 2]
    -> Linear(2c * 7 * 7, hidden) -> BN1d -> ReLU -> Linear(num_classes)

with c = 16 and hidden = 128 by default (DeepOBS: 32 and 64 channels of 5x5, 1024 hidden,
no BatchNorm). Every BatchNorm (2d and 1d) becomes Ghost BatchNorm under `--ghost-size`.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model


class SmallConv2d(nn.Module):
    def __init__(self, *, in_channels: int = 1, size: int = 28, channels: int = 16,
                 hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (channels, 2 * channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
            size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * size * size, hidden, bias=False), nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("conv2d_small")
def conv2d_small(*, num_classes: int = 10, in_channels: int = 1, size: int = 28,
                 channels: int = 16, hidden: int = 128) -> SmallConv2d:
    return SmallConv2d(in_channels=in_channels, size=size, channels=channels, hidden=hidden,
                       num_classes=num_classes)
