"""The end of a study: records to Parquet tables, the map, summary.md, and MLflow told.

`finish_study` writes everything into the run folder from Ray's own records and the
driver's journal first, then logs it on the parent run (`publish`) and each trial's cell on
its child run; MLflow is only told, never waited for or read back, so a tracking server that
went away costs no result. What the terminal shows at the end: the map's table, a sentence
on the trials and where the files are (`closing_sentence`), and the command and URL that
open the parent run in MLflow's UI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunegap.atomic import write_text_atomically
from tunegap.names import OUTCOMES
from tunegap.runner.records import collect_records
from tunegap.study import Study, StudyFailed
from tunegap.tracking.text import one_line


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
    logged = reachable and publish(tracker, study, outcome, wall_seconds, figure_errors,
                                   dataset=dataset)
    if not logged or unlogged:
        missing = sorted(unlogged)
        parts = [f"{len(missing)} trial run(s) ({', '.join(missing[:10])}"
                 f"{' ...' if len(missing) > 10 else ''})"] if missing else []
        parts += [] if logged else ["the study's results on the parent run"]
        print(f"warning: MLflow at {tracker.tracking_uri} could not be reached: "
              f"{' and '.join(parts)} are not (fully) logged; the Parquet tables in {run_dir} "
              "are complete. Once MLflow is back, run the same command with --resume to log "
              "them.", file=sys.stderr, flush=True)
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
        print(f"MLflow: logged what {len(report.updated)} trial run(s) missed "
              f"({report.steps_logged} epoch(s))", flush=True)
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
    from tunegap.analysis import report
    from tunegap.analysis.figure_files import save_figures

    table = report.markdown_table(cells)
    figure_errors = 0
    try:
        figures = study.figures(cells, trials_df, epochs_df) if study.figures else {}
        files += save_figures(figures, run_dir)
    except Exception as err:  # a figure must never cost the study its results
        print(f"warning: the figures of {study.name} failed: {err}", file=sys.stderr)
        figure_errors = 1
    train_seconds = float(trials_df["train_seconds"].fillna(0).sum())
    counts = trials_df["outcome"].value_counts().to_dict()
    if study.report is not None:
        table = table + "\n\n" + study.report(cells, trials_df, epochs_df)
    effects = study_effects(study, trials_df)
    if effects is not None and len(effects):
        from tunegap.analysis.effects import effects_markdown

        table += "\n\n## Paired comparisons\n\n" + effects_markdown(effects)
    warnings = report.baseline_warnings(trials_df, epochs_df, margin=float(study.margin),
                                        base_epochs=study.workload_def.regime.epochs)
    warnings += report.best_epoch_warning(str(study.accuracy), study.protocol,
                                          float(study.knobs.get("validation_fraction", 0.0)))
    summary = render_summary(study, table, cells, counts, wall_seconds, train_seconds,
                             figures=[p.name for p in files if p.suffix == ".png"],
                             baseline_sentence=report.baseline_summary(cells),
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


def unmeasurable_baseline(name: str, trials_df: pd.DataFrame, run_dir: Path) -> str:
    """The one line a study ends with when no baseline trial finished usable."""
    base = trials_df[trials_df["is_baseline"].fillna(False).astype(bool)]
    counts = base["outcome"].value_counts().to_dict()
    how = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
    first = next((str(e).strip().splitlines()[-1] for e in base.get("error", [])
                  if isinstance(e, str) and e.strip()), None)
    return (f"{name}: the baseline cannot be measured: its {len(base)} trial(s) ended {how}"
            + (f" (first error: {first})" if first else "")
            + f"; no gap can be judged. The tables are in {run_dir} (trials.parquet, column "
            "error) and each trial's folder there holds its full error")


def study_effects(study: Study, trials_df: pd.DataFrame) -> pd.DataFrame | None:
    """The study's paired comparisons (`tunegap.analysis.effects`), or None where it asks
    none."""
    if study.comparisons is None:
        return None
    from tunegap.analysis.effects import compute_effects

    return compute_effects(trials_df, study.comparisons(trials_df), margin=study.margin,
                           accuracy=str(study.accuracy), design=study.design)


def closing_sentence(name: str, counts: Mapping[str, int], cells: pd.DataFrame,
                     run_dir: Path) -> str:
    """What a finished study says about itself: its trials by outcome, its cells by verdict
    and where its files are, e.g. "ghost_size: 6 trials ran (5 completed, 1 diverged); of 4
    cells, 1 closed, 2 open and 1 inconclusive. Tables, map and summary.md are in ..."."""
    from tunegap.analysis.cells import verdict_counts

    total = sum(counts.values())
    by_outcome = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    verdicts = verdict_counts(cells) if len(cells) else {}
    judged = and_list([f"{n} {v}" for v, n in verdicts.items()
                       if n or v in ("closed", "open", "inconclusive")])
    compared = sum(verdicts.values())
    trials = f"{total} trial{'s' if total != 1 else ''} ran ({by_outcome or 'none finished'})"
    cells_part = (f"of {compared} cell(s) compared with the baseline, {judged}" if compared
                  else "no cell besides the baseline")
    return f"{name}: {trials}; {cells_part}. Tables, map and summary.md are in {run_dir}"


def decided_share(counts: Mapping[str, int]) -> str:
    """"9 of 12 cells (75%)": cells decided (closed or open) or at the margin, of all the
    cells compared with the baseline."""
    from tunegap.analysis.decide import ANSWERED

    total = sum(counts.values())
    done = sum(counts.get(v, 0) for v in ANSWERED)
    return f"{done} of {total} cells ({100 * done / total:.0f}%)" if total else "no cells"


def and_list(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def publish(tracker: Any, study: Study, outcome: StudyOutcome, wall_seconds: float,
            figure_errors: int, *, dataset: Any = None) -> bool:
    """The study's files and summary numbers on the parent run, then each trial's cell on
    its child run, the description, images and data set (`tunegap.tracking.results`);
    False where MLflow failed."""
    from tunegap.analysis.cells import verdict_counts

    trials_df = outcome.trials
    counts = trials_df["outcome"].value_counts().to_dict()
    try:
        tracker.log_parent_artifacts(outcome.files)
        tracker.log_parent_metrics({
            "wall_seconds": wall_seconds,
            "train_seconds": float(trials_df["train_seconds"].fillna(0).sum()),
            **{f"trials_{o}": counts.get(o, 0) for o in OUTCOMES},
            "margin": float(study.margin),
            **{f"cells_{v.replace(' ', '_')}": n
               for v, n in verdict_counts(outcome.cells).items()
               if v in ("closed", "open", "at the margin", "inconclusive")},
            **({"figure_errors": figure_errors} if figure_errors else {}),
        })
    except Exception as err:
        print(f"warning: MLflow: the study's results could not be logged on the parent run "
              f"({one_line(err)})", file=sys.stderr)
        return False
    # The files and numbers are logged: what follows only adds views of them, so its
    # failure is a warning, not "the results are missing".
    publish_cells(tracker, outcome, dataset)
    return True


def publish_cells(tracker: Any, outcome: StudyOutcome, dataset: Any) -> bool:
    """Each child run's gap and verdict, the parent's description, images and data set;
    False (and a warning) where MLflow failed."""
    from tunegap.tracking.results import image_names, log_study_results

    summary = next((p for p in outcome.files if p.name == "summary.md"), None)
    try:
        log_study_results(tracker, cells=outcome.cells, trials=outcome.trials,
                          summary=summary.read_text() if summary else "",
                          images=image_names(outcome.files), dataset=dataset)
    except Exception as err:
        print(f"warning: MLflow: the cells' gaps and verdicts could not be logged on the "
              f"trial runs ({one_line(err)}); the tables in {outcome.run_dir} hold them",
              file=sys.stderr)
        return False
    return True


def render_summary(study: Study, table: str, cells: pd.DataFrame, counts: dict[str, int],
                   wall_seconds: float, train_seconds: float, *, figures: Sequence[str],
                   baseline_sentence: str, warnings: Sequence[str] = ()) -> str:
    from tunegap.analysis.cells import verdict_counts
    from tunegap.analysis.decide import rule_sentence

    margin = float(cells["margin"].iloc[0]) if len(cells) else float(study.margin)
    decidable = cells["p_value"].notna() & ~cells["is_baseline"].astype(bool)
    per_cell = verdict_counts(cells)
    holm = verdict_counts(cells, "verdict_holm")
    rule = rule_sentence(margin=margin, design=study.design, accuracy=str(study.accuracy),
                         validation_fraction=float(study.knobs.get("validation_fraction", 0.0)))
    lines = [f"# tunegap study `{study.name}` on `{study.workload}`", ""]
    if study.question:
        lines += [study.question, ""]
    lines += [
        f"- trials: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        f"- seeds: {study.seeds}; search: {study.search}; protocol: {study.protocol}"
        + (f"; every trial with {', '.join(f'{k}={v}' for k, v in study.knobs.items())}"
           if study.knobs else ""),
        f"- regime: baseline {study.reference_epochs} epochs at B0="
        f"{study.workload_def.regime.base_batch_size}"
        + ("" if study.baseline_epochs else " (the workload's base regime)")
        + (f"; cells' base {study.epochs} epochs (--epochs), times their multiplier"
           if study.epochs is not None else ""),
        f"- verdict per cell: {rule}; "
        f"the Holm families are the {int(decidable.sum())} decidable cells",
        "- cells: " + ", ".join(f"{v} {n}" for v, n in per_cell.items())
        + f" (verdict_holm: closed {holm['closed']}, open {holm['open']}, "
        f"at the margin {holm['at the margin']}, inconclusive {holm['inconclusive']})",
        f"- decided or at the margin: {decided_share(per_cell)}",
        f"- wall time {wall_seconds:.0f} s; sum of trial training time {train_seconds:.0f} s",
        "",
        table,
        "",
        baseline_sentence,
        "",
        *(f"**{line}**\n" for line in warnings),
    ]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
