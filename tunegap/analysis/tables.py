"""Build, write and read a study's result tables (the schema is `tunegap.analysis.schema`).

`build_tables(records, study=...)` turns the study runner's plain per-trial records into the
(trials, epochs) DataFrames, `write_tables` stores them as Parquet with exactly the schema
(`write_parquet_atomic`, so a crash leaves the old file or the new one, never half of one),
and `read_tables` gives the same DataFrames back.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunegap.analysis.fits import fit_diffusion_phase, steps_to_target
from tunegap.analysis.schema import EPOCHS_SCHEMA, TRIALS_SCHEMA
from tunegap.atomic import write_atomically
from tunegap.names import (
    DIVERGED,
    EPOCH_METRICS,
    METRIC_NAMES,
    OPTIONAL_METRICS,
    OUTCOMES,
    TRAINING_KNOBS,
)

__all__ = [
    "EPOCHS_FILE",
    "TRIALS_FILE",
    "build_tables",
    "read_tables",
    "write_parquet_atomic",
    "write_tables",
]

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"

_INT_METRICS = ("epoch", "updates", DIVERGED)
# The last epoch's value of every metric that describes the trained model (not the counters,
# the timing, or the optional probes, which the trials table summarises its own way).
_FINAL_METRICS = tuple(
    m for m in METRIC_NAMES if m not in ("epoch", "updates", "lr", "seconds", *OPTIONAL_METRICS)
)


# ---------------------------------------------------------------------------- building


def build_tables(
    records: Iterable[Mapping[str, Any]], *, study: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn trial records into the (trials, epochs) DataFrames of `tunegap.analysis.schema`.

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
            DIVERGED: bool(row.get(DIVERGED, False)),
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


def best_epoch_test_acc(history: Sequence[Mapping[str, Any]]) -> float:
    """The test accuracy at a trial's best epoch: the epoch of highest validation accuracy
    where the trial held out a validation split (the first such epoch), else the highest
    test accuracy itself (the authors' choice, which peeks at the test set); NaN if none.

    >>> best_epoch_test_acc([{"test_acc": 90.0, "val_acc": 91.0}, {"test_acc": 92.0, "val_acc": 90.0}])
    90.0
    >>> best_epoch_test_acc([{"test_acc": 90.0}, {"test_acc": 92.0}])
    92.0
    """
    def finite(row: Mapping[str, Any], key: str) -> bool:
        value = row.get(key)
        return value is not None and math.isfinite(value)

    scored = [r for r in history if finite(r, "test_acc")]
    by_validation = [r for r in scored if finite(r, "val_acc")]
    if by_validation:
        return float(max(by_validation, key=lambda r: r["val_acc"])["test_acc"])
    return float(max(r["test_acc"] for r in scored)) if scored else math.nan


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
        **_training_knobs(config, resolved),
        "resolved_lr": _float_or_nan(resolved.get("resolved_lr")),
        "resolved_epochs": _int_or_none(resolved.get("resolved_epochs")),
        "resolved_decay_epochs": _text_or_none(resolved.get("resolved_decay_epochs")),
        "resolved_total_updates": _int_or_none(resolved.get("resolved_total_updates")),
        "outcome": outcome,
        "error": None if error is None else str(error),
        "epochs_done": last.get("epoch", 0),
        "updates": last.get("updates") or 0,
        **{k: last.get(k, math.nan) for k in _FINAL_METRICS},
        "best_test_acc": best_epoch_test_acc(history),
        "train_seconds": float(sum(r["seconds"] for r in history if math.isfinite(r["seconds"]))),
        **_instruments(history, _float_or_nan(record.get("target_test_acc"))),
    }


# What a record made before a knob existed (or an unresolved trial) reads as.
_KNOB_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd", "no_decay_bn_bias": False, "warmup_start_factor": 0.0,
    "scale_warmup": False, "schedule": "step", "label_smoothing": 0.0,
    "zero_init_residual": False, "protocol": "clean", "validation_fraction": 0.0,
}


def _training_knobs(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The training knobs as the trial used them: its resolved values, else its config's."""
    def value(name: str) -> Any:
        found = resolved.get(f"resolved_{name}")
        if found is None:
            found = config.get(name)
        return _KNOB_DEFAULTS.get(name) if found is None else found

    row = {name: value(name) for name in (*TRAINING_KNOBS, "protocol")}
    for name in ("momentum", "weight_decay", "warmup_epochs", "warmup_start_factor",
                 "label_smoothing", "validation_fraction"):
        row[name] = _float_or_nan(row[name])
    for name in ("train_size", "max_updates"):
        row[name] = _int_or_none(row[name])
    for name in ("no_decay_bn_bias", "scale_warmup", "zero_init_residual"):
        row[name] = bool(row[name])
    return row


def _instruments(history: list[dict[str, Any]], target: float) -> dict[str, float]:
    """Per-trial summaries of the probes: noise scale, sharpness, diffusion fit, steps."""
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
    """Write `df` as Parquet with exactly `schema`, atomically (`tunegap.atomic`).

    Any failure leaves an existing `path` as it was and no temporary file behind. Columns
    of `df` not in the schema are dropped; a missing column, a null in a non-nullable column
    or a value of the wrong type raises.
    """
    path = Path(path)
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
    table = pa.Table.from_pandas(df[list(schema.names)], schema=schema, preserve_index=False)
    # from_pandas adds pandas metadata; the file carries exactly the declared schema.
    table = table.replace_schema_metadata(schema.metadata)
    # `pq.write_table` is looked up at write time, so a test can swap in a crashing writer.
    return write_atomically(path, lambda tmp: pq.write_table(table, tmp))


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


# Columns added to the schema after tables were first shipped, and what a table written
# before them reads as (no validation split was held out then).
ADDED_LATER: dict[str, Any] = {"validation_fraction": 0.0, "val_loss": math.nan,
                               "val_acc": math.nan}


def _read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the study (or write_tables) first")
    table = pq.read_table(path)
    for name, value in ADDED_LATER.items():
        if name in schema.names and name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows,
                                                       type=schema.field(name).type))
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} does not have the tunegap schema: missing column(s) {', '.join(missing)}"
        )
    return _coerce(table.select(schema.names).to_pandas(), schema)
