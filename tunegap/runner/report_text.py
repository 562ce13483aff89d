"""Every text a study prints or writes about itself, in one place: the line before Ray
starts (`study_banner`), the line per finished trial (`progress_line`), `summary.md`
(`render_summary`, with `baseline_summary` and the warnings under its table), the closing
line (`closing_sentence`), the one line a study whose baseline cannot be measured ends with
(`unmeasurable_baseline`) and its warnings. The numbers come from the tables; the words are
only here (how one value reads, in tables and figures alike: `tunegap.analysis.formatting`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunegap.analysis.decide import ANSWERED, DECIDED, INCONCLUSIVE, rule_sentence
from tunegap.plan import StudyPlan
from tunegap.runner.options import RunOptions
from tunegap.study import Study
from tunegap.tracking.uri import store_name


def study_banner(plan: StudyPlan, options: RunOptions, run_dir: Path) -> str:
    """The line printed before Ray starts: how many trials run where, and where their
    results and MLflow runs go (credentials redacted)."""
    study = plan.study
    at_most = "at most " if plan.adaptive else ""
    cpus = study.workload_def.cpus_per_trial
    if options.address in (None, "local"):
        where = f"local Ray on this machine ({os.cpu_count() or 1} CPUs)"
    else:
        where = f"the Ray cluster at {options.address}"
    workers = (f"{options.max_concurrent} at a time" if options.max_concurrent
               else "as many at a time as the CPUs allow")
    return (f"{study.name}: {at_most}{plan.total_trials} trials of {study.workload}, "
            f"{workers} ({cpus:g} CPU(s) and {options.gpus_per_trial or 0:g} GPU(s) each) on "
            f"{where}; results in {run_dir}, MLflow runs in {store_name(options.tracking_uri)} "
            f"(experiment tunegap/{study.name}). Starting Ray...")


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
                       if n or v in (*DECIDED, INCONCLUSIVE)])
    compared = sum(verdicts.values())
    trials = f"{total} trial{'s' if total != 1 else ''} ran ({by_outcome or 'none finished'})"
    cells_part = (f"of {compared} cell(s) compared with the baseline, {judged}" if compared
                  else "no cell besides the baseline")
    return f"{name}: {trials}; {cells_part}. Tables, map and summary.md are in {run_dir}"


def decided_share(counts: Mapping[str, int]) -> str:
    """"9 of 12 cells (75%)": cells decided (closed or open) or at the margin, of all the
    cells compared with the baseline."""

    total = sum(counts.values())
    done = sum(counts.get(v, 0) for v in ANSWERED)
    return f"{done} of {total} cells ({100 * done / total:.0f}%)" if total else "no cells"


def and_list(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def regime_line(study: Study) -> str:
    """The summary's line on how long the baseline and the cells trained."""
    b0 = study.workload_def.regime.base_batch_size
    budget = study.knobs.get("max_updates")
    if budget is not None:
        # A budget of updates replaces epochs for every trial, the baseline's included.
        return (f"- regime: every trial, the baseline at B0={b0} included, stops at {budget} "
                f"weight updates (--max-updates) in place of the workload's "
                f"{study.workload_def.regime.epochs} epochs")
    return (f"- regime: baseline {study.reference_epochs} epochs at B0={b0}"
            + ("" if study.baseline_epochs else " (the workload's base regime)")
            + (f"; cells' base {study.epochs} epochs (--epochs), times their multiplier"
               if study.epochs is not None else ""))


def render_summary(study: Study, table: str, cells: pd.DataFrame, counts: dict[str, int],
                   wall_seconds: float, train_seconds: float, *, figures: Sequence[str],
                   baseline_sentence: str, warnings: Sequence[str] = ()) -> str:
    from tunegap.analysis.cells import verdict_counts

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
        regime_line(study),
        f"- verdict per cell: {rule}; "
        f"the Holm families are the {int(decidable.sum())} decidable cells",
        "- cells: " + ", ".join(f"{v} {n}" for v, n in per_cell.items())
        + " (verdict_holm: " + ", ".join(f"{v} {holm[v]}" for v in (*ANSWERED, INCONCLUSIVE))
        + ")",
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


# ---------------------------------------------------------------- MLflow and storage notes


def no_earlier_run_line(study: str, root: Path) -> str:
    """`--resume` with nothing to continue: it starts the study, and says so."""
    return f"--resume: no earlier run of study {study} under {root}: starting it"


def mlflow_unreachable_warning(tracking_uri: str, missing: Sequence[str], parent_logged: bool,
                               run_dir: Path) -> str:
    """What MLflow lacks when it could not be reached at the end, and how to fill it in."""
    parts = [f"{len(missing)} trial run(s) ({', '.join(missing[:10])}"
             f"{' ...' if len(missing) > 10 else ''})"] if missing else []
    parts += [] if parent_logged else ["the study's results on the parent run"]
    return (f"warning: MLflow at {tracking_uri} could not be reached: {' and '.join(parts)} "
            f"are not (fully) logged; the Parquet tables in {run_dir} are complete. Once "
            "MLflow is back, run the same command with --resume to log them.")


def backfill_line(runs: int, epochs: int) -> str:
    return f"MLflow: logged what {runs} trial run(s) missed ({epochs} epoch(s))"


def publish_warnings(parent_error: str | None, cells_error: str | None,
                     run_dir: Path) -> list[str]:
    """The warnings for what the parent run or the trial runs could not be given."""
    lines = []
    if parent_error is not None:
        lines.append("warning: MLflow: the study's results could not be logged on the parent "
                     f"run ({parent_error})")
    if cells_error is not None:
        lines.append("warning: MLflow: the cells' gaps and verdicts could not be logged on the "
                     f"trial runs ({cells_error}); the tables in {run_dir} hold them")
    return lines


def figures_failed_warning(study: str, error: object) -> str:
    return f"warning: the figures of {study} failed: {error}"


def paired_section(markdown: str) -> str:
    """summary.md's section of paired comparisons (`tunegap.analysis.effects`)."""
    return "## Paired comparisons\n\n" + markdown


def parent_unanswered_warning(tracking_uri: str, status: str) -> str:
    return (f"warning: MLflow at {tracking_uri} does not answer: the parent run stays RUNNING "
            f"until --resume marks it {status}")


def parent_unmarked_warning(status: str, error: str) -> str:
    return (f"warning: MLflow: the parent run could not be marked {status} ({error}); "
            "--resume marks it")


def baseline_summary(cells: pd.DataFrame) -> str:
    """One sentence on the baseline, the accuracy judged and the margin, for summaries under
    the table. It states no verdict: those are the table's."""
    row = cells.iloc[0]
    std = row["baseline_test_acc_std"]
    spread = f" ± {std:.2f}" if math.isfinite(std) else ""
    which = "best-epoch" if row.get("accuracy", "final") == "best" else "final-epoch"
    return (
        f"Baseline {which} test accuracy {row['baseline_test_acc']:.2f}{spread} % over "
        f"{row['baseline_n_seeds']} seed(s); each gap is judged against a margin of "
        f"{row['margin']:.2f} points declared before the run."
    )


def best_epoch_warning(accuracy: str, protocol: str, validation_fraction: float = 0.0
                       ) -> list[str]:
    """The caveat of judging the best epoch where it is chosen on the test set itself (no
    validation split held out of the training set)."""
    if accuracy != "best" or validation_fraction:
        return []
    who = ("as the authors' code does (best_prec1)" if protocol == "authors"
           else "on the test set itself")
    return [f"warning: each trial is judged by its best epoch's test accuracy, chosen {who}: "
            "an optimistic estimate that grows with the number of epochs (more chances), "
            "so it favours the longer runs; --accuracy final is the unbiased one"]


def baseline_warnings(trials: pd.DataFrame, epochs: pd.DataFrame, *, margin: float,
                      base_epochs: int | None = None,
                      max_updates: int | None = None) -> list[str]:
    """One-line warnings about the reference itself: trained fewer epochs than the
    workload's base regime (`base_epochs`; because of --baseline-epochs, or of a study-wide
    budget of `max_updates` weight updates that stops every trial alike), or its test
    accuracy still rising by more than the margin over its last quarter of epochs (mean over
    its seeds), i.e. "closing" would mean matching an undertrained small batch.

    >>> t = pd.DataFrame({"trial_id": ["a"], "is_baseline": [True], "resolved_epochs": [4.0]})
    >>> e = pd.DataFrame({"trial_id": ["a"] * 4, "epoch": [1, 2, 3, 4],
    ...                   "test_acc": [80.0, 90.0, 92.0, 93.0]})
    >>> for line in baseline_warnings(t, e, margin=0.5, base_epochs=20): print(line)
    warning: the baseline trained 4 epochs, not the workload's 20 (--baseline-epochs): gaps are measured against a shortened small batch
    warning: the baseline's test accuracy still rose by 1.00 points over its last quarter of epochs (3 to 4), more than the margin 0.5: it may be undertrained, and "closed" may mean matching an undertrained reference
    >>> baseline_warnings(t, e.iloc[:0], margin=0.5, base_epochs=20, max_updates=1000)[0][:85]
    "warning: the baseline trained 4 epochs, not the workload's 20 (--max-updates 1000, as"
    """
    base_ids = trials.loc[trials["is_baseline"].fillna(False).astype(bool), "trial_id"]
    lines = []
    if base_epochs is not None and "resolved_epochs" in trials and len(base_ids):
        trained = pd.to_numeric(trials.loc[trials["trial_id"].isin(base_ids),
                                           "resolved_epochs"], errors="coerce").max()
        if math.isfinite(trained) and trained < base_epochs:
            cause = ("--baseline-epochs" if max_updates is None
                     else f"--max-updates {max_updates}, as every trial")
            lines.append(f"warning: the baseline trained {trained:g} epochs, not the "
                         f"workload's {base_epochs} ({cause}): "
                         "gaps are measured against a shortened small batch")
    if epochs.empty or not len(base_ids):
        return lines
    rises, spans = [], set()
    for _, curve in epochs[epochs["trial_id"].isin(base_ids)].groupby("trial_id"):
        curve = curve.sort_values("epoch")
        acc = pd.to_numeric(curve["test_acc"], errors="coerce").to_numpy(dtype=float)
        last = float(curve["epoch"].iloc[-1])
        if len(curve) < 2 or not math.isfinite(acc[-1]):
            continue
        start_epoch = 0.75 * last
        earlier = curve[curve["epoch"] <= start_epoch]
        ref = earlier.iloc[-1] if len(earlier) else curve.iloc[0]
        rises.append(acc[-1] - float(ref["test_acc"]))
        spans.add((float(ref["epoch"]), last))
    if rises and float(np.mean(rises)) > margin:
        span = " or ".join(f"{a:g} to {b:g}" for a, b in sorted(spans))
        lines.append(f"warning: the baseline's test accuracy still rose by "
                     f"{float(np.mean(rises)):.2f} points over its last quarter of epochs "
                     f"({span}), more than the margin {margin:g}: it may be undertrained, and "
                     f"\"closed\" may mean matching an undertrained reference")
    return lines


def format_duration(seconds: float) -> str:
    """A duration as the terminal shows it: "45s", "3m05s", "2h07m"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(elapsed: float, finished_here: int, left: int) -> float | None:
    """Seconds until `left` more trials finish, at the rate the `finished_here` trials of
    this process finished in `elapsed` seconds; None before any finished."""
    if finished_here <= 0 or elapsed <= 0:
        return None
    return elapsed / finished_here * max(left, 0)


def progress_counts(done: int, running: int, total: int, *, at_most: bool,
                    eta: float | None) -> str:
    """The bracket that opens a progress line: done / total, running, left and the ETA."""
    left = max(total - done, 0)
    bound = "<=" if at_most else ""
    when = "ETA ?" if eta is None else f"ETA {format_duration(eta)}"
    if left == 0:
        when = "all done"
    return (f"[{done}/{bound}{total} done, {running} running, {bound}{left} left, {when}]")


def progress_line(counts: str, config: Mapping[str, Any], result: Mapping[str, Any],
                  outcome: str, elapsed: float) -> str:
    """The line printed as a trial finishes: the `progress_counts` bracket, the trial's
    knobs, its outcome and last test accuracy, and the study's time so far."""
    return (
        f"{counts} B={config['batch_size']} ghost={config['ghost_batch_size'] or 'BN'} "
        f"a={config['lr_exponent']:g} rho={config['regime_multiplier']} "
        f"seed={config['seed']}: {outcome} "
        f"test_acc {result.get('test_acc', float('nan')):.2f} epochs {result.get('epoch', 0)} "
        f"({format_duration(elapsed)})"
    )
