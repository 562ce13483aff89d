"""ResNet for CIFAR (He et al. 2016), ResNet-44 as used in "Train longer, generalize better".

He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016
(arXiv 1512.03385), section 4.2: a 3x3 conv with 16 channels, then three stages of n basic
blocks with 16, 32 and 64 channels (depth = 6n + 2; n = 7 for ResNet-44), global average
pooling and a linear classifier. Built as the authors of Hoffer, Hubara & Soudry (NeurIPS
2017) built it, github.com/eladhoffer/bigBatch, models/resnet.py (`ResNet_cifar10`):

- post-activation basic blocks (conv-BN-ReLU-conv-BN, add, ReLU);
- where the shape changes, the shortcut is a strided 1x1 conv + BatchNorm (He et al.'s
  option B; their CIFAR table used the parameter-free option A, which is why they report
  0.66M: 658,586 parameters there, 2,752 fewer than here);
- conv weights ~ N(0, 2 / (k*k*out_channels)), BatchNorm weight 1 and bias 0.

The same class with a channel `width` multiplier is the authors' WideResNet (`wrn.py`).
Parameters of ResNet-44 with 10 classes: 661,338 (100 classes: 667,188).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from tunegap.models import register_model


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def init_like_authors(model: nn.Module) -> None:
    """The init of the authors' ResNet code: He-normal on fan-out for convs, BN at (1, 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """Three stages of `blocks` basic blocks for 32x32 images (depth 6 * blocks + 2).

    `width` multiplies every channel count (the authors' WideResNet).
    """

    def __init__(
        self, *, blocks: int = 7, width: int = 1, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks {blocks!r} is not allowed: use a positive integer")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width {width!r} is not allowed: use a positive integer")
        channels = 16 * width
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        c_in = channels
        for stage, c_out in enumerate((16 * width, 32 * width, 64 * width)):
            layers = [BasicBlock(c_in, c_out, stride=1 if stage == 0 else 2)]
            layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_like_authors(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet44")
def resnet44(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-44 for CIFAR: 3 stages of 7 basic blocks, 16/32/64 channels."""
    return CifarResNet(blocks=7, num_classes=num_classes, in_channels=in_channels)


@register_model("cifar_resnet")
def cifar_resnet(
    *, num_classes: int = 10, depth: int = 44, width: int = 1, in_channels: int = 3
) -> CifarResNet:
    """Any depth 6n + 2 (20, 32, 44, 56, 110, ...) and width of the same family."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth!r} is not allowed: use 6n + 2 with n >= 1 (e.g. 44)")
    return CifarResNet(
        blocks=(depth - 2) // 6, width=width, num_classes=num_classes, in_channels=in_channels
    )
