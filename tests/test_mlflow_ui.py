"""MLflow as its users meet it: each trial's cell on its run, the parent's description,
images and data set, the source tags, and (slow, real browser) the printed URL opening the
runs in MLflow's model-training view."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from gap_records import study_records
from study_procs import HANG_S

from tunegap.analysis.cells import compute_cells
from tunegap.analysis.tables import build_tables
from tunegap.tracking import StudyTracker
from tunegap.tracking.results import (
    dataset_entity,
    log_study_results,
    mlflow_description,
    ui_lines,
)

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def recorded_study(tmp_path: Path) -> tuple[StudyTracker, object, object, Path]:
    """A study's runs made by driving the tracker as the callback would, and its map."""
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "ui_check")
    tracker.start_parent({"workload": "mnist1d-cnn"})
    records = study_records()
    for record in records:
        record["mlflow_run_id"] = tracker.child_run_for(record["trial_id"], record["config"])
    trials, _ = build_tables(records, study="ui_check")
    cells = compute_cells(trials, margin=0.5)
    figure = tmp_path / "gap_map.png"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(figure)
    plt.close(fig)
    return tracker, trials, cells, figure


def test_every_child_gets_its_cells_gap_verdict_and_interval(tmp_path):
    tracker, trials, cells, figure = recorded_study(tmp_path)
    data = dataset_entity("mnist1d", source="tunegap:mnist1d", profile={"train_size": 4000})
    tagged = log_study_results(tracker, cells=cells, trials=trials,
                               summary="# s\n\n![gap_map.png](gap_map.png)\n",
                               images=[figure], dataset=data)
    assert tagged == len(trials)
    client = tracker.client
    by_id = trials.set_index("mlflow_run_id")
    large = cells[(cells["batch_size"] == 1024) & cells["ghost_batch_size"].isna()
                  & (cells["lr_exponent"] == 0.0)].iloc[0]
    for run_id, row in by_id.iterrows():
        run = client.get_run(run_id)
        assert "verdict" in run.data.tags and "verdict_holm" in run.data.tags
        assert run.data.params["ghost_batch_size"] == (
            "0" if pd.isna(row["ghost_batch_size"]) else str(int(row["ghost_batch_size"])))
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["mnist1d"]
        if row["trial_id"].startswith("lb"):
            assert run.data.metrics["gap"] == pytest.approx(large["gap"])
            assert run.data.metrics["gap_ci_low"] < large["gap"] < run.data.metrics[
                "gap_ci_high"]
            assert run.data.tags["verdict"] == large["verdict"] == "open"
    parent = client.get_run(tracker.parent_run_id)
    note = parent.data.tags["mlflow.note.content"]
    assert f"get-artifact?path=gap_map.png&run_uuid={tracker.parent_run_id}" in note
    assert parent.inputs.dataset_inputs[0].dataset.digest == data.digest
    images = [f.path for f in client.list_artifacts(tracker.parent_run_id, "images")]
    assert any("gap_map" in p for p in images), images


def test_runs_carry_the_fluent_apis_source_tags(tmp_path):
    tracker, trials, _, _ = recorded_study(tmp_path)
    for run_id in (tracker.parent_run_id, trials["mlflow_run_id"].iloc[0]):
        tags = tracker.client.get_run(run_id).data.tags
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] and tags["mlflow.user"]


def test_description_keeps_outside_images_and_fits_mlflows_limit():
    text = mlflow_description("![x](https://e.org/x.png) " + "y" * 9000, "r1")
    assert text.startswith("![x](https://e.org/x.png)") and len(text) <= 8000
    assert "artifact summary.md" in text


def test_ui_lines_name_the_command_and_model_training_url_never_credentials():
    local = ui_lines("sqlite:////tmp/a b/mlflow.db", "3", "abc")
    assert local[0] == "MLflow: run  mlflow ui --backend-store-uri 'sqlite:////tmp/a b/mlflow.db'" \
        " --port 5000"
    assert local[1].endswith(
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    server = ui_lines("https://me:secret@mlflow.example.org/", "3", "abc")
    assert "secret" not in " ".join(server) and "me:" not in " ".join(server)
    assert server[0].endswith("mlflow.example.org/#/experiments/3/runs/abc"
                              "?workflowType=machine_learning")


# --------------------------------------------------------------------------------------
# A real browser on a real `mlflow ui` over a real (small) study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, data_dir, ray_session):
    from tunegap import RunOptions, Study, run_study
    from tunegap.studies import ghost_size

    tmp = tmp_path_factory.mktemp("ui")
    study = Study(name="ghost_size", workload="mnist1d-cnn", epochs=1, baseline_epochs=1,
                  grid={"batch_size": (512,), "ghost_batch_size": (None, 64),
                        "lr_exponent": (0.5,)},
                  figures=ghost_size.figures)
    options = RunOptions(storage_path=str(tmp / "results"),
                         tracking_uri=f"sqlite:///{tmp}/mlflow.db", device="cpu",
                         data_dir=str(data_dir), checkpoint_every=1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        outcome = run_study(study, options=options)
    return tmp, outcome, printed.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_printed_url_opens_the_runs_in_a_real_browser(finished_study):
    tmp, outcome, out = finished_study
    assert out.splitlines()[0].startswith("ghost_size: 3 trials of mnist1d-cnn"), out
    assert "[3/3 done, 0 running, 0 left, all done]" in out
    command = next(line for line in out.splitlines() if "mlflow ui --backend-store-uri" in line)
    url = next(line for line in out.splitlines() if "then open" in line).split()[-1]
    assert outcome.parent_run_id in url and "workflowType=machine_learning" in url
    port = free_port()
    args = command.split("run  ", 1)[1].replace("--port 5000", f"--port {port}").split()
    url = url.replace(":5000/", f":{port}/")
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *args[1:], "--host", "127.0.0.1"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_for(base + "/health")
        query = urllib.parse.urlencode({"path": "gap_map.png", "run_uuid": outcome.parent_run_id})
        with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=10) as reply:
            assert reply.read(8) == b"\x89PNG\r\n\x1a\n"
        shot = tmp / "page.png"
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                   "--virtual-time-budget=15000", "--window-size=1400,900"]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True,
                             timeout=HANG_S).stdout
        subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True,
                       timeout=HANG_S)
        keep = os.environ.get("TUNEGAP_UI_SHOT")
        if keep:  # where to keep what the browser saw, to look at it
            shutil.copy(shot, keep)
            Path(keep).with_suffix(".out").write_text(out)
            Path(keep).with_suffix(".html").write_text(dom)
        # The run page of the parent: its name, its metrics, not the GenAI traces overview.
        assert "ghost_size-" in dom, dom[:2000]
        assert "cells_closed" in dom or "wall_seconds" in dom
        assert "Detect Issues" not in dom
        # The description (summary.md) shows the map from the run's artifacts.
        assert f'<img src="get-artifact?path=gap_map.png&amp;run_uuid={outcome.parent_run_id}"' \
            in dom
    finally:
        server.terminate()
        server.wait(timeout=30)
