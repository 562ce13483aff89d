"""A checkpoint's state as plain values: what `torch.load(weights_only=True)` accepts, so a
checkpoint never carries a pickle that runs code when it is read."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch


def plain_state(value: Any) -> Any:
    """`value` with every leaf a tensor or a plain Python value, what weights_only loads.

    numpy scalars become Python numbers and numpy arrays tensors (a plugin's regime or a
    Tune search may hand them in), paths become strings. A dict or list that needs no change
    is returned as it is, so a module's state keeps its `_metadata` (BatchNorm versions)."""
    if isinstance(value, np.generic):  # before the plain types: np.float64 is a float
        return value.item()
    if isinstance(value, torch.Tensor | str | int | float | None):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return _plain_mapping(value)
    if isinstance(value, list | tuple):
        items = [plain_state(v) for v in value]
        if type(value) in (list, tuple) and all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"checkpoint state holds a {type(value).__name__}: only tensors and plain Python "
        "values load with weights_only=True"
    )


def _plain_mapping(value: dict) -> dict:
    pairs = [(plain_state(k), plain_state(v)) for k, v in value.items()]
    same = all(k2 is k and v2 is v for (k2, v2), (k, v) in zip(pairs, value.items(), strict=True))
    if same and type(value) in (dict, OrderedDict):
        return value
    plain: dict = OrderedDict(pairs) if isinstance(value, OrderedDict) else dict(pairs)
    if isinstance(value, OrderedDict):
        plain.__dict__.update(vars(value))  # torch's `_metadata` rides on the OrderedDict
    return plain
