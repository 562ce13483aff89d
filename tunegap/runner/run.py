"""`run_study`: from a validated `Study` to the gap map, and `--resume`.

Data flow: `Study` (validated before anything starts) -> MLflow parent run ->
`tune.Tuner(GapTrainable, ...)` with an explicit list of trial configs (a grid, the baseline
added automatically) or Optuna -> per-trial MLflow child runs (tracking callback) -> at the
end: Parquet tables, gap map figures and summary.md, logged as artifacts of the parent run,
and each trial's cell (gap, interval, verdict) on its child run (`tunegap.tracking.results`).

What the terminal shows: one line before Ray starts (`report_text.study_banner`: trials,
workers, where results and MLflow go), one line per finished trial (`ProgressPrinter`: done / running /
left, ETA), then the map's table, a sentence on the trials and where the files are, and the
command and URL that open the parent run in MLflow's UI (`tunegap.tracking.results.ui_lines`).

Each execution lives in `<storage>/<study>/<run_name>/` (Tune's experiment folder). `--resume`
continues the newest one with `Tuner.restore`: finished trials are kept, interrupted ones
continue from their last checkpoint, and MLflow keeps one child run per trial.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from ray import tune

from tunegap.atomic import write_text_atomically
from tunegap.errors import StudyError, StudyInterrupted, StudyStopped
from tunegap.plan import StudyPlan
from tunegap.runner.finish import StudyOutcome, finish_study
from tunegap.runner.interrupts import InterruptWatch, finished_trials, unfinished_trials
from tunegap.runner.options import RunOptions
from tunegap.runner.progress import ProgressPrinter
from tunegap.runner.records import JOURNAL_FILE, EpochJournal
from tunegap.runner.report_text import (
    no_earlier_run_line,
    parent_unanswered_warning,
    parent_unmarked_warning,
    study_banner,
)
from tunegap.runner.resources import init_ray, plan_trial_hardware
from tunegap.runner.state_copies import StateCopies, StateUnrecoverable, repair_state
from tunegap.runner.storage_faults import (
    QuietStorageFaults,
    check_storage,
    storage_fault,
)
from tunegap.runner.tuner import build_tuner, trainable_with_resources
from tunegap.study import Study
from tunegap.text import first_line, one_line
from tunegap.tracking.results import parent_run_fields
from tunegap.tracking.uri import store_name

STATE_FILE = "tunegap_study.json"
# Written last, when a study has finished (`finish.write_reports`).
SUMMARY_FILE = "summary.md"


def study_root(options: RunOptions, study: Study) -> Path:
    return Path(options.storage_path).expanduser().resolve() / study.name


def latest_run_dir(root: Path) -> Path | None:
    """The run `--resume` continues: the newest one that did not finish (no summary.md), else
    the newest (a finished run is resumed to log what MLflow missed). Two studies started at
    once and both interrupted are thus resumed newest first, one `--resume` each."""
    runs = sorted(p.parent for p in root.glob("*/" + STATE_FILE)) if root.exists() else []
    unfinished = [r for r in runs if not (r / SUMMARY_FILE).exists()]
    return (unfinished or runs)[-1] if runs else None


def preflight_study(plan: StudyPlan, options: RunOptions) -> None:
    """The workload's model once forward and backward on a real batch, in the driver
    (`tunegap.preflight`): a user's bug is one line here, not a traceback in every trial.
    The trial checked is the first with a ghost batch, where there is one."""
    from tunegap.preflight import PreflightError, preflight

    configs = plan.configs
    config = next((c for c in configs if c.ghost_batch_size is not None), configs[0])
    try:
        preflight(config.with_changes(device="cpu", data_dir=options.data_dir))
    except PreflightError as err:
        raise StudyError(str(err)) from None


def check_inputs(plan: StudyPlan, options: RunOptions) -> None:
    """The checks that need no Ray and create nothing: data, tracking store, Ray address."""
    from tunegap.runner.resources import check_ray_address
    from tunegap.tracking import check_tracking_uri
    from tunegap.workloads import check_workload_data

    try:
        subsets = {(c.train_size, c.batch_size) for c in plan.configs
                   if c.train_size is not None}
        check_workload_data(plan.study.workload, options.data_dir, sorted(plan.batch_sizes),
                            subsets=subsets)
    except ValueError as err:
        raise StudyError(first_line(err)) from None
    check_ray_address(options.address)
    preflight_study(plan, options)
    try:
        # Last: with a new sqlite file this creates MLflow's tables.
        check_tracking_uri(options.tracking_uri)
    except ValueError as err:
        raise StudyError(first_line(err)) from None


def read_resume_state(run_dir: Path, study: Study, options: RunOptions,
                      hardware: dict[str, Any]) -> dict[str, Any]:
    """The saved state of the run `--resume` continues, checked against this call."""
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
        saved_study = state["study"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StudyError(
            f"--resume: {run_dir / STATE_FILE} cannot be read: start the study again "
            "without --resume"
        ) from None
    if saved_study != study.describe():
        raise StudyError(
            f"--resume: the study in {run_dir} was run with other options: "
            "repeat the original command with --resume"
        )
    # Restored trials keep the resources and device they were created with: a resume that
    # would plan others (another machine, other flags) could never run them.
    saved = state.get("hardware", hardware)
    if saved != hardware:
        raise StudyError(
            f"--resume: the study in {run_dir} gave each trial {saved['gpus_per_trial']:g} "
            f"GPU(s) on device {saved['device']}, but here it would be "
            f"{hardware['gpus_per_trial']:g} on {hardware['device']}: resume where it "
            "started, with the same --device and --gpus-per-trial"
        )
    store = store_name(options.tracking_uri)
    if state.get("tracking_uri") not in (None, store):
        raise StudyError(
            f"--resume: the study in {run_dir} is tracked in {state['tracking_uri']}, not "
            f"{store}: pass --tracking-uri {state['tracking_uri']}"
        )
    return state


def write_run_state(run_dir: Path, study: Study, options: RunOptions, hardware: dict[str, Any],
                    parent_run_id: str) -> None:
    """What `--resume` reads back (`read_resume_state`). Storage that refuses it stops the
    study before any trial, the empty run folder removed so `--resume` starts afresh."""
    state = {"study": study.describe(), "parent_run_id": parent_run_id, "hardware": hardware,
             "tracking_uri": store_name(options.tracking_uri)}
    try:
        write_text_atomically(run_dir / STATE_FILE, json.dumps(state, indent=2))
    except OSError as err:
        storage = storage_fault(err, run_dir)
        if storage is None:
            raise
        shutil.rmtree(run_dir, ignore_errors=True)
        raise StudyStopped(storage.stop_line(run_dir, started=False)) from None


def new_run_dir(root: Path) -> Path:
    """A name for a new run folder (claimed only by `claim_run_dir`)."""
    return root / time.strftime("%Y%m%d-%H%M%S")


def claim_run_dir(run_dir: Path) -> Path:
    """Make the run folder, or the next free one (name-2, name-3, ...): `mkdir` without
    `exist_ok` is atomic, so two studies started in the same second each get their own."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise StudyError(f"--storage-path: no free run folder name under {run_dir.parent}")


def run_study(study: Study, *, options: RunOptions | None = None) -> StudyOutcome:
    """Run (or with `options.resume`, continue) a study; everything is checked first.
    `options` (keyword only; default `RunOptions()`) say where it runs and where its
    results and MLflow runs go.

    Bad input raises `StudyError` (one line) before Ray or MLflow start, and leaves nothing
    behind. Ctrl-C raises `StudyInterrupted` (the parent run is KILLED, `--resume`
    continues); a fault that stops a running study (its storage turning read-only) raises
    `StudyStopped`. A tracking server that dies mid-study costs no result: the tables come
    from Ray's records, and the end of the study (or a later `--resume`) logs to MLflow
    what it missed. Returns the tables, the cells of the map and Tune's `ResultGrid`.

    A real (one-epoch) study, in a temporary folder; the table and closing lines it prints
    are caught here:

    >>> import contextlib, io, tempfile
    >>> from tunegap import RunOptions, Study, run_study
    >>> tmp = tempfile.mkdtemp()
    >>> study = Study(name="ghost_quick", workload="mnist1d-cnn", epochs=1, baseline_epochs=1,
    ...               seeds=2, grid={"batch_size": (512,), "ghost_batch_size": (None, 32)})
    >>> options = RunOptions(storage_path=f"{tmp}/results", tracking_uri=f"sqlite:///{tmp}/m.db",
    ...                      data_dir=f"{tmp}/data", device="cpu", quiet=True)
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     outcome = run_study(study, options=options)
    >>> len(outcome.trials), sorted(set(outcome.trials["outcome"]))
    (6, ['completed'])
    >>> outcome.cells["verdict"].iloc[0], outcome.cells["n_used"].tolist()
    ('baseline', [2, 2, 2])
    >>> set(outcome.cells["verdict"]) <= {"baseline", "closed", "open", "at the margin",
    ...                                   "inconclusive"}
    True
    """
    from tunegap.tracking import StudyTracker
    from tunegap.tracking.health import bounded_http_retries

    options = RunOptions() if options is None else options
    root = study_root(options, study)
    check_storage(root)
    options = plan_trial_hardware(study, options)
    hardware = {"gpus_per_trial": options.gpus_per_trial, "device": options.device}
    earlier = latest_run_dir(root) if options.resume else None
    if options.resume and earlier is None:
        # Nothing to continue (a study stopped before it recorded anything, or never run):
        # --resume starts it, so "run the same command with --resume" always goes on.
        print(no_earlier_run_line(study.name, root), file=sys.stderr, flush=True)
        options = replace(options, resume=False)
    if earlier is not None and options.resume:
        run_dir = earlier
        parent_run_id = read_resume_state(run_dir, study, options, hardware)["parent_run_id"]
    else:
        run_dir, parent_run_id = new_run_dir(root), None
    plan = StudyPlan.of(study)
    check_inputs(plan, options)
    if not options.resume:
        # Claimed before the banner names it: two studies started at once get their own.
        run_dir = claim_run_dir(run_dir)
    with bounded_http_retries():
        # Until the study's state is written, any stop (Ctrl-C included) leaves no folder.
        try:
            if not options.quiet:
                print(study_banner(plan, options, run_dir), flush=True)
            dataset = study_dataset(study, options.data_dir)
            init_ray(options)
            tracker = StudyTracker(options.tracking_uri, study.name, parent_run_id=parent_run_id)
            try:
                params, tags = parent_run_fields(study.describe(), question=study.question,
                                                 run_dir=run_dir, total_trials=plan.total_trials)
                parent_run_id = tracker.start_parent(params=params, tags=tags)
            except (ValueError, MlflowException) as err:
                raise StudyError(f"MLflow: {first_line(err)}") from None
        except BaseException:
            if not options.resume:
                shutil.rmtree(run_dir, ignore_errors=True)  # claimed, still empty
            raise
        status: str | None = "FAILED"
        try:
            if not options.resume:
                try:
                    write_run_state(run_dir, study, options, hardware, parent_run_id)
                except StudyStopped:
                    status = None  # no trial ran: no parent run is left behind
                    raise
            outcome = fit_and_finish(plan, options, run_dir, tracker, dataset=dataset)
            status = "FINISHED"
            return outcome
        except KeyboardInterrupt as stop:
            status = "KILLED"
            if isinstance(stop, StudyInterrupted):
                raise
            raise StudyInterrupted(interrupted_message(run_dir, None), run_dir) from None
        except StudyError:
            raise  # said in its own line already (a stop before any trial, a failed baseline)
        except Exception as err:
            storage = storage_fault(err, run_dir)
            if storage is None:
                raise
            raise StudyStopped(storage.stop_line(run_dir)) from None
        finally:
            close_parent(tracker, status)


def study_dataset(study: Study, data_dir: str | None) -> Any:
    """The study's data set as an MLflow dataset entity (name, training-set size where its
    `train_size` hook tells it without loading, a digest); None where it cannot be told."""
    from tunegap.data.catalog import dataset_hooks
    from tunegap.tracking.results import dataset_entity

    try:
        workload = study.workload_def
        hook = dataset_hooks(workload.dataset).train_size
        kwargs = {**workload.dataset_kwargs, "data_dir": data_dir}
        size = hook if isinstance(hook, int) or hook is None else int(hook(**kwargs))
        profile = {"workload": workload.name, **workload.dataset_kwargs,
                   **({"train_size": size} if size is not None else {})}
        source = f"tunegap:{workload.dataset}" + (f" in {data_dir}" if data_dir else "")
        return dataset_entity(workload.dataset, source=source, profile=profile)
    except Exception:  # a data set MLflow cannot be told about must not cost the study
        return None


def fit_and_finish(plan: StudyPlan, options: RunOptions, run_dir: Path, tracker: Any, *,
                   dataset: Any = None) -> StudyOutcome:
    from tunegap.tracking import MlflowTrackingCallback

    study = plan.study
    callback = MlflowTrackingCallback(tracker)
    callbacks = [
        callback,
        EpochJournal(run_dir / JOURNAL_FILE),
        StateCopies(run_dir),
        ProgressPrinter(plan.total_trials, quiet=options.quiet, at_most=plan.adaptive),
    ]
    if options.resume:
        try:
            for line in repair_state(run_dir):
                print(line, file=sys.stderr, flush=True)
        except StateUnrecoverable as err:
            raise StudyError(str(err)) from None
    if options.resume and tune.Tuner.can_restore(str(run_dir)):
        with QuietStorageFaults():  # restoring reads the result files a full disk cut short
            tuner = tune.Tuner.restore(
                str(run_dir),
                trainable=trainable_with_resources(plan, options),
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
    else:
        tuner = build_tuner(plan, options, run_dir, callbacks)
    started = time.perf_counter()
    with InterruptWatch() as watch, QuietStorageFaults():
        result_grid = tuner.fit()
    if watch.interrupted or unfinished_trials(result_grid):
        raise StudyInterrupted(interrupted_message(run_dir, finished_trials(result_grid)),
                               run_dir)
    wall = time.perf_counter() - started
    # A restored Tuner logs through the callback pickled with it, whose failures this
    # process never sees: a resume always checks MLflow against the records.
    missed = None if options.resume else set(callback.unlogged)
    outcome = finish_study(study, run_dir, tracker, wall_seconds=wall, missed=missed,
                           dataset=dataset, quiet=options.quiet)
    outcome.result_grid = result_grid
    return outcome


def interrupted_message(run_dir: Path, finished: int | None) -> str:
    kept = "the finished trials are" if finished is None else f"{finished} finished trial(s) are"
    return (f"the study was interrupted; {kept} kept in {run_dir} and nothing was computed "
            "from the unfinished ones")


def close_parent(tracker: Any, status: str | None) -> None:
    """End the parent run (None: delete it, no trial ran); a tracking server that went away
    must not cost the study."""
    from tunegap.tracking.health import store_reachable

    if status is None:
        with contextlib.suppress(Exception):  # a stray empty parent run is all it costs
            tracker.discard_parent()
        return
    if not store_reachable(tracker.tracking_uri):
        print(parent_unanswered_warning(tracker.tracking_uri, status), file=sys.stderr)
        return
    try:
        tracker.finish_parent(status)
    except Exception as err:
        print(parent_unmarked_warning(status, one_line(err)), file=sys.stderr)
