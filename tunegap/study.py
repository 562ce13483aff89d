"""`Study` and `run_study`: one runner for every study, from CLI arguments to the gap map.

Data flow: CLI -> `Study` (validated before anything starts) -> MLflow parent run ->
`tune.Tuner(GapTrainable, ...)` with an explicit list of trial configs (a grid, the baseline
added automatically) or Optuna -> per-trial MLflow child runs (tracking callback) -> at the
end: Parquet tables, gap map figures and summary.md, logged as artifacts of the parent run.

Each execution lives in `<storage>/<study>/<run_name>/` (Tune's experiment folder). `--resume`
continues the newest one with `Tuner.restore`: finished trials are kept, interrupted ones
continue from their last checkpoint, and MLflow keeps one child run per trial.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from tunegap.config import TrialConfig
from tunegap.cpu_memory import MODE_VARIABLE as CPU_MALLOC_VARIABLE
from tunegap.cpu_memory import cpu_malloc_mode
from tunegap.metrics import METRIC_NAMES
from tunegap.regime import MATCHED
from tunegap.workloads import Workload, get_workload

KNOBS = ("batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier", "base_lr")
INSTRUMENTS = ("noise_scale_every", "sharpness_every")
SEARCHES = ("grid", "optuna")
STATE_FILE = "tunegap_study.json"
JOURNAL_FILE = "epochs_journal.jsonl"
JOURNAL_KEYS = frozenset((*METRIC_NAMES, "diverged"))
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
            get_workload(self.workload)
        except ValueError as err:
            raise StudyError(str(err)) from None
        unknown = sorted(set(self.instruments) - set(INSTRUMENTS))
        if unknown:
            raise StudyError(f"unknown instrument(s) {', '.join(unknown)}: use {', '.join(INSTRUMENTS)}")
        if self.target_test_acc is not None and not 0 < self.target_test_acc <= 100:
            raise StudyError(f"--target-acc {self.target_test_acc!r} is not allowed: use 0 < percent <= 100")
        unknown = sorted(set(self.grid) - set(KNOBS))
        if unknown:
            raise StudyError(f"unknown knob(s) {', '.join(unknown)}: use {', '.join(KNOBS)}")
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


@dataclass
class StudyOutcome:
    """What a finished study leaves behind."""

    run_dir: Path
    parent_run_id: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    cells: pd.DataFrame
    table: str
    files: list[Path]


def study_root(options: RunOptions, study: Study) -> Path:
    return Path(options.storage_path).expanduser().resolve() / study.name


def latest_run_dir(root: Path) -> Path | None:
    """The newest execution of a study that has Tune state to restore."""
    runs = sorted(p for p in root.glob("*/" + STATE_FILE)) if root.exists() else []
    return runs[-1].parent if runs else None


def check_storage(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StudyError(
            f"--storage-path {root.parent} is not writable ({err.strerror}): "
            "choose a folder you can write to"
        ) from None


def _optuna_search(study: Study) -> tuple[Any, dict[str, Any]]:
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


def _sort_longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    # Start the most expensive trials first so they do not run alone at the end.
    def cost(c: TrialConfig) -> float:
        r = c.regime().resolve(c.batch_size, train_size=1)
        return r.epochs * (1 + 2000 / c.batch_size)

    return sorted(configs, key=cost, reverse=True)


def _trainable_with_resources(study: Study, options: RunOptions) -> Any:
    """GapTrainable with the CPUs and (planned) GPUs each of the study's trials reserves."""
    from tunegap.trainable import GapTrainable, trial_resources

    first = study.trial_configs()[0].with_changes(device=options.device)
    resources = trial_resources(first.to_dict(), gpus_per_trial=options.gpus_per_trial)
    return tune.with_resources(GapTrainable, resources)


def _build_tuner(study: Study, options: RunOptions, run_dir: Path, callbacks: list) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    configs = [
        c.with_changes(device=options.device, data_dir=options.data_dir)
        for c in study.trial_configs()
    ]
    defaults = configs[0].to_dict()
    trainable = _trainable_with_resources(study, options)
    if study.search == "optuna":
        searcher, space = _optuna_search(study)
        param_space = {**defaults, **space}
        num_samples = study.num_samples
    else:
        points = [c.to_dict() for c in _sort_longest_first(configs)]
        searcher = BasicVariantGenerator(points_to_evaluate=points)
        # Every point sets every key; None placeholders keep Tune from warning that a
        # point differs from the "search space" (there is none beyond the points).
        param_space = dict.fromkeys(defaults)
        num_samples = len(points)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=num_samples,
            max_concurrent_trials=options.max_concurrent,
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


def _init_ray(options: RunOptions) -> None:
    import ray

    # Frequent small checkpoints are cheap here (a trial is small); Tune's warning about
    # them would drown the progress lines.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console output prints its own banner even at verbose=0; the legacy one is
    # silent there, leaving the runner's one line per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    if ray.is_initialized():
        return
    # Trials take their environment from the Ray they run in, which on a cluster is not the
    # driver's: pass on the malloc mode checked here, so trials run what the driver was told.
    mode = os.environ.get(CPU_MALLOC_VARIABLE)
    runtime_env = {} if mode is None else {"runtime_env": {"env_vars": {CPU_MALLOC_VARIABLE: mode}}}
    if options.address and options.address != "local":
        ray.init(address=options.address, log_to_driver=False, **runtime_env)
    else:
        # "local" starts a fresh Ray owned by this process, even where `ray start` left one.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, **runtime_env)


def local_gpu_count() -> int:
    """GPUs a local Ray offers trials: the running Ray's own count where this process has
    one already (a notebook, a test session), else the machine's."""
    import ray

    if ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_trial_hardware(study: Study, options: RunOptions) -> RunOptions:
    """`options` with the planned GPUs per trial, and `--device auto` made "cpu" where a
    trial gets no GPU share: Ray leaves a GPU visible to an actor that reserved none, so
    "auto" would otherwise train on a GPU nobody reserved."""
    gpus = plan_gpus_per_trial(get_workload(study.workload), options, local_gpu_count())
    device = "cpu" if gpus == 0 and options.device == "auto" else options.device
    return replace(options, gpus_per_trial=gpus, device=device)


def plan_gpus_per_trial(workload: Workload, options: RunOptions, local_gpus: int) -> float:
    """The GPUs each trial asks Ray for, checked before any trial starts.

    A local Ray has this machine's GPUs only: `--device auto` without one trains on the CPU
    (asking for a GPU would leave every trial pending for ever), and `--device cuda` without
    one, or more GPUs per trial than there are, is refused. On a cluster (`--address`) the
    autoscaler may still be adding GPU nodes, so only the request itself is checked.
    """
    if options.device == "cpu":
        return 0.0
    gpus = workload.gpus_per_trial if options.gpus_per_trial is None else options.gpus_per_trial
    on_cluster = options.address not in (None, "local")
    if not on_cluster and local_gpus == 0:
        if options.device == "cuda":
            raise StudyError(
                "--device cuda is not allowed here: CUDA is not available (use --device auto "
                "or cpu, or --address to run on a cluster with GPUs)"
            )
        return 0.0
    if options.device == "cuda" and gpus == 0:
        raise StudyError(
            f"--device cuda with 0 GPUs per trial (workload {workload.name}) is not allowed: "
            "pass --gpus-per-trial, e.g. 0.25 for four trials per GPU"
        )
    if not on_cluster and gpus > local_gpus:
        raise StudyError(
            f"--gpus-per-trial {gpus:g} is more than the {local_gpus} GPU(s) here: use at "
            f"most {local_gpus}"
        )
    return gpus


def total_trials(study: Study) -> int:
    return study.num_samples if study.search == "optuna" else len(study.trial_configs())


def run_study(study: Study, options: RunOptions) -> StudyOutcome:
    """Run (or with `options.resume`, continue) a study; everything is checked first."""
    from tunegap.tracking import MlflowTrackingCallback, StudyTracker, check_tracking_uri

    root = study_root(options, study)
    check_storage(root)
    options = plan_trial_hardware(study, options)
    hardware = {"gpus_per_trial": options.gpus_per_trial, "device": options.device}
    if options.resume:
        run_dir = latest_run_dir(root)
        if run_dir is None:
            raise StudyError(
                f"--resume found no previous run of study {study.name} under {root}: "
                "run it once without --resume"
            )
        state = json.loads((run_dir / STATE_FILE).read_text())
        if state["study"] != study.describe():
            raise StudyError(
                f"--resume: the study in {run_dir} was run with other options: "
                "repeat the original command with --resume"
            )
        # Restored trials keep the resources and device they were created with: a resume
        # that would plan others (another machine, other flags) could never run them.
        saved = state.get("hardware", hardware)
        if saved != hardware:
            raise StudyError(
                f"--resume: the study in {run_dir} gave each trial {saved['gpus_per_trial']:g} "
                f"GPU(s) on device {saved['device']}, but here it would be "
                f"{hardware['gpus_per_trial']:g} on {hardware['device']}: resume where it "
                "started, with the same --device and --gpus-per-trial"
            )
        parent_run_id = state["parent_run_id"]
    else:
        run_dir = root / time.strftime("%Y%m%d-%H%M%S")
        while run_dir.exists():
            run_dir = run_dir.with_name(run_dir.name + "x")
        parent_run_id = None
    try:
        check_tracking_uri(options.tracking_uri)
    except ValueError as err:
        raise StudyError(str(err).splitlines()[0]) from None

    tracker = StudyTracker(options.tracking_uri, study.name, parent_run_id=parent_run_id)
    parent_run_id = tracker.start_parent(
        params={
            **{k: v if isinstance(v, str | int | float) else json.dumps(v)
               for k, v in study.describe().items() if v is not None},
            "run_dir": str(run_dir),
            "total_trials": total_trials(study),
        },
        tags={"tunegap.question": study.question[:5000]},
    )
    if not options.resume:
        run_dir.mkdir(parents=True)
        state = {"study": study.describe(), "parent_run_id": parent_run_id,
                 "tracking_uri": options.tracking_uri, "hardware": hardware}
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    _init_ray(options)
    callbacks = [
        MlflowTrackingCallback(tracker),
        EpochJournal(run_dir / JOURNAL_FILE),
        ProgressPrinter(total_trials(study), quiet=options.quiet),
    ]
    status = "FAILED"
    try:
        if options.resume and tune.Tuner.can_restore(str(run_dir)):
            tuner = tune.Tuner.restore(
                str(run_dir),
                trainable=_trainable_with_resources(study, options),
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            tuner = _build_tuner(study, options, run_dir, callbacks)
        started = time.perf_counter()
        tuner.fit()
        wall = time.perf_counter() - started
        outcome = finish_study(study, run_dir, tracker, wall_seconds=wall)
        status = "FINISHED"
        return outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish_parent(status)


def collect_records(
    run_dir: Path, run_ids: dict[str, str], *, target_test_acc: float | None = None
) -> list[dict[str, Any]]:
    """Every trial of a Tune experiment as a plain record (see `tunegap.results`)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run_dir))
    journal = read_journal(run_dir / JOURNAL_FILE)
    records = []
    for trial in analysis.trials:
        history = []
        # trial.path is the storage copy; local_path is Ray's per-session staging folder.
        result_file = Path(trial.path) / "result.json"
        if result_file.exists():
            history = [json.loads(ln) for ln in result_file.read_text().splitlines() if ln.strip()]
        # The driver's journal comes last: where both have an epoch, its report wins, and it
        # fills epochs that a restart on another node dropped from result.json.
        history += journal.get(trial.trial_id, [])
        resolved = next(
            ({k: v for k, v in row.items() if k.startswith("resolved_")}
             for row in reversed(history) if "resolved_lr" in row),
            {},
        )
        config = TrialConfig.from_dict(dict(trial.config)).to_dict()
        if trial.status == "ERROR":
            outcome = "error"
        elif history and history[-1].get("diverged"):
            outcome = "diverged"
        elif trial.status == "TERMINATED":
            outcome = "completed"
        else:
            outcome = "error"
        error = None
        if outcome == "error":
            error = _error_text(trial)
        records.append({
            "trial_id": trial.trial_id,
            "mlflow_run_id": run_ids.get(trial.trial_id),
            "is_baseline": is_baseline(config),
            "config": config,
            "resolved": resolved,
            "outcome": outcome,
            "error": error,
            "history": history,
            "target_test_acc": target_test_acc,
        })
    return records


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:2000] if lines else "unknown error"
    return f"trial ended with status {trial.status}"


def finish_study(study: Study, run_dir: Path, tracker: Any, *, wall_seconds: float) -> StudyOutcome:
    """Tables, map, summary: written into the run folder and logged on the parent run."""
    from tunegap import gapmap, results

    records = collect_records(run_dir, tracker.mlflow_run_ids(),
                              target_test_acc=study.target_test_acc)
    trials_df, epochs_df = results.build_tables(records, study=study.name)
    files = list(results.write_tables(trials_df, epochs_df, run_dir).values())
    cells, tolerance = gapmap.compute_cells(trials_df, tolerance=study.tolerance)
    table = gapmap.markdown_table(cells)
    try:
        figures = study.figures(cells, trials_df, epochs_df) if study.figures else {}
        files += gapmap.save_figures(figures, run_dir)
    except Exception as err:  # a figure must never cost the study its results
        print(f"warning: the figures of {study.name} failed: {err}", file=sys.stderr)
        tracker.log_parent_metrics({"figure_errors": 1})
    train_seconds = float(trials_df["train_seconds"].fillna(0).sum())
    counts = trials_df["outcome"].value_counts().to_dict()
    if study.report is not None:
        table = table + "\n\n" + study.report(cells, trials_df, epochs_df)
    summary = render_summary(study, table, tolerance, counts, wall_seconds, train_seconds,
                             figures=[p.name for p in files if p.suffix == ".png"],
                             baseline_sentence=gapmap.baseline_summary(cells))
    summary_path = run_dir / "summary.md"
    summary_path.write_text(summary)
    files.append(summary_path)
    cells_path = run_dir / "cells.csv"
    cells.to_csv(cells_path, index=False)
    files.append(cells_path)
    tracker.log_parent_artifacts(files)
    tracker.log_parent_metrics({
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        "trials_completed": counts.get("completed", 0),
        "trials_diverged": counts.get("diverged", 0),
        "trials_error": counts.get("error", 0),
        "tolerance": tolerance,
    })
    print(table, flush=True)
    print(f"\n{study.name}: {len(trials_df)} trials, {dict(counts)}; "
          f"tables and map in {run_dir}", flush=True)
    return StudyOutcome(run_dir=run_dir, parent_run_id=tracker.parent_run_id, trials=trials_df,
                        epochs=epochs_df, cells=cells, table=table, files=files)


def render_summary(study: Study, table: str, tolerance: float, counts: dict[str, int],
                   wall_seconds: float, train_seconds: float, *, figures: Sequence[str],
                   baseline_sentence: str) -> str:
    lines = [f"# tunegap study `{study.name}` on `{study.workload}`", ""]
    if study.question:
        lines += [study.question, ""]
    lines += [
        f"- trials: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        f"- seeds: {study.seeds}; search: {study.search}",
        f"- gap = baseline test accuracy (mean over seeds) - cell's; closed when gap <= "
        f"{tolerance:.2f} points",
        f"- wall time {wall_seconds:.0f} s; sum of trial training time {train_seconds:.0f} s",
        "",
        table,
        "",
        baseline_sentence,
        "",
    ]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


class EpochJournal(tune.Callback):
    """Every epoch result the driver receives, appended to a JSON-lines file in the run folder.

    A trial's own `result.json` in storage is synced with its checkpoints; when a node dies
    and the trial restarts elsewhere from an older checkpoint, Tune replaces the driver's
    copy with the stored one and the epochs in between vanish from it. The driver saw every
    one of them, so the tables are built from both (`collect_records`).
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        row = {k: v for k, v in result.items() if k in JOURNAL_KEYS or k.startswith("resolved_")}
        row["trial_id"] = trial.trial_id
        with open(self.path, "a") as journal:
            journal.write(json.dumps(row) + "\n")


def read_journal(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The journal's rows per trial id, in the order the driver received them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short when the driver was killed mid-write
            rows.setdefault(row.pop("trial_id"), []).append(row)
    return rows


class ProgressPrinter(tune.Callback):
    """One line per finished trial: done / total and the key metrics, not Ray's table."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self.started = time.perf_counter()
        self.done: int | None = None

    def _line(self, trials: list, trial: Any, outcome: str) -> None:
        if self.done is None:
            # First call: count what finished before, so a resumed study counts on from there.
            self.done = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        self.done += 1
        done = self.done
        if self.quiet:
            return
        r = trial.last_result or {}
        c = trial.config
        print(
            f"[{done}/{self.total}] B={c['batch_size']} ghost={c['ghost_batch_size'] or 'BN'} "
            f"a={c['lr_exponent']:g} rho={c['regime_multiplier']} seed={c['seed']}: {outcome} "
            f"test_acc {r.get('test_acc', float('nan')):.2f} epochs {r.get('epoch', 0)} "
            f"({time.perf_counter() - self.started:.0f}s)",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._line(trials, trial, "diverged" if last.get("diverged") else "completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "error")


# ---------------------------------------------------------------- command line


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def int_list(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a comma-separated list of integers"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: use positive integers, e.g. 32,512")
        return values

    return parse


def ghost_list(text: str) -> tuple[int | None, ...]:
    values: list[int | None] = []
    for v in text.split(","):
        v = v.strip().lower()
        if v in ("none", "bn"):
            values.append(None)
            continue
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--ghost-sizes {text!r}: use positive integers or 'none', e.g. none,32,128"
            ) from None
        if n <= 0:
            raise argparse.ArgumentTypeError(f"--ghost-sizes {text!r}: ghost sizes must be > 0")
        values.append(n)
    return tuple(values)


def float_list(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a list of numbers") from None
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: use finite numbers >= 0")
        return values

    return parse


def multiplier_list(text: str) -> tuple[float | str, ...]:
    values: list[float | str] = []
    for v in text.split(","):
        v = v.strip().lower()
        if v == MATCHED:
            values.append(MATCHED)
            continue
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--multipliers {text!r}: use numbers > 0 or 'matched', e.g. 1,4,matched"
            ) from None
        if not math.isfinite(x) or x <= 0:
            raise argparse.ArgumentTypeError(f"--multipliers {text!r}: use finite numbers > 0")
        values.append(x)
    return tuple(values)


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {value} is not allowed: use an integer >= 1")
        return value

    return parse


def _number(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: use a finite number >= 0")
        return value

    return parse


def study_parser(name: str, description: str, *, seeds: int = 1,
                 searches: Sequence[str] = ("grid",)) -> argparse.ArgumentParser:
    """The options every study has; a study module adds its own grid options."""
    p = _OneLineParser(prog=f"python -m tunegap.studies.{name}", description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="mnist1d-cnn", help="a named workload (default mnist1d-cnn)")
    p.add_argument("--seeds", type=positive_int("--seeds"), default=seeds,
                   help=f"seeds per configuration (default {seeds})")
    p.add_argument("--search", choices=list(searches), default="grid")
    p.add_argument("--num-samples", type=positive_int("--num-samples"), default=20,
                   help="trials for --search optuna")
    p.add_argument("--max-concurrent", type=positive_int("--max-concurrent"), default=None)
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' on a cluster); default 'local': a new local Ray")
    p.add_argument("--storage-path", default=None,
                   help=f"results folder (default ${STORAGE_ENV} where set, else {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default ${TRACKING_URI_ENV} where set, else "
                        f"{DEFAULT_TRACKING_URI} in this folder)")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted run")
    p.add_argument("--epochs", type=positive_int("--epochs"), default=None,
                   help="override the workload's base epochs (quick looks)")
    p.add_argument("--tolerance", type=_number("--tolerance"), default=None,
                   help="points of gap still counted as closed (default: baseline seed std)")
    p.add_argument("--gpus-per-trial", type=_number("--gpus-per-trial"), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=5,
                   help="epochs between trial checkpoints (default 5)")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return p


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


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        address=args.address,
        storage_path=default_storage_path() if args.storage_path is None else args.storage_path,
        tracking_uri=args.tracking_uri or default_tracking_uri(),
        resume=args.resume,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
        device=args.device,
        data_dir=args.data_dir,
        checkpoint_every=args.checkpoint_every,
        quiet=args.quiet,
    )


def study_main(
    parser: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace], Study],
    argv: Sequence[str] | None = None,
) -> StudyOutcome:
    """Parse, validate everything (exit 2 with one line on bad input), then run."""
    args = parser.parse_args(argv)
    try:
        study = build(args)
        options = options_from_args(args)
        return run_study(study, options)
    except StudyError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
        raise  # unreachable; keeps type checkers content


def common_study_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Study fields that come straight from the common options."""
    return {
        "workload": args.workload,
        "seeds": args.seeds,
        "search": args.search,
        "num_samples": args.num_samples,
        "epochs": args.epochs,
        "tolerance": args.tolerance,
    }
