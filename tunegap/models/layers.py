"""Building blocks several model families share."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def bn_classifier(
    in_features: int, hidden: Sequence[int], num_classes: int, *, dropout: float = 0.5
) -> nn.Sequential:
    """The fully connected head of AlexNet-style nets: per hidden layer Linear (no bias, BN
    follows) + BatchNorm1d + ReLU + Dropout, then a Linear to the classes."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [
            nn.Linear(in_features, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        ]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))
