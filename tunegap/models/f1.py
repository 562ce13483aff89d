"""F1: the fully connected MNIST network of Keskar et al. 2017, with BatchNorm.

Keskar, Mudigere, Nocedal, Smelyanskiy & Tang, "On large-batch training for deep learning:
generalization gap and sharp minima", ICLR 2017 (arXiv 1609.04836), network F1; as the
authors of "Train longer, generalize better" (Hoffer, Hubara & Soudry, NeurIPS 2017) built it
in their code, github.com/eladhoffer/bigBatch, models/mnist_f1.py:

    784 -> [Linear(512) -> BatchNorm1d -> ReLU] x 5 -> Linear(10)

Linear layers keep their bias (as in that file) even though BatchNorm follows them.
Parameters (10 classes): 784*512+512 + 4*(512*512+512) + 5*2*512 + 512*10+10 = 1,462,794.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunegap.models import register_model


class F1(nn.Module):
    """Five hidden layers of `width` units, each Linear + BatchNorm1d + ReLU; flattens input."""

    def __init__(
        self, *, in_features: int = 28 * 28, width: int = 512, depth: int = 5, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


@register_model("f1")
def f1(*, num_classes: int = 10, in_features: int = 28 * 28) -> F1:
    return F1(in_features=in_features, num_classes=num_classes)
