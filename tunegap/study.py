"""`Study` and `RunOptions`: what a study searches and where it runs, validated up front.

Both are frozen dataclasses checked in `__post_init__`, so bad input stops with one line
(`StudyError`, exit status 2 on the command line) before Ray, MLflow or any trial starts.
`tunegap.runner.run_study` runs them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tunegap.config import TrialConfig
from tunegap.cpu_memory import cpu_malloc_mode
from tunegap.names import INSTRUMENTS, SEARCH_KNOBS
from tunegap.regime import MATCHED
from tunegap.workloads import Workload, get_workload, workload_registrations

SEARCHES = ("grid", "optuna")
DEFAULT_STORAGE = "./tunegap_results"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The command line's defaults where --tracking-uri / --storage-path are not given (see
# `default_tracking_uri`): MLflow's own variable, and ours for the results folder. On the
# cluster of cluster.yaml the head exports both, so studies need no extra flags there.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
STORAGE_ENV = "TUNEGAP_STORAGE"

FigureBuilder = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], dict[str, Any]]


class StudyError(ValueError):
    """Bad study input: reported as one line with exit status 2, before Ray starts."""


@dataclass(frozen=True)
class Study:
    """What a study searches: a workload, a grid (or Optuna space) over the knobs, seeds.

    `grid` maps knob names to the values to cross; `points` adds explicit configurations
    (e.g. the columns of Table 1). The small-batch baseline (B0, plain BatchNorm, base regime)
    is added for every seed unless `include_baseline` is False. With `search="optuna"`,
    `optuna_space` gives ranges, e.g. {"lr_exponent": (0.0, 1.0), "base_lr": (0.005, 0.5)},
    and the grid's batch sizes become an Optuna categorical.
    """

    name: str
    workload: str
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    points: tuple[dict[str, Any], ...] = ()
    seeds: int = 1
    search: str = "grid"
    num_samples: int = 20
    optuna_space: dict[str, tuple[float, float]] = field(default_factory=dict)
    epochs: int | None = None
    include_baseline: bool = True
    tolerance: float | None = None
    question: str = ""
    figures: FigureBuilder | None = None
    # Probe settings for every trial, e.g. {"noise_scale_every": 4, "sharpness_every": 20}.
    instruments: dict[str, int] = field(default_factory=dict)
    # Accuracy (percent) whose first crossing gives each trial's steps_to_target.
    target_test_acc: float | None = None
    # A study's own markdown under the map (e.g. Table 1's row, fitted slopes).
    report: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], str] | None = None

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum():
            raise StudyError(f"study name {self.name!r} is not allowed: use letters, digits, _")
        try:
            # The workload and the model, dataset and augmentation it names must all be
            # registered here, in the driver, before Ray starts.
            workload_registrations(self.workload)
        except ValueError as err:
            raise StudyError(str(err)) from None
        unknown = sorted(set(self.instruments) - set(INSTRUMENTS))
        if unknown:
            raise StudyError(f"unknown instrument(s) {', '.join(unknown)}: use {', '.join(INSTRUMENTS)}")
        if self.target_test_acc is not None and not 0 < self.target_test_acc <= 100:
            raise StudyError(f"--target-acc {self.target_test_acc!r} is not allowed: use 0 < percent <= 100")
        unknown = sorted(set(self.grid) - set(SEARCH_KNOBS))
        if unknown:
            raise StudyError(f"unknown knob(s) {', '.join(unknown)}: use {', '.join(SEARCH_KNOBS)}")
        for knob, values in self.grid.items():
            if len(values) == 0:
                raise StudyError(f"the grid for {knob} is empty: give at least one value")
        _check_count("--seeds", self.seeds)
        _check_count("--num-samples", self.num_samples)
        if self.search not in SEARCHES:
            raise StudyError(f"--search {self.search!r} is not allowed: use {' or '.join(SEARCHES)}")
        if self.search == "optuna":
            if not self.optuna_space:
                raise StudyError(f"study {self.name} has no Optuna space: use --search grid")
            if self.seeds != 1:
                raise StudyError("--seeds with --search optuna is not allowed: Optuna trials use seed 0")
        if self.epochs is not None:
            _check_count("--epochs", self.epochs)
        if self.tolerance is not None and not (
            math.isfinite(self.tolerance) and self.tolerance >= 0
        ):
            raise StudyError(f"--tolerance {self.tolerance!r} is not allowed: use points >= 0")
        # Validating each point builds every TrialConfig once, so bad values fail here.
        self.trial_configs()
        batches = self.grid.get("batch_size", ())
        ghosts = [g for g in self.grid.get("ghost_batch_size", ()) if g is not None]
        if batches and ghosts and min(ghosts) >= max(batches):
            raise StudyError(
                f"every ghost batch size ({', '.join(map(str, ghosts))}) is >= every batch size "
                f"({', '.join(map(str, batches))}): ghost batches must be smaller than the batch"
            )

    @property
    def workload_def(self) -> Workload:
        return get_workload(self.workload)

    def baseline_config(self, seed: int) -> TrialConfig:
        return TrialConfig(
            workload=self.workload,
            batch_size=self.workload_def.regime.base_batch_size,
            seed=seed,
            epochs=self.epochs,
            **self.instruments,
        )

    def trial_configs(self) -> list[TrialConfig]:
        """The grid's trials (every seed), baseline first, duplicates removed.

        Ghost sizes >= the batch size are plain BatchNorm (one ghost holds the whole batch),
        so they are run once, as BatchNorm.
        """
        names = list(self.grid)
        combos = [dict(zip(names, values, strict=True))
                  for values in itertools.product(*self.grid.values())] if names else []
        combos += [dict(p) for p in self.points]
        configs: list[TrialConfig] = []
        seen: set[str] = set()
        for seed in range(self.seeds):
            candidates = [self.baseline_config(seed)] if self.include_baseline else []
            for combo in combos:
                try:
                    cfg = TrialConfig(workload=self.workload, seed=seed, epochs=self.epochs,
                                      **self.instruments, **combo)
                except (TypeError, ValueError) as err:
                    raise StudyError(str(err)) from None
                if cfg.ghost_batch_size is not None and cfg.ghost_batch_size >= cfg.batch_size:
                    cfg = cfg.with_changes(ghost_batch_size=None)
                candidates.append(cfg)
            for cfg in candidates:
                key = json.dumps(cfg.to_dict(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    configs.append(cfg)
        return configs

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description for the MLflow parent run and the study state file."""
        return {
            "study": self.name,
            "workload": self.workload,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "points": list(self.points),
            "seeds": self.seeds,
            "search": self.search,
            "num_samples": self.num_samples,
            "optuna_space": {k: list(v) for k, v in self.optuna_space.items()},
            "epochs": self.epochs,
            "tolerance": self.tolerance,
            "instruments": dict(self.instruments),
            "target_test_acc": self.target_test_acc,
        }


def _check_count(flag: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{flag} {value!r} is not allowed: use an integer >= 1")


def is_baseline(config: dict[str, Any]) -> bool:
    """The small-batch reference: B0, plain BatchNorm, the workload's own lr and length."""
    workload = get_workload(config["workload"])
    mult = config.get("regime_multiplier", 1.0)
    return (
        config["batch_size"] == workload.regime.base_batch_size
        and config.get("ghost_batch_size") is None
        and (mult == MATCHED or float(mult) == 1.0)
        and config.get("base_lr") in (None, workload.regime.base_lr)
    )


@dataclass(frozen=True)
class RunOptions:
    """Where and how a study runs: options common to every study's CLI."""

    address: str | None = None
    storage_path: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    resume: bool = False
    max_concurrent: int | None = None
    gpus_per_trial: float | None = None
    device: str = "auto"
    data_dir: str | None = None
    checkpoint_every: int = 5
    max_failures: int = 3
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.max_concurrent is not None:
            _check_count("--max-concurrent", self.max_concurrent)
        _check_count("--checkpoint-every", self.checkpoint_every)
        if self.gpus_per_trial is not None and not (
            math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0
        ):
            raise StudyError(
                f"--gpus-per-trial {self.gpus_per_trial!r} is not allowed: use a number >= 0"
            )
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1 and (
            not float(self.gpus_per_trial).is_integer()
        ):
            # Ray shares a GPU in fractions below 1; above 1 it only hands out whole GPUs.
            raise StudyError(
                f"--gpus-per-trial {self.gpus_per_trial!r} is not allowed: use a fraction "
                "up to 1 (e.g. 0.25 for four trials per GPU) or a whole number of GPUs"
            )
        if isinstance(self.max_failures, bool) or self.max_failures < 0:
            raise StudyError(f"--max-failures {self.max_failures!r} is not allowed: use >= 0")
        _check_address(self.address)
        try:
            cpu_malloc_mode()  # read by every CPU trial: refuse a bad value before any starts
        except ValueError as err:
            raise StudyError(str(err)) from None
        if "://" in str(self.storage_path):
            # Every result is written with plain file operations (Path, os.replace), so a URL
            # would become a local folder named "s3:"; a shared mount works on a cluster.
            raise StudyError(
                f"--storage-path {self.storage_path!r} is a URL, which is not supported: use a "
                "folder every node can reach (on the cluster of cluster.yaml: the S3 bucket "
                "mounted at /mnt/tunegap, see CLUSTER.md)"
            )


def _check_address(address: str | None) -> None:
    """`--address`: None or "local" (a new local Ray), "auto", host:port or ray://host:port."""
    if address in (None, "local", "auto"):
        return
    text = str(address).removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address, e.g. [::1]:6379
    elif ":" in host:
        host = ""
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StudyError(
            f"--address {address!r} is not allowed: use auto, local, host:port or "
            "ray://host:port, e.g. 10.0.0.5:6379"
        )


def default_tracking_uri(environ: Mapping[str, str] | None = None) -> str:
    """The tracking URI of a study run without --tracking-uri.

    `$MLFLOW_TRACKING_URI` where it is set and not empty (MLflow's standard variable; the head
    of cluster.yaml exports http://127.0.0.1:5000, its MLflow server), else
    sqlite:///mlflow.db in the current folder. `RunOptions` itself has no such rule.
    """
    env = os.environ if environ is None else environ
    return env.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def default_storage_path(environ: Mapping[str, str] | None = None) -> str:
    """The results folder of a study run without --storage-path.

    `$TUNEGAP_STORAGE` where it is set and not empty (cluster.yaml exports a folder shared by
    every node), else ./tunegap_results.
    """
    env = os.environ if environ is None else environ
    return env.get(STORAGE_ENV) or DEFAULT_STORAGE
