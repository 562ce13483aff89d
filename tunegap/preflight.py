"""Pre-flight: the workload's own code run once, on the CPU, before any trial starts.

A user's model with a shape bug, a dataset function that raises or a data set with a NaN
would otherwise fail in every Ray worker, each with its traceback, and end the study with a
message about the baseline. `preflight(config)` instead loads the workload's data, checks
that its training inputs are finite, builds the model (Ghost BatchNorm included where the
trial asks for it) and runs one forward and backward pass on one small batch of the real
training data, in about a second; any failure is one `PreflightError` line naming the
workload, the model, the dataset, the input shape and the error's own last line. The study
CLIs and `tunegap train` turn it into exit status 2 before Ray starts or a run is created.

Streaming data sets (image folders read from disk as they train) are not loaded here: a
first batch would mean listing and decoding files across the tree, more than a second, so
for them `preflight` checks nothing and says so in what it returns.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch

from tunegap.config import TrialConfig
from tunegap.text import one_line

# Samples in the pre-flight batch: enough for BatchNorm's statistics, small enough to be
# instant for any model on a CPU.
PREFLIGHT_SAMPLES = 8


class PreflightError(ValueError):
    """The workload's code failed its one forward and backward pass (one line)."""


def preflight(config: TrialConfig, data: Any = None) -> str:
    """Run the workload of `config` once (see the module docstring); returns what was
    checked, e.g. "cnn1d on mnist1d: 8 x (1, 40) -> 10 classes, forward and backward".
    `data` is the already loaded data set, if the caller has it. Raises PreflightError."""
    from tunegap.data.streaming import StreamingData
    from tunegap.gbn_convert import convert_to_ghost_bn
    from tunegap.models import build_model

    workload = config.get_workload()
    where = _where(config)
    if data is None:
        data = load_data(config)
    if isinstance(data, StreamingData):
        return f"{workload.model} on {workload.dataset}: streamed, not loaded up front"
    x_all, y_all = data.x_train, data.y_train
    if x_all.is_floating_point() and not bool(torch.isfinite(x_all).all()):
        bad = int((~torch.isfinite(x_all)).flatten(1).any(1).sum())
        raise PreflightError(f"pre-flight: {where}: {bad} training input(s) are not finite "
                             "(NaN or inf): clean the data set")
    n = min(PREFLIGHT_SAMPLES, len(x_all))
    x = x_all[:n].cpu()
    if not x.is_floating_point():
        x = x.float()
    y = y_all[:n].cpu()
    shape = tuple(x.shape)
    step = "building the model"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(workload.model, num_classes=data.num_classes,
                                **workload.model_kwargs)
            ghost = config.ghost_batch_size
            if ghost is not None and ghost < n:
                model = convert_to_ghost_bn(model, ghost)
            model.train()
            step = "the forward pass"
            out = model(x)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, data.num_classes):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the model returned {got}, not ({n}, {data.num_classes}): "
                                 "one score per class for each input")
            step = "the backward pass"
            loss = torch.nn.functional.cross_entropy(out, y)
            loss.backward()
    except Exception as err:
        raise PreflightError(f"pre-flight: {where}, input shape {shape}: {step} failed: "
                             f"{_last_line(err)}") from None
    if not torch.isfinite(loss):
        raise PreflightError(f"pre-flight: {where}, input shape {shape}: the loss of one "
                             f"batch is {float(loss)}: check the model and the inputs")
    return (f"{workload.model} on {workload.dataset}: {n} x {shape[1:]} -> "
            f"{data.num_classes} classes, forward and backward")


def load_data(config: TrialConfig) -> Any:
    """The workload's data set (`tunegap.trial_data.load_workload_data`); whatever a user's
    dataset function raises becomes one PreflightError line."""
    from tunegap.trial_data import load_workload_data

    try:
        return load_workload_data(config)
    except Exception as err:  # a user's dataset function may raise anything
        raise PreflightError(f"pre-flight: {_where(config)}: loading the data failed: "
                             f"{_last_line(err)}") from None


def _where(config: TrialConfig) -> str:
    workload = config.get_workload()
    return f"workload {workload.name!r} (model {workload.model!r}, dataset {workload.dataset!r})"


def _last_line(err: BaseException) -> str:
    """The error's own last line (its type and message), as a traceback would end; a
    message of several lines joined onto that one, none of it dropped.

    >>> _last_line(RuntimeError("config error:\\n  width: missing\\n  depth: missing"))
    'RuntimeError: config error: width: missing depth: missing'
    """
    return one_line("".join(traceback.format_exception_only(type(err), err))) or type(err).__name__
