"""The `tune.Tuner` of a study: its trials as grid points or an Optuna space, resources,
checkpoints and failures, and the trainable that carries the study's workload to workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from tunegap.config import TrialConfig
from tunegap.runner import trainable
from tunegap.runner.adaptive import FrontierSearch, SeedsUntilDecided
from tunegap.study import AUTO, RunOptions, Study, is_baseline, total_trials


def optuna_search(study: Study) -> tuple[Any, dict[str, Any]]:
    """Optuna over the grid's values (categorical) and `optuna_space` (ranges).

    The baseline is Optuna's first point: B0 is added to the batch-size choices, with the
    workload's own base lr and no scaling, so the gap can be measured against it.
    """
    from ray.tune.search.optuna import OptunaSearch

    regime = study.workload_def.regime
    space: dict[str, Any] = {}
    for knob, values in study.grid.items():
        choices = list(values)
        if knob == "batch_size" and regime.base_batch_size not in choices:
            choices.insert(0, regime.base_batch_size)
        space[knob] = tune.choice(choices)
    for knob, (low, high) in study.optuna_space.items():
        space[knob] = tune.loguniform(low, high) if knob == "base_lr" else tune.uniform(low, high)
    baseline = {"batch_size": regime.base_batch_size, "lr_exponent": 0.0,
                "base_lr": regime.base_lr}
    point = {k: v for k, v in baseline.items() if k in space}
    searcher = OptunaSearch(metric="test_acc", mode="max", seed=0,
                            points_to_evaluate=[point] if study.include_baseline else None)
    return searcher, space


def sort_longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    # Start the most expensive trials first so they do not run alone at the end.
    def cost(c: TrialConfig) -> float:
        r = c.regime().resolve(c.batch_size, train_size=1)
        return r.epochs * (1 + 2000 / c.batch_size)

    return sorted(configs, key=cost, reverse=True)


def trainable_with_resources(study: Study, options: RunOptions) -> Any:
    """GapTrainable with the study's workload on board and the CPUs and (planned) GPUs each
    of its trials reserves."""
    first = study.trial_configs()[0].with_changes(device=options.device)
    resources = trainable.trial_resources(first.to_dict(), gpus_per_trial=options.gpus_per_trial)
    # Looked up at call time, so a test can hand in a subclass that fails on purpose.
    carrying = trainable.with_workload(trainable.GapTrainable, study.workload)
    return tune.with_resources(carrying, resources)


def adaptive_search(study: Study, configs: list[TrialConfig]) -> Any:
    """The searcher that decides seeds as results come in (`tunegap.runner.adaptive`)."""
    baseline = next(c for c in configs if c.seed == 0 and is_baseline(c.to_dict())).to_dict()
    if study.search == "frontier":
        first = next(c for c in configs if not is_baseline(c.to_dict())).to_dict()
        template = {**first, "ghost_batch_size": study.grid.get("ghost_batch_size", (None,))[0]}
        return FrontierSearch(
            study.grid["batch_size"], study.workload_def.regime.base_batch_size, template,
            baseline, margin=study.margin, min_seeds=study.min_seeds,
            max_seeds=study.max_seeds, accuracy=study.accuracy,
        )
    return SeedsUntilDecided(
        [c.to_dict() for c in sort_longest_first(configs)], baseline,
        margin=study.margin, max_seeds=study.max_seeds, accuracy=study.accuracy,
    )


def build_tuner(study: Study, options: RunOptions, run_dir: Path, callbacks: list) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    configs = [
        c.with_changes(device=options.device, data_dir=options.data_dir)
        for c in study.trial_configs()
    ]
    defaults = configs[0].to_dict()
    runnable = trainable_with_resources(study, options)
    concurrency = options.max_concurrent
    if study.search == "optuna":
        searcher, space = optuna_search(study)
        param_space = {**defaults, **space}
        num_samples = study.num_samples
    elif study.search == "frontier" or study.seeds == AUTO:
        searcher = adaptive_search(study, configs)
        param_space = dict.fromkeys(defaults)
        num_samples = total_trials(study)
    else:
        points = [c.to_dict() for c in sort_longest_first(configs)]
        # Tune ignores max_concurrent_trials for a generator handed in: it must be told itself.
        searcher = BasicVariantGenerator(points_to_evaluate=points,
                                         max_concurrent=options.max_concurrent or 0)
        concurrency = None
        # Every point sets every key; None placeholders keep Tune from warning that a
        # point differs from the "search space" (there is none beyond the points).
        param_space = dict.fromkeys(defaults)
        num_samples = len(points)
    return tune.Tuner(
        runnable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=options.checkpoint_every,
                checkpoint_at_end=True,
                num_to_keep=2,
            ),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            verbose=0,
        ),
    )
