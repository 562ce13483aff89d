"""`run_study`: from a validated `Study` to the gap map, and `--resume`.

Data flow: `Study` (validated before anything starts) -> MLflow parent run ->
`tune.Tuner(GapTrainable, ...)` with an explicit list of trial configs (a grid, the baseline
added automatically) or Optuna -> per-trial MLflow child runs (tracking callback) -> at the
end: Parquet tables, gap map figures and summary.md, logged as artifacts of the parent run.

Each execution lives in `<storage>/<study>/<run_name>/` (Tune's experiment folder). `--resume`
continues the newest one with `Tuner.restore`: finished trials are kept, interrupted ones
continue from their last checkpoint, and MLflow keeps one child run per trial.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from tunegap.atomic import write_text_atomically
from tunegap.names import OUTCOMES
from tunegap.runner.progress import ProgressPrinter
from tunegap.runner.records import JOURNAL_FILE, EpochJournal, collect_records
from tunegap.runner.resources import init_ray, plan_trial_hardware
from tunegap.runner.tuner import build_tuner, trainable_with_resources
from tunegap.study import AUTO, RunOptions, Study, StudyError, total_trials

STATE_FILE = "tunegap_study.json"


@dataclass
class StudyOutcome:
    """What a finished study leaves behind.

    `trials` and `epochs` are the Parquet tables (`tunegap.analysis.schema` documents their
    columns), `cells` one row per cell of the map with its gap to the baseline, `table` the
    same as markdown, `files` everything written to `run_dir` (and logged on the MLflow
    parent run `parent_run_id`), and `result_grid` what `tune.Tuner.fit()` returned: Tune's
    own `ResultGrid` (`.get_dataframe()`, `[i].metrics`, `[i].checkpoint`, ...).

    >>> outcome = run_study(study, options)  # doctest: +SKIP
    >>> outcome.cells[["batch_size", "gap", "verdict"]]  # doctest: +SKIP
    >>> outcome.result_grid.get_best_result("test_acc", "max").config  # doctest: +SKIP
    """

    run_dir: Path
    parent_run_id: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    cells: pd.DataFrame
    table: str
    files: list[Path]
    result_grid: Any = None


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


def run_study(study: Study, options: RunOptions) -> StudyOutcome:
    """Run (or with `options.resume`, continue) a study; everything is checked first.

    Bad input raises `StudyError` (one line) before Ray or MLflow start. Returns the
    tables, the cells of the map and Tune's `ResultGrid` (`StudyOutcome`).

    >>> from tunegap import RunOptions, Study, run_study  # doctest: +SKIP
    >>> study = Study(name="ghost_quick", workload="mnist1d-cnn", epochs=2,  # doctest: +SKIP
    ...               grid={"batch_size": (512,), "ghost_batch_size": (None, 32)})
    >>> outcome = run_study(study, RunOptions(storage_path="/tmp/results"))  # doctest: +SKIP
    >>> outcome.cells[["batch_size", "ghost_batch_size", "gap", "verdict"]]  # doctest: +SKIP
    """
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
                 "hardware": hardware}
        write_text_atomically(run_dir / STATE_FILE, json.dumps(state, indent=2))

    init_ray(options)
    callbacks = [
        MlflowTrackingCallback(tracker),
        EpochJournal(run_dir / JOURNAL_FILE),
        ProgressPrinter(total_trials(study), quiet=options.quiet,
                        at_most=study.seeds == AUTO or study.search == "frontier"),
    ]
    status = "FAILED"
    try:
        if options.resume and tune.Tuner.can_restore(str(run_dir)):
            tuner = tune.Tuner.restore(
                str(run_dir),
                trainable=trainable_with_resources(study, options),
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            tuner = build_tuner(study, options, run_dir, callbacks)
        started = time.perf_counter()
        result_grid = tuner.fit()
        wall = time.perf_counter() - started
        outcome = finish_study(study, run_dir, tracker, wall_seconds=wall)
        outcome.result_grid = result_grid
        status = "FINISHED"
        return outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish_parent(status)


def finish_study(study: Study, run_dir: Path, tracker: Any, *, wall_seconds: float) -> StudyOutcome:
    """Tables, map, summary: written into the run folder and logged on the parent run."""
    from tunegap.analysis import report, tables
    from tunegap.analysis.cells import compute_cells, verdict_counts
    from tunegap.analysis.figure_files import save_figures

    records = collect_records(run_dir, tracker.mlflow_run_ids(),
                              target_test_acc=study.target_test_acc)
    trials_df, epochs_df = tables.build_tables(records, study=study.name)
    files = list(tables.write_tables(trials_df, epochs_df, run_dir).values())
    cells = compute_cells(trials_df, margin=study.margin, accuracy=study.accuracy)
    table = report.markdown_table(cells)
    try:
        figures = study.figures(cells, trials_df, epochs_df) if study.figures else {}
        files += save_figures(figures, run_dir)
    except Exception as err:  # a figure must never cost the study its results
        print(f"warning: the figures of {study.name} failed: {err}", file=sys.stderr)
        tracker.log_parent_metrics({"figure_errors": 1})
    train_seconds = float(trials_df["train_seconds"].fillna(0).sum())
    counts = trials_df["outcome"].value_counts().to_dict()
    if study.report is not None:
        table = table + "\n\n" + study.report(cells, trials_df, epochs_df)
    summary = render_summary(study, table, cells, counts, wall_seconds, train_seconds,
                             figures=[p.name for p in files if p.suffix == ".png"],
                             baseline_sentence=report.baseline_summary(cells))
    files.append(write_text_atomically(run_dir / "summary.md", summary))
    own_tables = study.tables(cells, trials_df, epochs_df) if study.tables else {}
    for name, frame in {"cells.csv": cells, **own_tables}.items():
        files.append(write_text_atomically(run_dir / name, frame.to_csv(index=False)))
    tracker.log_parent_artifacts(files)
    tracker.log_parent_metrics({
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        **{f"trials_{outcome}": counts.get(outcome, 0) for outcome in OUTCOMES},
        "margin": float(study.margin),
        **{f"cells_{v}": n for v, n in verdict_counts(cells).items()
           if v in ("closed", "open", "inconclusive")},
    })
    print(table, flush=True)
    print(f"\n{study.name}: {len(trials_df)} trials, {dict(counts)}; "
          f"tables and map in {run_dir}", flush=True)
    return StudyOutcome(run_dir=run_dir, parent_run_id=tracker.parent_run_id, trials=trials_df,
                        epochs=epochs_df, cells=cells, table=table, files=files)


def render_summary(study: Study, table: str, cells: pd.DataFrame, counts: dict[str, int],
                   wall_seconds: float, train_seconds: float, *, figures: Sequence[str],
                   baseline_sentence: str) -> str:
    from tunegap.analysis.cells import verdict_counts

    margin = float(cells["margin"].iloc[0]) if len(cells) else float(study.margin)
    which = "best-epoch" if study.accuracy == "best" else "final-epoch"
    decidable = cells["p_value"].notna() & ~cells["is_baseline"].astype(bool)
    per_cell = verdict_counts(cells)
    holm = verdict_counts(cells, "verdict_holm")
    lines = [f"# tunegap study `{study.name}` on `{study.workload}`", ""]
    if study.question:
        lines += [study.question, ""]
    lines += [
        f"- trials: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        f"- seeds: {study.seeds}; search: {study.search}",
        f"- verdict per cell: Welch 90% interval of gap = baseline - cell against the margin "
        f"{margin:g} points declared before the run: closed if its upper end <= {margin:g}, "
        f"open if its lower end > {margin:g}, else inconclusive; {which} test accuracy; "
        f"Holm over {int(decidable.sum())} cells in verdict_holm",
        "- cells: " + ", ".join(f"{v} {n}" for v, n in per_cell.items())
        + f" (verdict_holm: closed {holm['closed']}, inconclusive {holm['inconclusive']})",
        f"- wall time {wall_seconds:.0f} s; sum of trial training time {train_seconds:.0f} s",
        "",
        table,
        "",
        baseline_sentence,
        "",
    ]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
