"""The result tables of a study: `trials.parquet` and `epochs.parquet`, and their schema.

After a study, the study runner gathers one plain record per trial and calls
`build_tables(records, study=...)`, then `write_tables(...)`. `read_tables(out_dir)` gives the
same two DataFrames back. Both files carry the schemas below exactly (`TRIALS_SCHEMA`,
`EPOCHS_SCHEMA`), with each column's meaning stored as field metadata (`description`), so
`pyarrow.parquet.read_schema(path)` documents a file on its own. Files are replaced
atomically: a crash leaves either the old file or the new one, never half of one.

Accuracies are in percent; "points" are percentage points. Floats are float64 and a missing
float reads back as NaN; an integer column that may be missing reads back as pandas `Int64`
(with `<NA>`); strings read back as pandas `str`.

trials.parquet — one row per trial
----------------------------------
====================== ======= ==========================================================
column                 type    meaning
====================== ======= ==========================================================
study                  string  study name (same for every row of one study)
trial_id               string  Ray Tune trial id, unique within the study
mlflow_run_id          string  MLflow child run of the trial; null when not tracked
is_baseline            bool    the trial belongs to the small-batch baseline
workload               string  named workload (model + dataset + base regime)
batch_size             int64   batch size B
ghost_batch_size       int64   Ghost BatchNorm size; null = ordinary BatchNorm ("BN")
lr_exponent            float64 alpha in lr = base_lr * (B / B0) ** alpha
regime_multiplier      string  the knob as asked: "matched" or a number such as "4.0"
multiplier             float64 the resolved numeric multiplier ("matched" = ceil(B / B0));
                               null when the trial failed before resolving its regime
seed                   int64   the trial's seed
epochs_override        int64   TrialConfig.epochs (overrides the workload's epochs); null
base_lr_override       float64 TrialConfig.base_lr (overrides the workload's lr); null
resolved_lr            float64 learning rate after LR scaling, before the first decay epoch
                               (and after warm-up); null if never resolved
resolved_epochs        int64   epochs after regime adaptation; null if never resolved
resolved_decay_epochs  string  LR-decay epochs after adaptation, comma separated ("10,15")
resolved_total_updates int64   planned weight updates of the whole regime; null if unknown
outcome                string  "completed", "diverged" (non-finite loss) or "error"
error                  string  the error message of an "error" trial; null otherwise
epochs_done            int64   last epoch reported (0 when none was)
updates                int64   weight updates made up to the last reported epoch (0 if none)
train_loss             float64 last epoch's training loss (mean over its batches)
train_acc              float64 last epoch's training accuracy, percent (training mode)
test_loss              float64 last epoch's test loss
test_acc               float64 last epoch's test accuracy, percent; NaN when diverged
train_test_gap         float64 last epoch's train_acc - test_acc, points
weight_distance        float64 last epoch's ||w_t - w_0|| over all weights
best_test_acc          float64 best finite test accuracy over all epochs; NaN if none
train_seconds          float64 sum of the epochs' wall-clock seconds
noise_scale            float64 gradient noise scale B_simple (McCandlish et al. 2018), mean
                               of the epochs that measured it; null when not measured
sharpness              float64 last measured top Hessian eigenvalue of the training loss
                               (Keskar et al. 2017); null when not measured
diffusion_slope        float64 slope of weight_distance against ln(updates) over the
                               high-learning-rate phase (the paper's Figure 2)
diffusion_intercept    float64 its intercept
diffusion_r2           float64 R^2 of that fit (null with fewer than 3 epochs in the phase)
target_test_acc        float64 the accuracy target of steps_to_target, percent
steps_to_target        float64 updates until test_acc first reached the target (linear
                               interpolation between epochs); null when never reached
====================== ======= ==========================================================

The "last epoch" is the highest epoch number reported. For a diverged trial it is the epoch
where the loss went non-finite, so its test metrics are NaN (null in the file).

epochs.parquet — one row per trial and epoch
--------------------------------------------
=============== ======= ==================================================================
column          type    meaning
=============== ======= ==================================================================
study           string  study name
trial_id        string  joins trials.parquet
epoch           int64   epoch number, from 1
updates         int64   weight updates made up to the end of this epoch
lr              float64 learning rate of the epoch's last update
train_loss      float64 training loss, mean over the epoch's batches (NaN/inf if diverged)
train_acc       float64 training accuracy, percent, in training mode
test_loss       float64 test loss with running BatchNorm statistics
test_acc        float64 test accuracy, percent
train_test_gap  float64 train_acc - test_acc, points
weight_distance float64 ||w_t - w_0|| over all weights
seconds         float64 wall-clock seconds of the epoch (training and evaluation)
noise_scale     float64 gradient noise scale B_simple over the epoch; null if not measured
sharpness       float64 top Hessian eigenvalue after the epoch; null if not measured
diverged        bool    the loss or the weights went non-finite in this epoch
=============== ======= ==================================================================

A trial restored from a checkpoint re-reports some epochs: the last report of each epoch
wins, and rows are sorted by trial (in the order of the records) and then by epoch.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "EPOCHS_SCHEMA",
    "EPOCH_METRICS",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "TRIALS_SCHEMA",
    "build_tables",
    "read_tables",
    "write_parquet_atomic",
    "write_tables",
]

SCHEMA_VERSION = "1"
OUTCOMES = ("completed", "diverged", "error")
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"

# (name, arrow type, nullable, meaning): the single source of both schemas; the module
# docstring repeats it for readers, and a test keeps the two in step.
_TRIALS_COLUMNS: tuple[tuple[str, pa.DataType, bool, str], ...] = (
    ("study", pa.string(), False, "study name"),
    ("trial_id", pa.string(), False, "Ray Tune trial id, unique within the study"),
    ("mlflow_run_id", pa.string(), True, "MLflow child run of the trial"),
    ("is_baseline", pa.bool_(), False, "the trial belongs to the small-batch baseline"),
    ("workload", pa.string(), False, "named workload"),
    ("batch_size", pa.int64(), False, "batch size B"),
    ("ghost_batch_size", pa.int64(), True, "Ghost BatchNorm size; null = ordinary BatchNorm"),
    ("lr_exponent", pa.float64(), False, "alpha in lr = base_lr * (B / B0) ** alpha"),
    ("regime_multiplier", pa.string(), False, 'the knob as asked: "matched" or a number'),
    ("multiplier", pa.float64(), True, "resolved numeric regime multiplier"),
    ("seed", pa.int64(), False, "seed"),
    ("epochs_override", pa.int64(), True, "TrialConfig.epochs override"),
    ("base_lr_override", pa.float64(), True, "TrialConfig.base_lr override"),
    ("resolved_lr", pa.float64(), True, "learning rate after LR scaling, before any decay"),
    ("resolved_epochs", pa.int64(), True, "epochs after regime adaptation"),
    ("resolved_decay_epochs", pa.string(), True, "LR-decay epochs, comma separated"),
    ("resolved_total_updates", pa.int64(), True, "planned weight updates of the regime"),
    ("outcome", pa.string(), False, "completed, diverged or error"),
    ("error", pa.string(), True, "error message of an error trial"),
    ("epochs_done", pa.int64(), False, "last epoch reported (0 if none)"),
    ("updates", pa.int64(), False, "weight updates up to the last reported epoch"),
    ("train_loss", pa.float64(), True, "last epoch's training loss"),
    ("train_acc", pa.float64(), True, "last epoch's training accuracy, percent"),
    ("test_loss", pa.float64(), True, "last epoch's test loss"),
    ("test_acc", pa.float64(), True, "last epoch's test accuracy, percent"),
    ("train_test_gap", pa.float64(), True, "last epoch's train_acc - test_acc, points"),
    ("weight_distance", pa.float64(), True, "last epoch's ||w_t - w_0||"),
    ("best_test_acc", pa.float64(), True, "best finite test accuracy over all epochs"),
    ("train_seconds", pa.float64(), False, "sum of the epochs' wall-clock seconds"),
    ("noise_scale", pa.float64(), True, "mean gradient noise scale B_simple over epochs"),
    ("sharpness", pa.float64(), True, "last measured top Hessian eigenvalue"),
    ("diffusion_slope", pa.float64(), True, "d weight_distance / d ln(updates), high-lr phase"),
    ("diffusion_intercept", pa.float64(), True, "intercept of that fit"),
    ("diffusion_r2", pa.float64(), True, "R^2 of that fit"),
    ("target_test_acc", pa.float64(), True, "accuracy target of steps_to_target, percent"),
    ("steps_to_target", pa.float64(), True, "updates until test_acc reached the target"),
)

_EPOCHS_COLUMNS: tuple[tuple[str, pa.DataType, bool, str], ...] = (
    ("study", pa.string(), False, "study name"),
    ("trial_id", pa.string(), False, "joins trials.parquet"),
    ("epoch", pa.int64(), False, "epoch number, from 1"),
    ("updates", pa.int64(), True, "weight updates up to the end of this epoch"),
    ("lr", pa.float64(), True, "learning rate of the epoch's last update"),
    ("train_loss", pa.float64(), True, "training loss, mean over the epoch's batches"),
    ("train_acc", pa.float64(), True, "training accuracy, percent"),
    ("test_loss", pa.float64(), True, "test loss"),
    ("test_acc", pa.float64(), True, "test accuracy, percent"),
    ("train_test_gap", pa.float64(), True, "train_acc - test_acc, points"),
    ("weight_distance", pa.float64(), True, "||w_t - w_0|| over all weights"),
    ("seconds", pa.float64(), True, "wall-clock seconds of the epoch"),
    ("noise_scale", pa.float64(), True, "gradient noise scale B_simple over the epoch"),
    ("sharpness", pa.float64(), True, "top Hessian eigenvalue after the epoch"),
    ("diverged", pa.bool_(), False, "the loss or the weights went non-finite"),
)


def _schema(columns: Sequence[tuple[str, pa.DataType, bool, str]], table: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(name, typ, nullable=nullable, metadata={"description": meaning})
            for name, typ, nullable, meaning in columns
        ],
        metadata={"tunegap.table": table, "tunegap.schema_version": SCHEMA_VERSION},
    )


TRIALS_SCHEMA: pa.Schema = _schema(_TRIALS_COLUMNS, "trials")
EPOCHS_SCHEMA: pa.Schema = _schema(_EPOCHS_COLUMNS, "epochs")

# The per-epoch metrics a history row carries (tunegap.train.METRIC_NAMES plus `diverged`).
EPOCH_METRICS = tuple(name for name, *_ in _EPOCHS_COLUMNS if name not in ("study", "trial_id"))
_INT_METRICS = ("epoch", "updates", "diverged")
_FINAL_METRICS = (
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "train_test_gap",
    "weight_distance",
)


# ---------------------------------------------------------------------------- building


def build_tables(
    records: Iterable[Mapping[str, Any]], *, study: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn trial records into the (trials, epochs) DataFrames described in the module doc.

    A record is a dict with `trial_id`, `mlflow_run_id`, `is_baseline`, `config`
    (`TrialConfig.to_dict()`), `resolved` (`ResolvedRegime.as_dict()`, or `{}` when the
    trial failed first), `outcome`, `error` and `history` (per-epoch metric dicts, possibly
    with re-reported epochs; the last report of an epoch wins). Keys a history row has
    beyond the epoch metrics are ignored, and so are rows without an `epoch`. Raises
    ValueError on a record that cannot be tabled (no trial id, a duplicate trial id, an
    unknown outcome, a config without workload or batch_size, a non-integer epoch).
    """
    if not isinstance(study, str) or not study:
        raise ValueError(f"study {study!r} is not allowed: use a non-empty name")
    trial_rows: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in records:
        trial_id = record.get("trial_id")
        if not isinstance(trial_id, str) or not trial_id:
            raise ValueError(f"a trial record needs a non-empty string trial_id, got {trial_id!r}")
        if trial_id in seen:
            raise ValueError(f"trial_id {trial_id!r} appears in more than one record")
        seen.add(trial_id)
        history = _dedupe_history(record.get("history") or [], trial_id)
        trial_rows.append(_trial_row(record, history, study))
        epoch_rows.extend({"study": study, "trial_id": trial_id, **row} for row in history)
    return _frame(trial_rows, TRIALS_SCHEMA), _frame(epoch_rows, EPOCHS_SCHEMA)


def _dedupe_history(history: Iterable[Mapping[str, Any]], trial_id: str) -> list[dict[str, Any]]:
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in history:
        if row.get("epoch") is None:
            # Not an epoch report (Tune may record bookkeeping-only results); nothing to table.
            continue
        try:
            epoch = _int_or_none(row["epoch"])
        except ValueError:
            raise ValueError(
                f"trial {trial_id!r}: a history row has epoch {row['epoch']!r}, not an integer"
            ) from None
        # Later reports of an epoch (a restored trial re-running it) replace earlier ones.
        by_epoch[epoch] = {
            "epoch": epoch,
            "updates": _int_or_none(row.get("updates")),
            **{k: _float_or_nan(row.get(k)) for k in EPOCH_METRICS if k not in _INT_METRICS},
            "diverged": bool(row.get("diverged", False)),
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


def _trial_row(
    record: Mapping[str, Any], history: list[dict[str, Any]], study: str
) -> dict[str, Any]:
    trial_id = record["trial_id"]
    config = record.get("config") or {}
    resolved = record.get("resolved") or {}
    outcome = record.get("outcome")
    if outcome not in OUTCOMES:
        raise ValueError(
            f"trial {trial_id!r}: outcome {outcome!r} is not allowed: use one of "
            f"{', '.join(OUTCOMES)}"
        )
    for key in ("workload", "batch_size"):
        if config.get(key) is None:
            raise ValueError(f"trial {trial_id!r}: its config has no {key!r}")
    regime_multiplier = _multiplier_text(config.get("regime_multiplier", 1.0))
    multiplier = _float_or_nan(resolved.get("resolved_multiplier"))
    if math.isnan(multiplier):
        # Without a resolved regime a numeric knob is still its own value; "matched" needs
        # the workload's base batch size, which a record does not carry.
        multiplier = _float_or_nan(regime_multiplier)
    last = history[-1] if history else {}
    finite_acc = [r["test_acc"] for r in history if math.isfinite(r["test_acc"])]
    error = record.get("error")
    return {
        "study": study,
        "trial_id": trial_id,
        "mlflow_run_id": record.get("mlflow_run_id"),
        "is_baseline": bool(record.get("is_baseline", False)),
        "workload": str(config["workload"]),
        "batch_size": int(config["batch_size"]),
        "ghost_batch_size": _int_or_none(config.get("ghost_batch_size")),
        "lr_exponent": float(config.get("lr_exponent", 0.0)),
        "regime_multiplier": regime_multiplier,
        "multiplier": multiplier,
        "seed": int(config.get("seed", 0)),
        "epochs_override": _int_or_none(config.get("epochs")),
        "base_lr_override": _float_or_nan(config.get("base_lr")),
        "resolved_lr": _float_or_nan(resolved.get("resolved_lr")),
        "resolved_epochs": _int_or_none(resolved.get("resolved_epochs")),
        "resolved_decay_epochs": _text_or_none(resolved.get("resolved_decay_epochs")),
        "resolved_total_updates": _int_or_none(resolved.get("resolved_total_updates")),
        "outcome": outcome,
        "error": None if error is None else str(error),
        "epochs_done": last.get("epoch", 0),
        "updates": last.get("updates") or 0,
        **{k: last.get(k, math.nan) for k in _FINAL_METRICS},
        "best_test_acc": max(finite_acc) if finite_acc else math.nan,
        "train_seconds": float(sum(r["seconds"] for r in history if math.isfinite(r["seconds"]))),
        **_instruments(history, _float_or_nan(record.get("target_test_acc"))),
    }


def _instruments(history: list[dict[str, Any]], target: float) -> dict[str, float]:
    """Per-trial summaries of the probes: noise scale, sharpness, diffusion fit, steps."""
    from tunegap.probes import fit_diffusion_phase, steps_to_target

    noise = [r["noise_scale"] for r in history if math.isfinite(r["noise_scale"])]
    sharp = [r["sharpness"] for r in history if math.isfinite(r["sharpness"])]
    column = {k: [r[k] for r in history] for k in ("updates", "weight_distance", "lr", "test_acc")}
    updates = [math.nan if u is None else float(u) for u in column["updates"]]
    fit = fit_diffusion_phase(updates, column["weight_distance"], column["lr"])
    return {
        "noise_scale": sum(noise) / len(noise) if noise else math.nan,
        "sharpness": sharp[-1] if sharp else math.nan,
        "diffusion_slope": fit["slope"],
        "diffusion_intercept": fit["intercept"],
        "diffusion_r2": fit["r2"],
        "target_test_acc": target,
        "steps_to_target": (
            steps_to_target(updates, column["test_acc"], target)
            if math.isfinite(target)
            else math.nan
        ),
    }


def _multiplier_text(value: object) -> str:
    # One spelling per knob value, so 4, 4.0 and "4" group together in the gap map.
    if isinstance(value, str):
        word = value.strip().lower()
        try:
            return str(float(word))
        except ValueError:
            return word
    return str(float(value))  # type: ignore[arg-type]


def _int_or_none(value: object) -> int | None:
    """None for a missing value; an int for an integral number; ValueError for the rest, so a
    fractional batch size never turns silently into a missing one."""
    if _missing(value):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and float(value).is_integer()
    ):
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def _float_or_nan(value: object) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------------------ dtypes


_STRING_DTYPE = pd.Series(["text"]).dtype


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _pandas_dtype(field: pa.Field) -> str:
    if pa.types.is_integer(field.type):
        return "Int64" if field.nullable else "int64"
    if pa.types.is_floating(field.type):
        return "float64"
    if pa.types.is_boolean(field.type):
        return "bool"
    return "str"


def _frame(rows: list[dict[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=schema.names)
    return _coerce(df, schema)


def _coerce(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """The DataFrame form of a table: schema column order and one dtype per arrow type, so a
    freshly built table and one read back from Parquet compare equal."""
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {', '.join(missing)}")
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for field in schema:
        col = df[field.name].reset_index(drop=True)
        dtype = _pandas_dtype(field)
        if dtype == "str":
            # pandas >= 3 infers its `str` dtype here, pandas 2 keeps object with None: both
            # match what pyarrow's to_pandas gives in that version.
            out[field.name] = pd.Series(
                [None if _missing(v) else str(v) for v in col], dtype=_STRING_DTYPE
            )
        else:
            out[field.name] = col.astype(dtype)
    return out


# ------------------------------------------------------------------------------ files


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike[str], schema: pa.Schema) -> Path:
    """Write `df` as Parquet with exactly `schema`, atomically.

    The table is written to a hidden temporary file in the same folder, flushed to disk,
    then moved over `path` with `os.replace` (atomic on POSIX and Windows within one file
    system). Any failure removes the temporary file and leaves an existing `path` as it
    was. Columns of `df` not in the schema are dropped; a missing column, a null in a
    non-nullable column or a value of the wrong type raises.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        missing = [name for name in schema.names if name not in df.columns]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
        table = pa.Table.from_pandas(df[list(schema.names)], schema=schema, preserve_index=False)
        # from_pandas adds pandas metadata; the file carries exactly the declared schema.
        table = table.replace_schema_metadata(schema.metadata)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            # Without this a power cut after the rename can leave an empty file behind it.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_tables(
    trials_df: pd.DataFrame, epochs_df: pd.DataFrame, out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write `trials.parquet` and `epochs.parquet` under `out_dir` (created if needed).

    Returns {"trials": path, "epochs": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "trials": write_parquet_atomic(trials_df, out / TRIALS_FILE, TRIALS_SCHEMA),
        "epochs": write_parquet_atomic(epochs_df, out / EPOCHS_FILE, EPOCHS_SCHEMA),
    }


def read_tables(out_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the (trials, epochs) DataFrames that `write_tables` wrote under `out_dir`.

    Dtypes are the same as `build_tables` gives (nullable integers as `Int64`).
    """
    out = Path(out_dir)
    return _read(out / TRIALS_FILE, TRIALS_SCHEMA), _read(out / EPOCHS_FILE, EPOCHS_SCHEMA)


def _read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the study (or write_tables) first")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} does not have the tunegap schema: missing column(s) {', '.join(missing)}"
        )
    return _coerce(table.select(schema.names).to_pandas(), schema)
