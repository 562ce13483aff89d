"""VGG for CIFAR with BatchNorm (Simonyan & Zisserman 2015), as in the authors' code base.

Simonyan & Zisserman, "Very deep convolutional networks for large-scale image recognition",
ICLR 2015 (arXiv 1409.1556), configuration D (VGG-16): 13 3x3 conv layers in five groups
(64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3), 2x2 max pooling after each group. The
"Train longer, generalize better" repository (github.com/eladhoffer/bigBatch) has no VGG
file; this follows the CIFAR VGG of the authors' base code, github.com/eladhoffer/
convNet.pytorch, models/vgg.py (`VGG(..., batch_norm=True)`, the default for CIFAR there):
conv (with bias) -> BatchNorm2d -> ReLU for every conv layer; a 32x32 image leaves the last
pool at 1x1x512; classifier Linear(512, 4096) -> ReLU -> Dropout(0.5) -> Linear(4096, 4096)
-> ReLU -> Dropout(0.5) -> Linear(4096, classes), without BatchNorm (as there). Parameters
of VGG-16 with 10 classes: 33,646,666 (14,723,136 conv + BN, 18,923,530 classifier).
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model

# Channels per conv layer, "M" = 2x2 max pooling (Simonyan & Zisserman, Table 1).
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """VGG-`depth` conv stack with BatchNorm and a 4096-4096 classifier, for 32x32 inputs."""

    def __init__(
        self,
        *,
        depth: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = True,
        hidden: int = 4096,
    ) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth {depth!r} is not allowed: use one of {sorted(CONFIGS)}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            layers.append(nn.Conv2d(c_in, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            c_in = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg")
def vgg(
    *, num_classes: int = 10, depth: int = 16, in_channels: int = 3, batch_norm: bool = True
) -> VGG:
    """VGG-16 with BatchNorm for CIFAR by default (`depth` 11, 13, 16 or 19)."""
    return VGG(depth=depth, num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm)
