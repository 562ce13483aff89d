"""The end of a study: records to Parquet tables, the map, summary.md, and MLflow told.

`finish_study` writes everything into the run folder from Ray's own records and the
driver's journal first, then logs it on the parent run and each trial's cell on its child
run (`tunegap.tracking.results.publish_study`); MLflow is only told, never waited for or read
back, so a tracking server that went away costs no result. The words it prints and writes
(summary.md, the closing sentence) are `tunegap.runner.report_text`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunegap.atomic import write_text_atomically
from tunegap.errors import StudyFailed
from tunegap.runner.records import collect_records
from tunegap.runner.report_text import (
    backfill_line,
    baseline_summary,
    baseline_warnings,
    best_epoch_warning,
    closing_sentence,
    figures_failed_warning,
    mlflow_unreachable_warning,
    paired_section,
    publish_warnings,
    render_summary,
    unmeasurable_baseline,
)
from tunegap.study import Study
from tunegap.tracking.results import publish_study


@dataclass(kw_only=True)
class StudyOutcome:
    """What a finished study leaves behind.

    `trials` and `epochs` are the Parquet tables (`tunegap.analysis.schema` documents their
    columns), `cells` one row per cell of the map with its gap to the baseline, `table` the
    same as markdown, `files` everything written to `run_dir` (and logged on the MLflow
    parent run `parent_run_id`), and `result_grid` what `tune.Tuner.fit()` returned: Tune's
    own `ResultGrid` (`.get_dataframe()`, `[i].metrics`, `[i].checkpoint`, ...).
    `tunegap.run_study`'s example runs a study and reads one.

    >>> import pandas as pd
    >>> from pathlib import Path
    >>> empty = pd.DataFrame()
    >>> done = StudyOutcome(trials=empty, epochs=empty, cells=empty, table="", files=[],
    ...                     run_dir=Path("results/ghost_size/20261205-101500"),
    ...                     parent_run_id="9f1c")
    >>> done.run_dir.name, done.parent_run_id, done.result_grid
    ('20261205-101500', '9f1c', None)
    """

    run_dir: Path
    parent_run_id: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    cells: pd.DataFrame
    table: str
    files: list[Path]
    result_grid: Any = None


def finish_study(study: Study, run_dir: Path, tracker: Any, *, wall_seconds: float,
                 missed: Iterable[str] | None = (), dataset: Any = None,
                 quiet: bool = False) -> StudyOutcome:
    """Tables, map, summary: written into the run folder from Ray's own records, then
    logged on the parent run.

    `missed` names the trials whose child runs the callback could not (fully) log, None
    where it is not known (a resume): those get what they miss first
    (`tunegap.tracking.backfill`). MLflow is only told: a server that does not answer is
    reported, never waited for. `dataset` (an `mlflow.entities.Dataset`) is logged as
    every run's input. The last lines printed say how to open the parent run in MLflow's UI.
    """
    from tunegap.analysis import tables
    from tunegap.analysis.cells import UnmeasurableBaseline, compute_cells
    from tunegap.tracking.health import store_reachable

    records = collect_records(run_dir, {}, target_test_acc=study.target_test_acc,
                              shared=study.trial_settings(),
                              baseline_epochs=study.baseline_epochs_override)
    reachable = store_reachable(tracker.tracking_uri)
    unlogged = {str(r["trial_id"]) for r in records} if missed is None else set(missed)
    if reachable and unlogged:
        unlogged = set(sync_trials(tracker, [r for r in records if r["trial_id"] in unlogged]))
    run_ids = safe_run_ids(tracker) if reachable else {}
    for record in records:
        record["mlflow_run_id"] = run_ids.get(record["trial_id"])
    trials_df, epochs_df = tables.build_tables(records, study=study.name)
    files = list(tables.write_tables(trials_df, epochs_df, run_dir).values())
    try:
        cells = compute_cells(trials_df, margin=study.margin, accuracy=study.accuracy,
                              design=study.design)
    except UnmeasurableBaseline:
        raise StudyFailed(unmeasurable_baseline(study.name, trials_df, run_dir)) from None
    outcome, figure_errors = write_reports(study, run_dir, trials_df, epochs_df, cells, files,
                                           wall_seconds)
    outcome.parent_run_id = tracker.parent_run_id
    logged = False
    if reachable:
        parent_error, cells_error = publish_study(
            tracker, files=outcome.files, cells=outcome.cells, trials=outcome.trials,
            margin=study.margin, wall_seconds=wall_seconds, figure_errors=figure_errors,
            dataset=dataset)
        logged = parent_error is None
        for line in publish_warnings(parent_error, cells_error, run_dir):
            print(line, file=sys.stderr, flush=True)
    if not logged or unlogged:
        print(mlflow_unreachable_warning(tracker.tracking_uri, sorted(unlogged), logged,
                                         run_dir), file=sys.stderr, flush=True)
    if reachable:
        for line in open_lines(tracker):
            print(line, flush=True)
    return outcome


def open_lines(tracker: Any) -> list[str]:
    """The command and URL that open the parent run in MLflow's UI; none where MLflow
    cannot tell the experiment."""
    from tunegap.tracking.results import ui_lines

    try:
        return ui_lines(tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id)
    except Exception:
        return []


def sync_trials(tracker: Any, records: list[dict[str, Any]]) -> dict[str, str]:
    """Backfill MLflow from the records; the trials it could not log, with why."""
    from tunegap.tracking.backfill import backfill_study

    report = backfill_study(tracker, records)
    if report.updated:
        print(backfill_line(len(report.updated), report.steps_logged), flush=True)
    return report.failed


def safe_run_ids(tracker: Any) -> dict[str, str]:
    try:
        return tracker.mlflow_run_ids()
    except Exception:
        return {}


def write_reports(study: Study, run_dir: Path, trials_df: pd.DataFrame, epochs_df: pd.DataFrame,
                  cells: pd.DataFrame, files: list[Path],
                  wall_seconds: float) -> tuple[StudyOutcome, int]:
    """Figures, summary.md and the study's own tables, beside the Parquet tables; and
    whether the figures failed (1) or not (0)."""
    from tunegap.analysis.figure_files import save_figures
    from tunegap.analysis.formatting import markdown_table

    table = markdown_table(cells)
    figure_errors = 0
    try:
        figures = study.figures(cells, trials_df, epochs_df) if study.figures else {}
        files += save_figures(figures, run_dir)
    except Exception as err:  # a figure must never cost the study its results
        print(figures_failed_warning(study.name, err), file=sys.stderr)
        figure_errors = 1
    train_seconds = float(trials_df["train_seconds"].fillna(0).sum())
    counts = trials_df["outcome"].value_counts().to_dict()
    if study.report is not None:
        table = table + "\n\n" + study.report(cells, trials_df, epochs_df)
    effects = study_effects(study, trials_df)
    if effects is not None and len(effects):
        from tunegap.analysis.effects import effects_markdown

        table += "\n\n" + paired_section(effects_markdown(effects))
    warnings = baseline_warnings(trials_df, epochs_df, margin=float(study.margin),
                                 base_epochs=study.workload_def.regime.epochs,
                                 max_updates=study.knobs.get("max_updates"))
    warnings += best_epoch_warning(str(study.accuracy), study.protocol,
                                   float(study.knobs.get("validation_fraction", 0.0)))
    summary = render_summary(study, table, cells, counts, wall_seconds, train_seconds,
                             figures=[p.name for p in files if p.suffix == ".png"],
                             baseline_sentence=baseline_summary(cells),
                             warnings=warnings)
    files.append(write_text_atomically(run_dir / "summary.md", summary))
    own_tables = study.tables(cells, trials_df, epochs_df) if study.tables else {}
    if effects is not None:
        own_tables = {"effects.csv": effects, **own_tables}
    for name, frame in {"cells.csv": cells, **own_tables}.items():
        files.append(write_text_atomically(run_dir / name, frame.to_csv(index=False)))
    print(table, flush=True)
    for line in warnings:
        print(line, file=sys.stderr, flush=True)
    print("\n" + closing_sentence(study.name, counts, cells, run_dir), flush=True)
    outcome = StudyOutcome(run_dir=run_dir, parent_run_id="", trials=trials_df,
                           epochs=epochs_df, cells=cells, table=table, files=files)
    return outcome, figure_errors


def study_effects(study: Study, trials_df: pd.DataFrame) -> pd.DataFrame | None:
    """The study's paired comparisons (`tunegap.analysis.effects`), or None where it asks
    none."""
    if study.comparisons is None:
        return None
    from tunegap.analysis.effects import compute_effects

    return compute_effects(trials_df, study.comparisons(trials_df), margin=study.margin,
                           accuracy=str(study.accuracy), design=study.design)
