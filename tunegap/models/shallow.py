"""C1 and C3: the shallow convolutional CIFAR networks of Keskar et al. 2017.

Keskar, Mudigere, Nocedal, Smelyanskiy & Tang, "On large-batch training for deep learning:
generalization gap and sharp minima", ICLR 2017 (arXiv 1609.04836): C1 (CIFAR-10) and C3
(CIFAR-100) are the same "shallow convolutional" network with 10 or 100 outputs. Built here
as the authors of "Train longer, generalize better" (Hoffer, Hubara & Soudry, NeurIPS 2017)
built it, github.com/eladhoffer/bigBatch, models/cifar_shallow.py (`cifar10_shallow`,
`cifar100_shallow`):

    Conv5x5(64) -> MaxPool3/2 -> BN -> ReLU -> Conv5x5(64) -> MaxPool3/2 -> BN -> ReLU
    -> Linear(64*7*7 -> 384) -> BN -> ReLU -> Dropout(0.5)
    -> Linear(384 -> 192) -> BN -> ReLU -> Dropout(0.5) -> Linear(192 -> classes)

(pooling before BatchNorm, and no biases before BatchNorm, as in that file). For 32x32
inputs the feature map is 7x7. Parameters: 4,800 + 128 + 102,400 + 128 + 1,204,224 + 768
+ 73,728 + 384 + (192+1)*classes = 1,388,490 (C1, 10 classes) and 1,405,860 (C3, 100).
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model
from tunegap.models.layers import bn_classifier


class ShallowConvNet(nn.Module):
    """Two 5x5 conv layers and three fully connected layers, BatchNorm after each but the last."""

    def __init__(
        self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5, padding=2, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=5, padding=2, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        side = image_size
        for _ in range(2):
            side = (side - 3) // 2 + 1
        self.classifier = bn_classifier(64 * side * side, (384, 192), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("c1")
def c1(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ShallowConvNet:
    """Keskar's C1 (CIFAR-10)."""
    return ShallowConvNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@register_model("c3")
def c3(*, num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> ShallowConvNet:
    """Keskar's C3 (CIFAR-100): the C1 network with 100 outputs."""
    return ShallowConvNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
