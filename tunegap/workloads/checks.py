"""Refuse a workload's missing data, and batches larger than its training set, up front.

`check_workload_data` runs in the driver before Ray starts (and in `tunegap train` before
the engine is built), so a missing data set or an impossible batch size is one line, not a
traceback in every trial, and no reader gets as far as trying to download.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunegap.data.catalog import DATASETS, dataset_hooks, load_dataset
from tunegap.text import first_line
from tunegap.workloads.catalog import get_workload
from tunegap.workloads.workload import Workload


def check_workload_data(
    workload: str, data_dir: str | None, batch_sizes: Iterable[int] = (), *,
    subsets: Iterable[tuple[int, int]] = (),
) -> None:
    """Raise a one-line ValueError unless `workload`'s data is in `data_dir` (None: the
    default folder) and every batch size fits in its training set.

    The files are checked by the dataset's own `check` hook (`register_dataset(check=...)`):
    existence, readability and headers, never decoding the data; a dataset without one is
    not checked. The training-set size comes from its `train_size` hook; an in-memory
    dataset without one is loaded to count it (only when batch sizes are given), a streaming
    one without one is not sized. `subsets` are (train_size, batch_size) pairs of trials
    that train on a subset (`TrialConfig.train_size`): each must fit in the training set, and
    its batch in the subset.

    >>> check_workload_data("mnist1d-cnn", None, [32, 8000])
    >>> check_workload_data("mnist1d-cnn", None, [16384])
    Traceback (most recent call last):
    ...
    ValueError: batch size 16384 is larger than the 8000 training examples of workload 'mnist1d-cnn': use at most 8000
    """
    definition = get_workload(workload)
    hooks = dataset_hooks(definition.dataset)
    kwargs: dict[str, Any] = {**definition.dataset_kwargs, "data_dir": data_dir}
    if hooks.check is not None:
        try:
            hooks.check(**kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(first_line(err) or type(err).__name__) from None
    subsets = sorted(set(subsets))
    for subset, batch in subsets:
        if batch > subset:
            raise ValueError(f"batch size {batch} is larger than train_size {subset}: use a "
                             f"batch of at most {subset}, or a larger train_size")
    sizes = sorted(set(batch_sizes) | {subset for subset, _ in subsets})
    if not sizes:
        return
    train_size = _train_size(definition, data_dir)
    if train_size is None:
        return
    too_large = [subset for subset, _ in subsets if subset > train_size]
    if too_large:
        raise ValueError(f"train_size {max(too_large)} is larger than the {train_size} "
                         f"training examples of workload {workload!r}: use at most {train_size}")
    check_batch_sizes(workload, train_size, sizes)


def check_batch_sizes(workload: str, train_size: int, batch_sizes: Iterable[int]) -> None:
    """A one-line ValueError naming the batch sizes above `train_size`, the number of
    training examples of `workload`: such a batch would train full-batch under a batch size
    it never used."""
    too_big = sorted({b for b in batch_sizes if b > train_size})
    if not too_big:
        return
    named = (
        f"batch size {too_big[0]} is"
        if len(too_big) == 1
        else f"batch sizes {', '.join(map(str, too_big))} are"
    )
    raise ValueError(
        f"{named} larger than the {train_size} training examples of workload {workload!r}: "
        f"use at most {train_size}"
    )


def _train_size(workload: Workload, data_dir: str | None) -> int | None:
    """The number of training examples, from the dataset's hook, else by loading it (in
    memory only: opening a stream may list a whole tree); None where it cannot be known."""
    hooks = dataset_hooks(workload.dataset)
    kwargs: dict[str, Any] = {**workload.dataset_kwargs, "data_dir": data_dir}
    try:
        if isinstance(hooks.train_size, int):
            return hooks.train_size
        if hooks.train_size is not None:
            return int(hooks.train_size(**kwargs))
        if workload.streaming:
            return None
        # Imported here: tunegap.engine pulls in the models and the training loop.
        from tunegap.registry import accepts_keyword

        if data_dir is None or not accepts_keyword(DATASETS.get(workload.dataset), "data_dir"):
            kwargs.pop("data_dir")
        return load_dataset(workload.dataset, **kwargs).train_size
    except Exception as err:  # a user's dataset function may raise anything
        text = first_line(err)
        what = f"{type(err).__name__}: {text}" if text else type(err).__name__
        raise ValueError(
            f"loading dataset {workload.dataset!r} (workload {workload.name!r}) to count its "
            f"training examples failed: {what}"
        ) from None


