"""Models built by name: `build_model("cnn1d", num_classes=10)`.

Each family lives in its own module and registers its builders with `register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from tunegap.registry import lookup

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a model builder to the registry under `name`."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


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


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; unknown names get the list of known ones."""
    return lookup(MODELS, name, f"unknown model {name!r}")(**kwargs)


# Importing the family modules fills the registry.
from tunegap.models import alexnet as _alexnet  # noqa: E402, F401
from tunegap.models import cnn1d as _cnn1d  # noqa: E402, F401
from tunegap.models import f1 as _f1  # noqa: E402, F401
from tunegap.models import resnet as _resnet  # noqa: E402, F401
from tunegap.models import shallow as _shallow  # noqa: E402, F401
from tunegap.models import vgg as _vgg  # noqa: E402, F401
from tunegap.models import wrn as _wrn  # noqa: E402, F401
