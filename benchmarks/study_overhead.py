"""Ray and logging overhead of a study: wall time against the trials' own training time.

    python benchmarks/study_overhead.py                 # the default ghost_size study
    python benchmarks/study_overhead.py -- --epochs 5   # arguments after -- go to the study

Runs the study once (fresh storage and MLflow in a temporary folder) and prints, side by side:
the wall time of the whole command, the wall time of Tune's fit, the sum of the trials' epoch
times (training + evaluation, measured inside the engine), and the overhead

    overhead = fit_wall * slots / sum(train_seconds) - 1

where `slots` is the number of trials that can run at once (CPUs / CPUs per trial, capped by
the number of trials). 0% means Ray and MLflow cost nothing beyond the training itself.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import tempfile
import time

import mlflow
from _provenance import git_commit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", default="ghost_size")
    p.add_argument("study_args", nargs="*")
    args = p.parse_args()
    module = importlib.import_module(f"tunegap.studies.{args.study}")
    from tunegap.cli import study_main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--storage-path", f"{tmp}/results", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
                "--quiet", *args.study_args]
        started = time.perf_counter()
        outcome = study_main(module.parser(), module.build, argv)
        total_wall = time.perf_counter() - started
        run = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_run(outcome.parent_run_id)
        fit_wall = run.data.metrics["wall_seconds"]
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)) if ray.is_initialized() else (os.cpu_count() or 1)
    trials = outcome.trials
    slots = max(1, min(cpus, len(trials)))
    train = float(trials["train_seconds"].sum())
    commit = git_commit()
    print(f"\nstudy {args.study} {' '.join(args.study_args)} | {len(trials)} trials | "
          f"{cpus} CPUs | {datetime.date.today()} | commit {commit} | python {sys.version.split()[0]}")
    print("| command wall (s) | fit wall (s) | sum of trial train time (s) | slots | overhead |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {total_wall:.1f} | {fit_wall:.1f} | {train:.1f} | {slots} | "
          f"{fit_wall * slots / train - 1:+.1%} |")


if __name__ == "__main__":
    main()
