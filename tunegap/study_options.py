"""The options every paper study takes, as typed keywords: the Python face of a study's command.

Each study module has `study(*, <its own options>, **options: Unpack[StudyOptions]) -> Study`,
e.g. `ghost_size.study(batch_sizes=(512, 2048), seeds="auto")`. Its command (`tunegap run
ghost_size`) is a thin layer over that function: the parser reads its defaults from the
function's signature and from `STUDY_DEFAULTS`, and hands the parsed values back to it
(`tunegap.cli.study_command`). Where the study runs (Ray address, storage, MLflow) is not a
study option: it is `tunegap.RunOptions`, given to `run_study`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from tunegap.analysis.decide import DEFAULT_MARGIN
from tunegap.cli_values import outside_range
from tunegap.config import PROTOCOLS, Protocol
from tunegap.errors import StudyError
from tunegap.models.init import BnWeightInit
from tunegap.names import TRAINING_KNOBS
from tunegap.regime import Schedule
from tunegap.study import Search
from tunegap.study_checks import Scheduler

__all__ = [
    "STUDY_DEFAULTS", "STUDY_OPTIONS", "StudyOptions", "check_number", "own_defaults", "study_fields",
]

# Studies judge cells, so they measure on the larger MNIST-1D test set: the same training as
# mnist1d-cnn, a third of the seed-to-seed spread (benchmarks/seeds_to_decide.py).
DEFAULT_STUDY_WORKLOAD = "mnist1d-cnn-10k"


class StudyOptions(TypedDict, total=False):
    """The options every study takes beside its own (its command's common options).

    A training knob left out (or None) keeps the workload's own setting."""

    workload: str
    seeds: int | Literal["auto"]
    min_seeds: int
    max_seeds: int
    search: Search
    num_samples: int
    epochs: int | None
    baseline_epochs: int | None
    margin: float
    accuracy: Literal["final", "best"] | None
    scheduler: Scheduler
    protocol: Protocol
    # The training knobs (`tunegap.names.TRAINING_KNOBS`), for every trial of the study.
    optimizer: str | None
    momentum: float | None
    weight_decay: float | None
    no_decay_bn_bias: bool | None
    warmup_epochs: float | None
    warmup_start_factor: float | None
    scale_warmup: bool | None
    schedule: Schedule | None
    label_smoothing: float | None
    train_size: int | None
    validation_fraction: float | None
    max_updates: int | None
    bn_weight_init: BnWeightInit | None
    zero_init_residual: bool | None


STUDY_OPTIONS: tuple[str, ...] = tuple(StudyOptions.__annotations__)
# The common options' defaults, for the Python function and its command alike; a study may
# set its own (`seeds`, `search`, a training knob) on top.
STUDY_DEFAULTS: dict[str, Any] = {
    "workload": DEFAULT_STUDY_WORKLOAD, "seeds": 1, "min_seeds": 3, "max_seeds": 12,
    "search": "grid", "num_samples": 20, "epochs": None, "baseline_epochs": None,
    "margin": DEFAULT_MARGIN, "accuracy": None, "scheduler": "none", "protocol": PROTOCOLS[0],
}


def study_fields(study: str, options: Mapping[str, Any], *, searches: Sequence[str] = ("grid",),
                 **defaults: Any) -> dict[str, Any]:
    """The `Study` fields from a study function's common options (`StudyOptions`), over the
    study's own `defaults` and `STUDY_DEFAULTS`; an option no study takes is a TypeError, as
    for any Python function, and a search the study does not run is a `StudyError`.

    >>> study_fields("ghost_size", {"seeds": 2, "momentum": 0.5})["knobs"]
    {'momentum': 0.5}
    >>> study_fields("ghost_size", {"storage_path": "/tmp"})
    Traceback (most recent call last):
    ...
    TypeError: ghost_size.study() got an unexpected keyword argument 'storage_path' (where a study runs is tunegap.RunOptions, given to run_study)
    """
    unknown = [k for k in options if k not in STUDY_OPTIONS]
    if unknown:
        raise TypeError(f"{study}.study() got an unexpected keyword argument {unknown[0]!r} "
                        "(where a study runs is tunegap.RunOptions, given to run_study)")
    values = {**STUDY_DEFAULTS, "search": searches[0], **defaults, **options}
    if values["search"] not in searches:
        raise StudyError(f"--search {values['search']!r} is not allowed: use "
                         f"{', '.join(searches)}")
    knobs = {k: values.pop(k) for k in TRAINING_KNOBS if k in values}
    return {**values, "knobs": {k: v for k, v in knobs.items() if v is not None}}


def own_defaults(study: Callable[..., Any]) -> dict[str, Any]:
    """A study function's own keyword defaults (its command's defaults for those options)."""
    return {name: p.default for name, p in inspect.signature(study).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


def check_number(flag: str, value: float, *, low: float, high: float | None = None,
                 low_open: bool = False) -> float:
    """A study's own numeric option, checked where the study is built (from Python and its
    command alike): `StudyError` in one line naming `flag` outside the range."""
    allowed = outside_range(float(value), low=low, high=high, low_open=low_open)
    if allowed:
        raise StudyError(f"{flag} {value:g} is not allowed: use {allowed}")
    return float(value)
