"""WideResNet-16-4 (Zagoruyko & Komodakis 2016) as the authors of "Train longer, generalize
better" built it.

Zagoruyko & Komodakis, "Wide residual networks", BMVC 2016 (arXiv 1605.07146): depth 16,
widening factor 4, about 2.7M parameters. Hoffer, Hubara & Soudry (NeurIPS 2017) trained it
from github.com/eladhoffer/bigBatch, models/wide_resnet.py (`WResNet_cifar10`,
multiplier=4, depth=16), which is their CIFAR ResNet (`tunegap.models.resnet.CifarResNet`)
with every channel count times 4: a 3x3 stem with 64 channels, then 2 post-activation basic
blocks per stage (int((16 - 2) / 6) = 2 there; Zagoruyko counts depth as 6n + 4) with 64,
128 and 256 channels, 1x1 conv + BN shortcuts where the shape changes. Zagoruyko's own
network differs in details (pre-activation blocks, a 16-channel stem, a dropout option) and
is a little smaller (2.7M in their Table 1). Parameters here: 2,800,804 with 100 classes
(2,777,674 with 10).
"""

from __future__ import annotations

from tunegap.models import register_model
from tunegap.models.resnet import CifarResNet


@register_model("wrn16_4")
def wrn16_4(*, num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """WideResNet-16-4 in the authors' form (depth 16, width x4)."""
    return CifarResNet(blocks=2, width=4, num_classes=num_classes, in_channels=in_channels)
