"""What a study may ask, checked before anything runs: seed budgets, counts, trial lengths
and numbers, scheduler settings and Optuna ranges; each refusal is one `StudyError` line.
The checks that look at a whole study take the `tunegap.study.Study` being built (typed
`Any` here: this module sits below it)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from tunegap.config import TrialConfig
from tunegap.errors import StudyError

# `--scheduler`: Tune's early stopping on test accuracy, in weight updates (see
# `tunegap.runner.tuner.build_scheduler`); "none" runs every trial to its last epoch.
# `--seeds auto`: seeds decided at planned looks rather than a number.
AUTO = "auto"
# Bounds only a typo exceeds.
MAX_TRIALS = 100_000
MAX_EPOCHS = 100_000
Scheduler = Literal["none", "asha", "median"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


def check_seed_budget(min_seeds: int, max_seeds: int) -> None:
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 2:
        raise StudyError(f"--min-seeds {min_seeds!r} is not allowed: use an integer >= 2 "
                         "(a Welch interval needs 2 seeds on each side)")
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int) or max_seeds < min_seeds:
        raise StudyError(f"--max-seeds {max_seeds!r} is not allowed: use an integer >= "
                         f"--min-seeds ({min_seeds})")


def frontier_budget(batch_sizes: Iterable[int], base_batch_size: int, max_seeds: int) -> int:
    """An upper bound on the trials of a frontier search (Tune needs one up front)."""
    probes = sum(3 + math.ceil(math.log2(max(1, math.ceil(b / base_batch_size))))
                 for b in batch_sizes)
    return (1 + probes) * max_seeds


def check_count(flag: str, value: object, most: int | None = None) -> None:
    """A whole number >= 1 (at most `most`), or one StudyError line naming `flag`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{flag} {value!r} is not allowed: use an integer >= 1")
    if most is not None and value > most:
        raise StudyError(f"{flag} {value!r} is not allowed: use an integer from 1 to {most}")


def check_optional_count(flag: str, value: object, most: int | None = None) -> None:
    """None (left to its default), or `check_count`'s whole number >= 1 (at most `most`)."""
    if value is not None:
        check_count(flag, value, most)


def check_scheduler(study: Any) -> None:
    if study.scheduler not in SCHEDULERS:
        raise StudyError(f"--scheduler {study.scheduler!r} is not allowed: use "
                         f"{', '.join(SCHEDULERS)}")
    if study.scheduler == "none":
        return
    if study.search == "frontier" or study.seeds == AUTO:
        # Adaptive searches decide seeds from finished trials; a stopped one would look
        # like a finished seed with too few epochs.
        what = "--search frontier" if study.search == "frontier" else "--seeds auto"
        instead = ("--scheduler none" if study.search == "frontier"
                   else "a number of seeds (e.g. --seeds 3), or --scheduler none")
        raise StudyError(f"--scheduler {study.scheduler} with {what} is not allowed: adaptive "
                         f"searches decide seeds from finished trials; use {instead}")
    check_count("grace_updates", study.grace_updates)
    factor = study.reduction_factor
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not (
        math.isfinite(factor) and factor > 1
    ):
        raise StudyError(f"reduction_factor {factor!r} is not allowed: use a number > 1")


def check_trial_length(configs: Iterable[TrialConfig]) -> None:
    """Refuse a regime no trial could finish (a multiplier typed with extra zeros)."""
    seen = set()
    for config in configs:
        key = (config.workload, config.batch_size, config.epochs, config.regime_multiplier)
        if key in seen or config.max_updates is not None:
            continue  # a budget of updates is bounded by MAX_UPDATES instead
        seen.add(key)
        epochs = config.regime().resolve(config.batch_size, train_size=1).epochs
        if epochs > MAX_EPOCHS:
            raise StudyError(
                f"regime multiplier {config.regime_multiplier} gives {epochs} epochs at batch "
                f"size {config.batch_size}: at most {MAX_EPOCHS} are allowed"
            )


def check_trial_count(study: Any) -> None:
    """Refuse, before building any, more trials than a study can hold (a typo in --seeds)."""
    planned = math.prod(len(v) for v in study.grid.values()) + len(study.points)
    seeds = study.max_seeds if study.seeds == AUTO else int(study.seeds)
    if planned * seeds > MAX_TRIALS:
        raise StudyError(
            f"the study would run {planned * seeds} trials ({planned} grid point(s) x {seeds} "
            f"seed(s)): at most {MAX_TRIALS} are allowed; use fewer values or seeds"
        )


# Knobs Optuna may draw from a range (the others it takes from the grid, as choices), and
# those it draws on a log scale.
RANGE_KNOBS = ("lr_exponent", "base_lr", "momentum", "weight_decay", "warmup_epochs",
               "warmup_start_factor", "label_smoothing")
LOG_RANGE_KNOBS = ("base_lr", "weight_decay")


def check_optuna_space(space: Mapping[str, Any]) -> None:
    for knob, bounds in space.items():
        if knob not in RANGE_KNOBS:
            raise StudyError(f"the Optuna range of {knob!r} is not allowed: give ranges of "
                             f"{', '.join(RANGE_KNOBS)}, and other knobs' values in the grid")
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise StudyError(f"the Optuna range of {knob} {bounds!r} is not allowed: give "
                             "(low, high)") from None
        positive = knob in LOG_RANGE_KNOBS
        if not (math.isfinite(low) and math.isfinite(high) and low < high
                and (low > 0 if positive else low >= 0)):
            floor = "0 < low" if positive else "0 <= low"
            raise StudyError(f"the Optuna range of {knob} {bounds!r} is not allowed: use "
                             f"finite numbers with {floor} < high")
