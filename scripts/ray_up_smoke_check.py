"""What scripts/ray_up_smoke.sh checks on the cluster's head after its study (run there with
`ray exec`, so in the environment every command and job on the head gets):

    python ~/src/tunegap/scripts/ray_up_smoke_check.py --study ghost_size --trials N --epochs 1

- MLFLOW_TRACKING_URI is the head's MLflow server on 127.0.0.1, and TUNEGAP_STORAGE is set:
  the study was given neither flag, so this is where it must have written;
- that server holds the experiment tunegap/<study> with exactly one parent run, FINISHED,
  with trials.parquet and epochs.parquet among its artifacts, and N child runs under it,
  each `completed`;
- $TUNEGAP_STORAGE/<study>/ holds exactly one run folder whose trials.parquet has the same N
  trials as the child runs (trial ids and MLflow run ids) and whose epochs.parquet has
  `--epochs` rows per trial.

Prints one line per check; exit status 0 when all hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow

from tunegap.analysis.tables import EPOCHS_FILE, TRIALS_FILE, read_tables
from tunegap.runner.options import STORAGE_ENV, TRACKING_URI_ENV
from tunegap.tracking.runs import TAG_TRIAL_ID


class CheckFailed(Exception):
    """One check of the smoke run did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    print(f"ray_up_smoke_check: ok: {message}", flush=True)


def check_tracking(uri: str, study: str, trials: int) -> dict[str, str]:
    """The head's MLflow server holds one parent run with every trial as a child; returns
    {trial id: child run id}."""
    check(uri.startswith("http://127.0.0.1:"),
          f"{TRACKING_URI_ENV}={uri!r} is the head's loopback server")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"tunegap/{study}")
    check(experiment is not None, f"experiment tunegap/{study} is on {uri}")
    assert experiment is not None
    ids = [experiment.experiment_id]
    parents = client.search_runs(ids, "tags.`tunegap.role` = 'parent'")
    check(len(parents) == 1, f"one parent run (found {len(parents)})")
    parent = parents[0]
    check(parent.info.status == "FINISHED", f"parent run {parent.info.run_id} is FINISHED")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    check({TRIALS_FILE, EPOCHS_FILE} <= artifacts,
          f"the parent run's artifacts, served by the head, hold {TRIALS_FILE} and {EPOCHS_FILE}")
    children = client.search_runs(ids, "tags.`tunegap.role` = 'trial'", max_results=10_000)
    check(len(children) == trials, f"{trials} child runs (found {len(children)})")
    check(all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children),
          "every child run is under the parent run")
    outcomes = sorted({r.data.tags.get("outcome", "none") for r in children})
    check(outcomes == ["completed"], f"every trial completed (outcomes: {', '.join(outcomes)})")
    return {r.data.tags[TAG_TRIAL_ID]: r.info.run_id for r in children}


def check_storage(storage: str, study: str, runs: dict[str, str], epochs: int) -> None:
    """The Parquet tables are in the head's storage and match the child runs."""
    check(bool(storage), f"{STORAGE_ENV}={storage!r} is set")
    root = Path(storage).expanduser() / study
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    check(len(folders) == 1, f"one run folder in {root} (found {len(folders)})")
    trials_df, epochs_df = read_tables(folders[0])
    check(dict(zip(trials_df["trial_id"], trials_df["mlflow_run_id"], strict=True)) == runs,
          f"{folders[0] / TRIALS_FILE}: the same {len(runs)} trials and run ids as MLflow")
    check(len(epochs_df) == epochs * len(runs),
          f"{folders[0] / EPOCHS_FILE}: {epochs} epoch(s) per trial ({len(epochs_df)} rows)")


def main(argv: list[str] | None = None) -> int:
    """Run the checks; 0 when they all hold."""
    parser = argparse.ArgumentParser(prog="ray_up_smoke_check")
    parser.add_argument("--study", default="ghost_size")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        runs = check_tracking(os.environ.get(TRACKING_URI_ENV, ""), args.study, args.trials)
        check_storage(os.environ.get(STORAGE_ENV, ""), args.study, runs, args.epochs)
    except CheckFailed as failed:
        print(f"ray_up_smoke_check: FAILED: {failed}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
