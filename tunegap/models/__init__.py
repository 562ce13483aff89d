"""Models built by name: `build_model("cnn1d", num_classes=10)`.

Each family lives in its own module and registers its builders with `@register_model`
(timm style); a user registers their own the same way, from their own script or plugin.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tunegap.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(
    name: str, *, replace: bool = False
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register a model builder under `name`.

    The builder takes `num_classes` (from the dataset) and whatever else the workload's
    `model_kwargs` give, and returns an `nn.Module`. Its BatchNorm layers become Ghost
    BatchNorm when a trial sets `ghost_batch_size`.

    >>> from torch import nn
    >>> @register_model("tiny-mlp")
    ... def tiny_mlp(num_classes: int, width: int = 64) -> nn.Module:
    ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.BatchNorm1d(width),
    ...                          nn.ReLU(), nn.Linear(width, num_classes))
    >>> build_model("tiny-mlp", num_classes=10).__class__.__name__
    'Sequential'
    """
    return MODELS.decorator(name, replace=replace)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; an unknown name gets one line listing the known ones."""
    return MODELS.get(name)(**kwargs)


# Importing the family modules fills the registry.
from tunegap.models import alexnet as _alexnet  # noqa: E402, F401
from tunegap.models import cnn1d as _cnn1d  # noqa: E402, F401
from tunegap.models import conv2d_small as _conv2d_small  # noqa: E402, F401
from tunegap.models import f1 as _f1  # noqa: E402, F401
from tunegap.models import resnet as _resnet  # noqa: E402, F401
from tunegap.models import shallow as _shallow  # noqa: E402, F401
from tunegap.models import vgg as _vgg  # noqa: E402, F401
from tunegap.models import wrn as _wrn  # noqa: E402, F401
