"""Name lookups in tunegap's registries (models, datasets, workloads, augmentations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, problem: str, *, also: str = "") -> T:
    """`registry[name]`, or one line: `problem`, then what is allowed (plus `also`)."""
    try:
        return registry[name]
    except KeyError:
        allowed = ", ".join(sorted(registry)) + (f" {also}" if also else "")
        raise ValueError(f"{problem}: use one of {allowed}") from None
