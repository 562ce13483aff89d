"""AlexNet with BatchNorm for ImageNet, as the authors of "Train longer, generalize better"
trained it.

Krizhevsky, Sutskever & Hinton 2012, in the "one weird trick" single-column form
(Krizhevsky 2014, arXiv 1404.5997: 64-192-384-256-256 conv channels), with BatchNorm after
every layer but the last. Hoffer, Hubara & Soudry (NeurIPS 2017) import `alexnet` in
github.com/eladhoffer/bigBatch, models/__init__.py; the file itself is the authors' base code,
`AlexNetOWT_BN` of github.com/eladhoffer/convNet.pytorch models/alexnet.py (identical in
github.com/itayhubara/BinaryNet.pytorch models/alexnet.py):

    Conv11x11/4(64) -> MaxPool3/2 -> BN -> ReLU
    Conv5x5(192)    -> MaxPool3/2 -> ReLU -> BN
    Conv3x3(384) -> ReLU -> BN -> Conv3x3(256) -> ReLU -> BN
    Conv3x3(256)    -> MaxPool3/2 -> ReLU -> BN
    Linear(256*6*6 -> 4096) -> BN -> ReLU -> Dropout(0.5)
    Linear(4096 -> 4096) -> BN -> ReLU -> Dropout(0.5) -> Linear(4096 -> classes)

(the layer order, ReLU before BN from the second block on, and bias-free layers before BN
are as in that file). Input 3x224x224. Parameters with 1000 classes: 61,110,184 = 2,468,544
conv + 2,304 conv BN + 54,525,952 hidden fully connected + 16,384 their BN + 4,097,000 in
the last layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model
from tunegap.models.layers import bn_classifier


class AlexNetBN(nn.Module):
    """The authors' `AlexNetOWT_BN` (224x224 inputs; 6x6 map before the classifier)."""

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 192, kernel_size=5, padding=2, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(192),
            nn.Conv2d(192, 384, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(384),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(256),
        )
        self.classifier = bn_classifier(256 * 6 * 6, (4096, 4096), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("alexnet")
def alexnet(*, num_classes: int = 1000, in_channels: int = 3) -> AlexNetBN:
    return AlexNetBN(num_classes=num_classes, in_channels=in_channels)
