"""Ray and logging overhead of a study: wall time against the trials' own training time.

    python benchmarks/study_overhead.py                 # the default ghost_size study
    python benchmarks/study_overhead.py -- --epochs 5   # arguments after -- go to the study
    python benchmarks/study_overhead.py --folder studies/table1_fashion --slots 2

With --folder, nothing is run: the figures come from a folder that
`scripts/regenerate_studies.py` wrote (the command's wall time its README records, the trials'
train_seconds in its trials.parquet). That wall time is the whole command's (Ray start-up,
the looks' waits for their slowest trial, the final tables), so it bounds the fit's overhead
from above.

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
import re
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from _provenance import git_commit

WALL_LINE = re.compile(r"wall time of the command: ([0-9.]+) s")


def from_folder(folder: Path, slots: int) -> None:
    """Print the overhead of a regenerated study folder (see the module)."""
    match = WALL_LINE.search((folder / "README.md").read_text())
    if match is None:
        sys.exit(f"{folder / 'README.md'} records no wall time of the command")
    wall = float(match.group(1))
    trials = pd.read_parquet(folder / "trials.parquet", columns=["train_seconds"])
    train = float(trials["train_seconds"].sum())
    print(f"\nfolder {folder} | {len(trials)} trials | {slots} slots")
    print("| command wall (s) | sum of trial train time (s) | slots | overhead |")
    print("|---:|---:|---:|---:|")
    print(f"| {wall:.0f} | {train:.0f} | {slots} | {wall * slots / train - 1:+.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", default="ghost_size")
    p.add_argument("--folder", type=Path, help="a regenerated studies/ folder: run nothing")
    p.add_argument("--slots", type=int, default=2, help="trials at once (with --folder)")
    p.add_argument("study_args", nargs="*")
    args = p.parse_args()
    if args.folder is not None:
        from_folder(args.folder, args.slots)
        return
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
