"""The end of a study in MLflow: what each run learns once the map is computed, and the way
into the UI.

`log_study_results` gives every child run its cell's ``gap`` (baseline - cell, in points),
``gap_ci_low`` / ``gap_ci_high`` and the tags ``verdict`` / ``verdict_holm``; the parent
its description (``mlflow.note.content``: summary.md, its images pointing at the parent's
artifacts so they render in the UI) and its figures as MLflow images; and every run the
study's data set as an input (`dataset_entity`). `ui_lines` are the last lines a study
prints: the command and URL that open the parent run in MLflow's model-training view.

Everything here raises on a tracking failure: the study runner calls it inside its guarded
`publish`, which reports and goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from tunegap.analysis.cells import knob_keys
from tunegap.analysis.decide import ANSWERED, CELL_COLUMNS, INCONCLUSIVE
from tunegap.tracking.runs import metric_value, now_ms
from tunegap.tracking.uri import redact_uri, sqlite_path

__all__ = [
    "CHILD_METRICS",
    "CHILD_TAGS",
    "dataset_entity",
    "log_study_results",
    "mlflow_description",
    "run_url",
    "ui_lines",
]

# Columns of the cells table each child run gets: metrics, then tags.
CHILD_METRICS: tuple[str, ...] = ("gap", "gap_ci_low", "gap_ci_high")
CHILD_TAGS: tuple[str, ...] = ("verdict", "verdict_holm")
# MLflow keeps the description in one tag, at most this long (mlflow.utils.validation).
_MAX_NOTE_CHARS = 8000
# The port `mlflow ui` listens on unless told otherwise.
UI_PORT = 5000
_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def dataset_entity(name: str, *, source: str, profile: Mapping[str, Any]) -> Dataset:
    """An `mlflow.entities.Dataset` for a study's data: `name` (e.g. "mnist1d"), `source`
    (the workload and its data folder) and `profile` (e.g. ``{"train_size": 4000}``); its
    digest is a hash of the three, so the same data shows as the same data set."""
    text = json.dumps({"name": name, "source": source, "profile": dict(profile)},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps(dict(profile), sort_keys=True, default=str),
    )


def mlflow_description(summary: str, run_id: str) -> str:
    """summary.md as the parent run's description: each image that points at a file beside
    it points at that file among the run's artifacts instead (the UI's ``get-artifact``
    endpoint, relative to the UI's own address), so it renders there too."""

    def to_artifact(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith("/"):
            return match[0]
        query = urllib.parse.urlencode({"path": target, "run_uuid": run_id})
        return f"![{match['alt']}](get-artifact?{query})"

    text = _IMAGE.sub(to_artifact, summary)
    if len(text) > _MAX_NOTE_CHARS:
        note = "\n\n… (the whole summary: artifact summary.md)\n"
        text = text[: _MAX_NOTE_CHARS - len(note)] + note
    return text


def log_study_results(
    tracker: Any,
    *,
    cells: pd.DataFrame,
    trials: pd.DataFrame,
    summary: str,
    images: Iterable[Path] = (),
    dataset: Dataset | None = None,
) -> int:
    """Log the study's results on its runs (see the module docstring); the number of child
    runs that got a cell. `trials` needs ``mlflow_run_id`` and the cells' knob columns."""
    client = tracker.client
    parent = tracker.parent_run_id
    inputs = [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "train")])] if dataset else []
    tagged = 0
    for run_id, row in child_cells(cells, trials).items():
        metrics, tags = child_batch(row)
        client.log_batch(run_id, metrics=metrics, tags=tags)
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
        tagged += 1
    client.set_tag(parent, MLFLOW_RUN_NOTE, mlflow_description(summary, parent))
    if inputs:
        client.log_inputs(parent, datasets=inputs)
    for path in images:
        log_png(client, parent, Path(path))
    return tagged


def child_cells(cells: pd.DataFrame, trials: pd.DataFrame) -> dict[str, Mapping[str, Any]]:
    """Child run id -> the row of its trial's cell (trials without a run or cell left out)."""
    knobs = [k for k in cells.columns if k in trials.columns and k in CELL_COLUMNS]
    if not len(cells) or "mlflow_run_id" not in trials.columns:
        return {}
    by_key = dict(zip(knob_keys(cells, knobs), cells.to_dict("records"), strict=True))
    found: dict[str, Mapping[str, Any]] = {}
    for run_id, key in zip(trials["mlflow_run_id"].tolist(), knob_keys(trials, knobs),
                           strict=True):
        if isinstance(run_id, str) and run_id and key in by_key:
            found[run_id] = by_key[key]
    return found




def child_batch(row: Mapping[str, Any]) -> tuple[list[Metric], list[RunTag]]:
    """One cell's numbers and verdicts as a child run's metrics and tags; a number that is
    not finite (a cell without an interval) is left out rather than logged as NaN."""
    now = now_ms()
    metrics = [
        Metric(key, value, now, 0)
        for key in CHILD_METRICS
        if (value := metric_value(row.get(key))) is not None and math.isfinite(value)
    ]
    tags = [RunTag(key, str(row[key])) for key in CHILD_TAGS if row.get(key) is not None]
    return metrics, tags


def log_png(client: Any, run_id: str, path: Path) -> None:
    """A figure as an MLflow image (key = its file name's stem), shown in the run's charts."""
    from PIL import Image

    with Image.open(path) as image:
        client.log_image(run_id, image.convert("RGB"), key=path.stem, step=0)


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The URL of a run in MLflow's UI at `base`, in the model-training view: MLflow 3 opens
    an experiment in its GenAI view unless ``workflowType=machine_learning`` says otherwise."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning")


def ui_lines(tracking_uri: str, experiment_id: str, run_id: str) -> list[str]:
    """What to run and open to see a study's parent run, as sentences; credentials never
    appear (`redact_uri`)."""
    uri = redact_uri(tracking_uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return [f"MLflow: open {run_url(uri, experiment_id, run_id)}"]
    if sqlite_path(uri) is not None or scheme in ("", "file"):
        base = f"http://127.0.0.1:{UI_PORT}"
        return [
            f"MLflow: run  mlflow ui --backend-store-uri {shlex.quote(uri)} --port {UI_PORT}",
            f"MLflow: then open {run_url(base, experiment_id, run_id)}",
        ]
    return [f"MLflow: the parent run is {run_id} in experiment {experiment_id} of {uri}"]


def image_names(files: Sequence[Path]) -> list[Path]:
    """The PNG figures among a study's files."""
    return [Path(p) for p in files if Path(p).suffix == ".png"]


def publish_study(tracker: Any, *, files: Sequence[Path], cells: pd.DataFrame,
                  trials: pd.DataFrame, margin: float, wall_seconds: float,
                  figure_errors: int = 0, dataset: Any = None) -> tuple[str | None, str | None]:
    """Everything a finished study logs on its parent run, in one place: the files and the
    summary numbers, then (`log_study_results`) each trial's cell on its child run, the
    description, images and data set. Returns what failed, each error in one line (None
    where it logged): the parent run's files and numbers (then nothing more is tried), and
    what follows them, which adds views of them."""
    from tunegap.analysis.cells import verdict_counts
    from tunegap.names import OUTCOMES
    from tunegap.text import one_line

    counts = trials["outcome"].value_counts().to_dict()
    try:
        tracker.log_parent_artifacts(files)
        tracker.log_parent_metrics({
            "wall_seconds": wall_seconds,
            "train_seconds": float(trials["train_seconds"].fillna(0).sum()),
            **{f"trials_{o}": counts.get(o, 0) for o in OUTCOMES},
            "margin": float(margin),
            **{f"cells_{v.replace(' ', '_')}": n for v, n in verdict_counts(cells).items()
               if v in (*ANSWERED, INCONCLUSIVE)},
            **({"figure_errors": figure_errors} if figure_errors else {}),
        })
    except Exception as err:
        return one_line(err), None
    summary = next((p for p in files if p.name == "summary.md"), None)
    try:
        log_study_results(tracker, cells=cells, trials=trials,
                          summary=summary.read_text() if summary else "",
                          images=image_names(files), dataset=dataset)
    except Exception as err:
        return None, one_line(err)
    return None, None


def parent_run_fields(description: Mapping[str, Any], *, question: str, run_dir: Path,
                      total_trials: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The parent run's params (the study as it was asked, JSON where not a plain value, its
    run folder and trial budget) and tags (its question, within MLflow's tag length)."""
    params = {**{k: v if isinstance(v, str | int | float) else json.dumps(v)
                 for k, v in description.items() if v is not None},
              "run_dir": str(run_dir), "total_trials": total_trials}
    return params, {"tunegap.question": question[:5000]}
