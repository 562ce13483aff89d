"""Three identical studies started at once on one storage path and one MLflow store (a job
array, three terminals): three real processes, each gets its own run folder and parent run, and
both finish with complete tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from study_procs import HANG_S

STUDIES = 3


def tunegap_command() -> list[str]:
    exe = shutil.which("tunegap")
    return [exe] if exe else [sys.executable, "-m", "tunegap"]


@pytest.mark.slow
def test_three_identical_studies_started_together_all_finish(tmp_path, data_dir):
    argv = [*tunegap_command(), "run", "ghost_size", "--batch-sizes", "128", "--ghost-sizes",
            "none", "--seeds", "2", "--epochs", "1", "--baseline-epochs", "1", "--quiet", "--device", "cpu",
            "--max-concurrent", "1", "--data-dir", str(data_dir),
            "--storage-path", str(tmp_path / "results"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(STUDIES)]
    outs = [p.communicate(timeout=HANG_S) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    runs = sorted((tmp_path / "results" / "ghost_size").iterdir())
    assert len(runs) == STUDIES, runs
    for run_dir in runs:
        trials = pd.read_parquet(run_dir / "trials.parquet")
        assert len(trials) == 4 and set(trials["outcome"]) == {"completed"}
        assert (run_dir / "summary.md").exists()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tunegap/ghost_size")
    parents = client.search_runs([experiment.experiment_id],
                                 filter_string="tags.`tunegap.role` = 'parent'")
    if not parents:  # the tag that marks parents, whatever its name: runs without a parent
        parents = [r for r in client.search_runs([experiment.experiment_id])
                   if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == STUDIES
    assert {p.data.params["run_dir"] for p in parents} == {str(r) for r in runs}
