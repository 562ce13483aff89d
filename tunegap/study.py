"""`Study` and `RunOptions`: what a study searches and where it runs, validated up front.

Both are frozen dataclasses checked in `__post_init__`, so bad input stops with one line
(`StudyError`, exit status 2 on the command line) before Ray, MLflow or any trial starts.
`tunegap.runner.run_study` runs them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import pandas as pd

from tunegap.analysis.decide import (
    ACCURACIES,
    DEFAULT_MARGIN,
    SeedDesign,
    cell_key,
    check_margin,
)
from tunegap.config import PROTOCOLS, Protocol, TrialConfig, ghost_is_whole_batch
from tunegap.errors import StudyError
from tunegap.names import INSTRUMENTS, SEARCH_KNOBS, TRAINING_KNOBS
from tunegap.regime import MATCHED
from tunegap.study_checks import (
    AUTO,
    MAX_EPOCHS,
    MAX_TRIALS,
    Scheduler,
    check_count,
    check_optional_count,
    check_optuna_space,
    check_scheduler,
    check_seed_budget,
    check_trial_count,
    check_trial_length,
    frontier_budget,
)
from tunegap.workloads import Workload, get_workload, workload_registrations

Search = Literal["grid", "optuna", "frontier"]
SEARCHES: tuple[str, ...] = get_args(Search)
# The share of the training set a clean study holds out to choose each trial's best epoch
# (`accuracy="best"`); final-epoch judging holds out nothing.
VALIDATION_FRACTION = 0.1
# A bound that only a typo exceeds (the others are `tunegap.study_checks`').
MAX_SEEDS = 1000

FigureBuilder = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Study:
    """What a study searches: a workload, a grid (or Optuna space) over the knobs, seeds.

    `grid` maps knob names to the values to cross; `points` adds explicit configurations
    (e.g. the columns of Table 1). The small-batch baseline (B0, plain BatchNorm, base regime)
    is added for every seed unless `include_baseline` is False. With `search="optuna"`,
    `optuna_space` gives ranges, e.g. {"lr_exponent": (0.0, 1.0), "base_lr": (0.005, 0.5)},
    and the grid's batch sizes become an Optuna categorical.

    `seeds="auto"` judges each cell at planned looks (`design`: `min_seeds`, doubling, up to
    `max_seeds`), adding seeds only where a cell is undecided (`SeedsUntilDecided`); each
    one-sided test then runs at 5% / looks, so the stated 5% holds however it stops.
    >>> study = Study(name="ghost_quick", workload="mnist1d-cnn", seeds=2, margin=1.0,
    ...               grid={"batch_size": (512,), "ghost_batch_size": (None, 32)})
    >>> [(c.batch_size, c.ghost_batch_size, c.seed) for c in study.trial_configs()][:3]
    [(32, None, 0), (512, None, 0), (512, 32, 0)]

    `search="frontier"` brackets, per batch size of the grid, the regime multipliers 1, 2,
    4, ... up to matched between the largest decided open and the smallest decided closed
    (`FrontierSearch`; the grid's other knobs take one value each and seeds are "auto"). `tables` adds CSV files of the study's own
    (e.g. frontier.csv), built from the cells and tables like `figures`.

    `margin` (points, finite, >= 0; default 0.5) is the largest loss that still counts as no
    gap, declared before the run; `accuracy` ("final" or "best") is the test accuracy each
    trial is judged by (the last epoch's or the best epoch's). Both are part of `describe()`,
    so `--resume` refuses another margin. The verdicts are `tunegap.analysis.decide`'s.

    `scheduler` ("none", "asha" or "median") stops trials early on their test accuracy,
    measured in weight updates so batch sizes compare by work done; a stopped trial is kept
    (outcome "stopped") but is no seed of its cell. Not with `seeds="auto"` or the frontier.

    `knobs` sets training knobs for every trial, the baseline's included (e.g.
    {"optimizer": "adam", "max_updates": 2000}); `grid` and `points` may vary them too (the
    baseline is then B0 with the shared knobs only). `protocol="authors"` trains every
    trial as the authors' code does and judges best-epoch accuracy by default.
    >>> study = Study(name="adam_quick", workload="mnist1d-cnn", knobs={"optimizer": "adam"},
    ...               grid={"batch_size": (512,), "schedule": ("step", "cosine")})
    >>> [(c.batch_size, c.optimizer, c.schedule) for c in study.trial_configs()]
    [(32, 'adam', 'step'), (512, 'adam', 'step'), (512, 'adam', 'cosine')]
    """

    name: str
    workload: str
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    points: tuple[dict[str, Any], ...] = ()
    seeds: int | Literal["auto"] = 1
    search: Search = "grid"
    num_samples: int = 20
    optuna_space: dict[str, tuple[float, float]] = field(default_factory=dict)
    epochs: int | None = None
    # The baseline's epochs: None trains the small batch at the workload's full base regime
    # whatever `epochs` says, so a quick look never judges against a shortened reference
    # unless asked to (the summary then warns).
    baseline_epochs: int | None = None
    include_baseline: bool = True
    # The largest loss in points that still counts as no gap, declared before the run (see
    # `tunegap.analysis.decide`), and which accuracy of a trial is judged.
    margin: float = DEFAULT_MARGIN
    # None: "final", or "best" under the authors' protocol (they report the best epoch).
    accuracy: Literal["final", "best"] | None = None
    question: str = ""
    figures: FigureBuilder | None = None
    # Probe settings for every trial, e.g. {"noise_scale_every": 4, "sharpness_every": 20}.
    instruments: dict[str, int] = field(default_factory=dict)
    # Accuracy (percent) whose first crossing gives each trial's steps_to_target.
    target_test_acc: float | None = None
    # A study's own markdown under the map (e.g. Table 1's row, fitted slopes).
    report: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], str] | None = None
    # With seeds="auto": the first and the largest number of seeds of a cell.
    min_seeds: int = 3
    max_seeds: int = 12
    # A study's own tables: file name -> DataFrame, written as CSV beside cells.csv.
    tables: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], dict[str, pd.DataFrame]] | None = None
    # Early stopping: "asha" or "median" (both on test_acc, time in weight updates) or "none";
    # `grace_updates` is how many updates a trial makes before it can be stopped, and
    # `reduction_factor` ASHA's (the best 1/factor of the trials at a rung go on).
    scheduler: Scheduler = "none"
    grace_updates: int = 1
    reduction_factor: float = 2.0
    # Training knobs for every trial, the baseline's included (e.g. {"optimizer": "adam",
    # "train_size": 2000}); a grid or point that names one overrides it there.
    knobs: dict[str, Any] = field(default_factory=dict)
    # "clean" (ours) or "authors" (bigBatch's loop in the engine, its input pipelines in
    # `tunegap.data.protocols`) for every trial; the authors report the best epoch, so
    # "authors" judges the best epoch's accuracy unless `accuracy` says otherwise.
    protocol: Protocol = "clean"
    # The comparisons the study's question asks (`tunegap.analysis.effects`): the trials
    # table -> pairs of cells judged seed by seed, written to effects.csv and the summary.
    comparisons: Callable[[pd.DataFrame], Sequence[Any]] | None = None

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
        unknown = sorted(set(self.knobs) - set(TRAINING_KNOBS))
        if unknown:
            raise StudyError(f"unknown training knob(s) {', '.join(unknown)}: use "
                             f"{', '.join(TRAINING_KNOBS)}")
        if self.protocol not in PROTOCOLS:
            raise StudyError(f"--protocol {self.protocol!r} is not allowed: use "
                             f"{' or '.join(PROTOCOLS)}")
        unknown = sorted(set(self.grid) - set(SEARCH_KNOBS))
        if unknown:
            raise StudyError(f"unknown knob(s) {', '.join(unknown)}: use {', '.join(SEARCH_KNOBS)}")
        for knob, values in self.grid.items():
            if len(values) == 0:
                raise StudyError(f"the grid for {knob} is empty: give at least one value")
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                # A repeated value would run the same trials twice under one cell.
                raise StudyError(f"the grid for {knob} repeats {', '.join(repeated)}: give "
                                 "each value once")
        if self.seeds != AUTO:
            check_count("--seeds", self.seeds, MAX_SEEDS)
        check_seed_budget(self.min_seeds, self.max_seeds)
        check_count("--max-seeds", self.max_seeds, MAX_SEEDS)
        check_count("--num-samples", self.num_samples, MAX_TRIALS)
        if self.search not in SEARCHES:
            raise StudyError(f"--search {self.search!r} is not allowed: use {', '.join(SEARCHES)}")
        if self.search == "frontier":
            if self.seeds != AUTO:
                raise StudyError("the frontier search decides its seeds: use --seeds auto")
            if not self.grid.get("batch_size") or self.points:
                raise StudyError("the frontier search needs batch sizes (and no extra points)")
            several = sorted(k for k, v in self.grid.items() if k != "batch_size" and len(v) != 1)
            if several or "regime_multiplier" in self.grid:
                raise StudyError(
                    "the frontier search chooses the regime multipliers at each batch size: "
                    "give one value of every other knob and no regime multiplier"
                )
        if self.search == "optuna" and self.seeds == AUTO:
            raise StudyError("--seeds auto with --search optuna is not allowed: use a number")
        if self.search == "optuna":
            if not self.optuna_space:
                raise StudyError(f"study {self.name} has no Optuna space: use --search grid")
            if self.seeds != 1:
                raise StudyError("--seeds with --search optuna is not allowed: Optuna trials use seed 0")
        check_optuna_space(self.optuna_space)
        check_scheduler(self)
        check_optional_count("--epochs", self.epochs, MAX_EPOCHS)
        check_optional_count("--baseline-epochs", self.baseline_epochs, MAX_EPOCHS)
        try:
            check_margin(self.margin, "--margin")
        except ValueError as err:
            raise StudyError(str(err)) from None
        if self.accuracy is None:
            object.__setattr__(self, "accuracy", "best" if self.protocol == "authors" else "final")
        if self.accuracy not in ACCURACIES:
            raise StudyError(
                f"--accuracy {self.accuracy!r} is not allowed: use {' or '.join(ACCURACIES)}"
            )
        if (self.accuracy == "best" and self.protocol == "clean"
                and "validation_fraction" not in self.knobs):
            # The best epoch is chosen on data held out of the training set, never on the
            # test set it is judged by; every trial holds out the same samples.
            object.__setattr__(self, "knobs", {**self.knobs,
                                               "validation_fraction": VALIDATION_FRACTION})
        check_trial_count(self)
        # Validating each point builds every TrialConfig once, so bad values fail here.
        check_trial_length(self.trial_configs())
        batches = self.grid.get("batch_size", ())
        ghosts = [g for g in self.grid.get("ghost_batch_size", ()) if g is not None]
        if batches and ghosts and ghost_is_whole_batch(min(ghosts), max(batches)):
            raise StudyError(
                f"every ghost batch size ({', '.join(map(str, ghosts))}) is >= every batch size "
                f"({', '.join(map(str, batches))}): ghost batches must be smaller than the batch"
            )

    @property
    def workload_def(self) -> Workload:
        return get_workload(self.workload)

    @property
    def reference_epochs(self) -> int:
        """The epochs the baseline trains: `baseline_epochs`, else the workload's base
        regime (never `epochs`, which shortens the cells only)."""
        return self.baseline_epochs or self.workload_def.regime.epochs

    @property
    def baseline_epochs_override(self) -> int | None:
        """The baseline's `TrialConfig.epochs`: None at the workload's own length."""
        full = self.workload_def.regime.epochs
        return None if self.reference_epochs == full else self.reference_epochs

    def baseline_config(self, seed: int) -> TrialConfig:
        try:
            return TrialConfig(
                workload=self.workload,
                batch_size=self.workload_def.regime.base_batch_size,
                seed=seed,
                epochs=self.baseline_epochs_override,
                **self.instruments,
                **self.trial_settings(),
            )
        except (TypeError, ValueError) as err:
            raise StudyError(str(err)) from None

    def trial_settings(self) -> dict[str, Any]:
        """What every trial of the study shares beyond its cell: the training knobs and
        the protocol (left out while "clean", so older configs stay equal)."""
        settings = dict(self.knobs)
        if self.protocol != "clean":
            settings["protocol"] = self.protocol
        return settings

    @property
    def design(self) -> SeedDesign:
        """The planned looks each cell is judged at (`tunegap.analysis.decide.SeedDesign`):
        one look at `seeds`, or min_seeds doubling up to max_seeds when seeds are decided on
        the way ("auto", the frontier)."""
        if self.seeds == AUTO or self.search == "frontier":
            return SeedDesign.adaptive(self.min_seeds, self.max_seeds)
        return SeedDesign.fixed(int(self.seeds))

    @property
    def first_seeds(self) -> int:
        """Seeds every cell starts with: all of them, or `min_seeds` when they are "auto"."""
        return self.min_seeds if self.seeds == AUTO else int(self.seeds)

    def combos(self) -> list[dict[str, Any]]:
        """The knob settings of the grid (crossed) and the explicit points; for the frontier,
        each batch size at its matched multiplier (its first probe)."""
        names = list(self.grid)
        combos = [dict(zip(names, values, strict=True))
                  for values in itertools.product(*self.grid.values())] if names else []
        if self.search == "frontier":
            b0 = self.workload_def.regime.base_batch_size
            combos = [{**c, "regime_multiplier": float(math.ceil(c["batch_size"] / b0))}
                      for c in combos]
        return combos + [dict(p) for p in self.points]

    def trial_configs(self) -> list[TrialConfig]:
        """The first trials (every first seed), baseline first, duplicates removed.

        Ghost sizes >= the batch size are plain BatchNorm (one ghost holds the whole batch),
        so they are run once, as BatchNorm. At B0 the LR exponent and the multiplier
        "matched" change nothing (the lr and the length are the base ones), so they are run
        once, with exponent 0 and multiplier 1.

        Expanded once per Study: a frozen study always expands alike, so the configs are
        kept (`expansions` counts how often the grid was really expanded).
        """
        cached = self.__dict__.get("_configs")
        if cached is None:
            cached = tuple(self._expand())
            object.__setattr__(self, "_configs", cached)
            object.__setattr__(self, "expansions", self.__dict__.get("expansions", 0) + 1)
        return list(cached)

    def _expand(self) -> list[TrialConfig]:
        combos = self.combos()
        b0 = self.workload_def.regime.base_batch_size
        configs: list[TrialConfig] = []
        seen: set[str] = set()
        for seed in range(self.first_seeds):
            candidates = [self.baseline_config(seed)] if self.include_baseline else []
            for combo in combos:
                try:
                    cfg = TrialConfig(workload=self.workload, seed=seed, epochs=self.epochs,
                                      **self.instruments,
                                      **{**self.trial_settings(), **combo})
                except (TypeError, ValueError) as err:
                    raise StudyError(str(err)) from None
                if ghost_is_whole_batch(cfg.ghost_batch_size, cfg.batch_size):
                    cfg = cfg.with_changes(ghost_batch_size=None)
                if cfg.batch_size == b0:
                    same = 1.0 if cfg.regime_multiplier == MATCHED else cfg.regime_multiplier
                    cfg = cfg.with_changes(lr_exponent=0.0, regime_multiplier=same)
                # A grid point at the baseline's knobs is the baseline, at its own length.
                at_base = {**cfg.to_dict(), "epochs": None}
                if self.include_baseline and is_baseline(at_base, self.trial_settings()):
                    cfg = self.baseline_config(seed)
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
            "min_seeds": self.min_seeds,
            "max_seeds": self.max_seeds,
            "search": self.search,
            "num_samples": self.num_samples,
            "optuna_space": {k: list(v) for k, v in self.optuna_space.items()},
            "epochs": self.epochs,
            # Only where it can differ from `epochs`' reference, so older states still match.
            **({"baseline_epochs": self.reference_epochs}
               if self.epochs is not None or self.baseline_epochs is not None else {}),
            "margin": float(self.margin),
            "accuracy": self.accuracy,
            "instruments": dict(self.instruments),
            "target_test_acc": self.target_test_acc,
            # Only when one is used, so the state of a run made before schedulers existed
            # still matches on --resume.
            **({"scheduler": self.scheduler, "grace_updates": self.grace_updates,
                "reduction_factor": float(self.reduction_factor)}
               if self.scheduler != "none" else {}),
            **({"knobs": dict(self.knobs)} if self.knobs else {}),
            **({"protocol": self.protocol} if self.protocol != "clean" else {}),
        }


def total_trials(study: Study) -> int:
    """How many trials the study runs; for adaptive seeds and the frontier, at most."""
    if study.search == "optuna":
        return study.num_samples
    if study.search == "frontier":
        b0 = study.workload_def.regime.base_batch_size
        return frontier_budget(study.grid["batch_size"], b0, study.max_seeds)
    if study.seeds == AUTO:
        cells = {cell_key(c.to_dict()) for c in study.trial_configs()}
        return len(cells) * study.max_seeds
    return len(study.trial_configs())


def is_baseline(config: dict[str, Any], shared: Mapping[str, Any] | None = None, *,
                epochs: int | None = None) -> bool:
    """The small-batch reference: B0, plain BatchNorm, the workload's own lr and length, and
    the training knobs every trial of the study shares (`shared`, its `trial_settings()`;
    the rest at their defaults), so a B0 cell with another optimizer is a cell, not it.
    `epochs` is the study's `baseline_epochs` (None: the workload's), so a B0 trial
    shortened by `--epochs` is a cell beside the reference, not a seed of it."""
    workload = get_workload(config["workload"])
    mult = config.get("regime_multiplier", 1.0)
    full = workload.regime.epochs
    return (
        (config.get("epochs") or full) == (epochs or full)
        and config["batch_size"] == workload.regime.base_batch_size
        and config.get("ghost_batch_size") is None
        and (mult == MATCHED or float(mult) == 1.0)
        and config.get("base_lr") in (None, workload.regime.base_lr)
        and all(config.get(k, default) == (shared or {}).get(k, default)
                for k, default in _TRAINING_DEFAULTS.items())
    )


# Each training knob's default (`TrialConfig`'s), and the protocol's.
_TRAINING_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(TrialConfig) if f.name in (*TRAINING_KNOBS, "protocol")
}


# Where and how a study runs moved to `tunegap.runner.options` (`tunegap.RunOptions` is
# unchanged); an old import from here names the new place instead of failing obscurely.
_MOVED_TO_OPTIONS = ("RunOptions", "DEFAULT_STORAGE", "DEFAULT_TRACKING_URI", "TRACKING_URI_ENV",
                     "STORAGE_ENV", "default_tracking_uri", "default_storage_path")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_OPTIONS:
        # ImportError, not AttributeError: `from tunegap.study import RunOptions` would turn
        # an AttributeError into a bare "cannot import name".
        raise ImportError(f"tunegap.study.{name} moved: import it from tunegap.runner.options "
                          f"(RunOptions is also tunegap.RunOptions)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
