"""The `tune.Tuner` of a study: its trials as grid points or an Optuna space, a scheduler,
resources, checkpoints and failures, and the trainable that carries the study's workload to
workers.

An Optuna search keeps its study in the run folder (`optuna.db`, one Optuna study named
`<study>-<run folder>`), so `optuna-dashboard sqlite:///<run_dir>/optuna.db` and
`optuna.load_study` open it, and `--resume` continues the same Optuna study
(`StoredOptunaSearch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tunegap.config import TrialConfig
from tunegap.names import DIVERGED, RESOLVED_PREFIX
from tunegap.plan import StudyPlan
from tunegap.runner import trainable
from tunegap.runner.adaptive import FrontierSearch, SeedsUntilDecided
from tunegap.runner.options import RunOptions
from tunegap.study import Study
from tunegap.study_checks import LOG_RANGE_KNOBS

logger = logging.getLogger(__name__)

OPTUNA_FILE = "optuna.db"
# Schedulers measure a trial's age in weight updates, so a large batch is compared with a
# small one after the same work, not after the same number of epochs.
SCHEDULER_TIME = "updates"
# ASHA's last rung: trials end at the last epoch of their own regime, long before this.
ASHA_MAX_UPDATES = 2**40


def optuna_storage_url(run_dir: Path) -> str:
    """The SQLAlchemy URL of a run's Optuna storage, `<run_dir>/optuna.db` (absolute)."""
    return f"sqlite:///{(Path(run_dir) / OPTUNA_FILE).resolve()}"


def optuna_study_name(study: Study, run_dir: Path) -> str:
    """The Optuna study of one execution: `<study>-<run folder>`, e.g. lr_scaling-20260101-120000."""
    return f"{study.name}-{Path(run_dir).name}"


class StoredOptunaSearch(OptunaSearch):
    """`OptunaSearch` whose Optuna study lives in an SQLite file, and survives `--resume`.

    Tune pickles the searcher (`tuner.pkl`, `searcher-state-*.pkl`), so it carries the
    storage URL and opens the `RDBStorage` itself. On a resume Tune first sets the restored
    searcher up again, then loads its saved state: the study is loaded, not made anew, its
    first points are not queued a second time, and Optuna trials asked after the last saved
    state (Tune never ran them) are marked FAIL instead of staying RUNNING. A trial a
    scheduler stopped before its last epoch is told PRUNED, not COMPLETE with a partial value.
    """

    def __init__(self, *, storage_url: str, study_name: str, **kwargs: Any) -> None:
        self.storage_url = storage_url
        super().__init__(study_name=study_name, storage=None, **kwargs)

    # OptunaSearch (Ray 2.60) takes a storage object, not a URL, and has no public hook for
    # "load the study instead of making it" or for the trials it asked and finished: its own
    # `_setup_study`, `_storage`, `_study_name`, `_points_to_evaluate`, `_ot_study`,
    # `_ot_trials` and `_completed_trials` are the only way (missing public API: a storage
    # URL with load_if_exists, and the searcher's Optuna trial per Tune trial).
    def _setup_study(self, mode: Any) -> None:
        import optuna

        self._storage = optuna.storages.RDBStorage(self.storage_url)
        if self._study_has_trials():
            self._points_to_evaluate = []  # queued when the study was made
        super()._setup_study(mode)

    def _study_has_trials(self) -> bool:
        import optuna

        try:
            existing = optuna.load_study(study_name=self._study_name, storage=self._storage)
        except KeyError:
            return False
        return bool(existing.get_trials(deepcopy=False))

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_unknown_trials()

    def _fail_unknown_trials(self) -> None:
        from optuna.trial import TrialState

        if self._ot_study is None:
            return
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if error or not result or not stopped_early(result) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        from optuna.trial import TrialState

        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        except Exception as err:  # Optuna refuses to tell a trial twice (a resumed one)
            logger.warning("Optuna: %s", err)
        self._completed_trials.add(trial_id)


def stopped_early(result: dict[str, Any]) -> bool:
    """A last result whose epoch is before the last of its regime, and not a divergence."""
    planned = result.get(f"{RESOLVED_PREFIX}epochs")
    epoch = result.get("epoch")
    return (not result.get(DIVERGED) and planned is not None and epoch is not None
            and epoch < planned)


def build_scheduler(study: Study) -> Any:
    """The study's Tune scheduler (None for "none"): ASHA or median stopping on test_acc,
    with time in weight updates and `study.grace_updates` before any trial can stop."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    common = {"time_attr": SCHEDULER_TIME, "metric": "test_acc", "mode": "max",
              "grace_period": study.grace_updates}
    if study.scheduler == "asha":
        return ASHAScheduler(max_t=ASHA_MAX_UPDATES, reduction_factor=study.reduction_factor,
                             **common)
    if study.scheduler == "median":
        return MedianStoppingRule(**common)
    return None


def optuna_search(study: Study, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Optuna over the grid's values (categorical) and `optuna_space` (ranges), its study
    stored in `run_dir`'s optuna.db (`optuna_storage_url`, `optuna_study_name`).

    The baseline is Optuna's first point: B0 is added to the batch-size choices, with the
    workload's own base lr and no scaling, so the gap can be measured against it.
    """
    regime = study.workload_def.regime
    space: dict[str, Any] = {}
    for knob, values in study.grid.items():
        choices = list(values)
        if knob == "batch_size" and regime.base_batch_size not in choices:
            choices.insert(0, regime.base_batch_size)
        space[knob] = tune.choice(choices)
    for knob, (low, high) in study.optuna_space.items():
        log = knob in LOG_RANGE_KNOBS
        space[knob] = tune.loguniform(low, high) if log else tune.uniform(low, high)
    baseline = {"batch_size": regime.base_batch_size, "lr_exponent": 0.0,
                "base_lr": regime.base_lr}
    point = {k: v for k, v in baseline.items() if k in space}
    searcher = StoredOptunaSearch(
        storage_url=optuna_storage_url(run_dir), study_name=optuna_study_name(study, run_dir),
        metric="test_acc", mode="max", seed=0,
        points_to_evaluate=[point] if study.include_baseline else None,
    )
    return searcher, space


def sort_longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    # Start the most expensive trials first so they do not run alone at the end.
    def cost(c: TrialConfig) -> float:
        r = c.regime().resolve(c.batch_size, train_size=1)
        return r.epochs * (1 + 2000 / c.batch_size)

    return sorted(configs, key=cost, reverse=True)


def trainable_with_resources(plan: StudyPlan, options: RunOptions) -> Any:
    """GapTrainable with the study's workload (and optimizers) on board and the CPUs and
    (planned) GPUs each of its trials reserves."""
    first = plan.configs[0].with_changes(device=options.device)
    resources = trainable.trial_resources(first.to_dict(), gpus_per_trial=options.gpus_per_trial)
    # Looked up at call time, so a test can hand in a subclass that fails on purpose.
    carrying = trainable.with_workload(trainable.GapTrainable, plan.study.workload,
                                       plan.optimizers)
    return tune.with_resources(carrying, resources)


def adaptive_search(plan: StudyPlan, configs: list[TrialConfig]) -> Any:
    """The searcher that decides seeds as results come in (`tunegap.runner.adaptive`);
    `configs` are the plan's, in its order, placed on the run's device."""
    study = plan.study
    placed = dict(zip(plan.configs, configs, strict=True))
    baseline = placed[plan.baseline].to_dict()
    if study.search == "frontier":
        first = next(placed[c] for c in plan.configs if c not in plan.baselines).to_dict()
        template = {**first, "ghost_batch_size": study.grid.get("ghost_batch_size", (None,))[0]}
        return FrontierSearch(
            study.grid["batch_size"], study.workload_def.regime.base_batch_size, template,
            baseline, margin=study.margin, min_seeds=study.min_seeds,
            max_seeds=study.max_seeds, design=study.design, accuracy=study.accuracy,
        )
    return SeedsUntilDecided(
        [c.to_dict() for c in sort_longest_first(configs)], baseline,
        margin=study.margin, max_seeds=study.max_seeds, design=study.design,
        accuracy=study.accuracy,
    )


def build_tuner(plan: StudyPlan, options: RunOptions, run_dir: Path, callbacks: list) -> Any:
    """The study's `tune.Tuner`, its experiment in `run_dir` (and, for Optuna, its study)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    study = plan.study
    configs = [c.with_changes(device=options.device, data_dir=options.data_dir)
               for c in plan.configs]
    defaults = configs[0].to_dict()
    runnable = trainable_with_resources(plan, options)
    concurrency = options.max_concurrent
    if study.search == "optuna":
        searcher, space = optuna_search(study, run_dir)
        param_space = {**defaults, **space}
        num_samples = study.num_samples
    elif plan.adaptive:
        searcher = adaptive_search(plan, configs)
        param_space = dict.fromkeys(defaults)
        num_samples = plan.total_trials
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
            scheduler=build_scheduler(study),
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
