"""Trials as plain records: Tune's experiment state and the driver's own journal of epochs.

A trial's own `result.json` in storage is synced with its checkpoints; when a node dies and
the trial restarts elsewhere from an older checkpoint, Tune replaces the driver's copy with
the stored one and the epochs in between vanish from it. The driver saw every one of them,
so `EpochJournal` appends each epoch it receives to a JSON-lines file, and `collect_records`
reads both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import tune

from tunegap.config import TrialConfig
from tunegap.names import DIVERGED, ERROR, METRIC_NAMES, RESOLVED_PREFIX, ended_outcome
from tunegap.runner.storage_faults import StorageUnwritable, trial_storage_fault
from tunegap.study import is_baseline

JOURNAL_FILE = "epochs_journal.jsonl"
JOURNAL_KEYS = frozenset((*METRIC_NAMES, DIVERGED))


class EpochJournal(tune.Callback):
    """Every epoch result the driver receives, appended to a JSON-lines file in the run folder.

    A write that fails stops the study (`StorageUnwritable`): Tune's own state would fail to
    save next, and a study that goes on without its records loses what it trains.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        row = {k: v for k, v in result.items() if k in JOURNAL_KEYS or k.startswith(RESOLVED_PREFIX)}
        row["trial_id"] = trial.trial_id
        try:
            with open(self.path, "a+b") as journal:
                # A line cut short by a kill or a full disk ends without a newline: the next
                # row starts on a line of its own, so only the cut one is lost.
                journal.seek(0, 2)
                if journal.tell():
                    journal.seek(-1, 2)
                    if journal.read(1) != b"\n":
                        journal.write(b"\n")
                journal.write((json.dumps(row) + "\n").encode())
        except OSError as err:
            raise StorageUnwritable(self.path, err) from err

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A checkpoint the storage refused ends the trial in Tune; the study stops instead,
        # so the trial resumes from its last checkpoint rather than being lost as `error`.
        fault = trial_storage_fault(trial)
        if fault is not None:
            raise fault


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping any line cut short (a kill or a full
    disk mid-write): the journal and a trial's result.json each fill what the other lost."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_journal(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The journal's rows per trial id, in the order the driver received them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        for row in json_lines(path):
            if "trial_id" in row:
                rows.setdefault(row.pop("trial_id"), []).append(row)
    return rows


def collect_records(
    run_dir: Path, run_ids: dict[str, str], *, target_test_acc: float | None = None,
    shared: dict[str, Any] | None = None, baseline_epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Every trial of a Tune experiment as a plain record (see `tunegap.analysis.schema`);
    `shared` is the study's `trial_settings()` and `baseline_epochs` its
    `baseline_epochs_override`, which its baseline trains with."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run_dir))
    journal = read_journal(run_dir / JOURNAL_FILE)
    records = []
    for trial in analysis.trials:
        history = []
        # trial.path is the storage copy; local_path is Ray's per-session staging folder.
        result_file = Path(trial.path) / "result.json"
        if result_file.exists():
            history = json_lines(result_file)
        # The driver's journal comes last: where both have an epoch, its report wins, and it
        # fills epochs that a restart on another node dropped from result.json.
        history += journal.get(trial.trial_id, [])
        resolved = next(
            ({k: v for k, v in row.items() if k.startswith(RESOLVED_PREFIX)}
             for row in reversed(history) if "resolved_lr" in row),
            {},
        )
        config = TrialConfig.from_dict(dict(trial.config)).to_dict()
        outcome = trial_outcome(trial.status, history, resolved)
        error = None
        if outcome == ERROR:
            error = _error_text(trial)
        records.append({
            "trial_id": trial.trial_id,
            "mlflow_run_id": run_ids.get(trial.trial_id),
            "is_baseline": is_baseline(config, shared, epochs=baseline_epochs),
            "config": config,
            "resolved": resolved,
            "outcome": outcome,
            "error": error,
            "history": history,
            "target_test_acc": target_test_acc,
        })
    return records


def trial_outcome(status: str, history: list[dict[str, Any]], resolved: dict[str, Any]) -> str:
    """How a trial ended, from Tune's status and its epochs: error, diverged, stopped (a
    scheduler ended it before the last epoch of its regime) or completed."""
    if status == "ERROR":
        return ERROR
    if status != "TERMINATED" and not (history and history[-1].get(DIVERGED)):
        return ERROR
    planned = resolved.get(f"{RESOLVED_PREFIX}epochs")
    done = max((row.get("epoch") or 0 for row in history), default=0)
    return ended_outcome(diverged=bool(history and history[-1].get(DIVERGED)),
                         epochs_done=done, planned_epochs=planned)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:2000] if lines else "unknown error"
    return f"trial ended with status {trial.status}"
