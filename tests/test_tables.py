import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunegap.analysis import schema as schema_module
from tunegap.analysis.schema import EPOCHS_SCHEMA, TRIALS_SCHEMA
from tunegap.analysis.tables import build_tables, read_tables, write_parquet_atomic, write_tables
from tunegap.names import EPOCH_METRICS, METRIC_NAMES


def epoch(n, *, updates=None, test_acc=90.0, train_acc=95.0, distance=1.0, seconds=1.0, **kw):
    row = {
        "epoch": n,
        "updates": n * 10 if updates is None else updates,
        "lr": 0.1,
        "train_loss": 0.5,
        "train_acc": train_acc,
        "test_loss": 0.6,
        "test_acc": test_acc,
        "train_test_gap": train_acc - test_acc,
        "weight_distance": distance,
        "seconds": seconds,
        "diverged": False,
    }
    row.update(kw)
    return row


def record(trial_id, *, batch_size=32, ghost=None, history=(), outcome="completed", **kw):
    config = {
        "workload": "mnist1d-cnn",
        "batch_size": batch_size,
        "ghost_batch_size": ghost,
        "lr_exponent": kw.pop("lr_exponent", 0.0),
        "regime_multiplier": kw.pop("regime_multiplier", 1.0),
        "seed": kw.pop("seed", 0),
        "epochs": kw.pop("epochs", None),
        "base_lr": kw.pop("base_lr", None),
        "device": "cpu",
        "data_dir": None,
    }
    resolved = kw.pop(
        "resolved",
        {
            "resolved_lr": 0.05,
            "resolved_epochs": 3,
            "resolved_decay_epochs": "2,3",
            "resolved_multiplier": 1.0,
            "resolved_total_updates": 30,
        },
    )
    rec = {
        "trial_id": trial_id,
        "mlflow_run_id": kw.pop("mlflow_run_id", f"run-{trial_id}"),
        "is_baseline": kw.pop("is_baseline", False),
        "config": config,
        "resolved": resolved,
        "outcome": outcome,
        "error": kw.pop("error", None),
        "history": list(history),
    }
    assert not kw, kw
    return rec


def study_records():
    baseline = record(
        "base0",
        is_baseline=True,
        history=[epoch(1, test_acc=80.0), epoch(2, test_acc=85.0), epoch(3, test_acc=84.0)],
    )
    large = record(
        "large0",
        batch_size=1024,
        ghost=32,
        lr_exponent=0.5,
        regime_multiplier="matched",
        seed=1,
        base_lr=0.2,
        epochs=6,
        resolved={
            "resolved_lr": 1.13,
            "resolved_epochs": 96,
            "resolved_decay_epochs": "48,72",
            "resolved_multiplier": 32.0,
            "resolved_total_updates": 768,
        },
        history=[epoch(1, updates=8, test_acc=50.0), epoch(2, updates=16, test_acc=60.0)],
    )
    diverged = record(
        "div0",
        batch_size=1024,
        lr_exponent=1.0,
        outcome="diverged",
        history=[
            epoch(1, test_acc=40.0),
            epoch(
                2,
                train_loss=math.nan,
                test_loss=math.nan,
                test_acc=math.nan,
                train_test_gap=math.nan,
                weight_distance=math.nan,
                diverged=True,
            ),
        ],
    )
    failed = record(
        "err0",
        batch_size=4096,
        ghost=128,
        outcome="error",
        error="CUDA out of memory",
        resolved={},
        mlflow_run_id=None,
    )
    return [baseline, large, diverged, failed]


def test_round_trip_keeps_schema_and_values(tmp_path):
    trials, epochs = build_tables(study_records(), study="ghost_size")
    paths = write_tables(trials, epochs, tmp_path)
    assert paths == {"trials": tmp_path / "trials.parquet", "epochs": tmp_path / "epochs.parquet"}
    assert pq.read_schema(paths["trials"]).equals(TRIALS_SCHEMA, check_metadata=True)
    assert pq.read_schema(paths["epochs"]).equals(EPOCHS_SCHEMA, check_metadata=True)
    # Column meanings travel with the file.
    field = pq.read_schema(paths["trials"]).field("ghost_batch_size")
    assert b"BatchNorm" in field.metadata[b"description"]

    trials_back, epochs_back = read_tables(tmp_path)
    pd.testing.assert_frame_equal(trials_back, trials)
    pd.testing.assert_frame_equal(epochs_back, epochs)

    assert list(trials_back["trial_id"]) == ["base0", "large0", "div0", "err0"]
    large = trials_back.set_index("trial_id").loc["large0"]
    assert large["study"] == "ghost_size"
    assert large["ghost_batch_size"] == 32
    assert large["regime_multiplier"] == "matched"
    assert large["multiplier"] == 32.0
    assert large["epochs_override"] == 6
    assert large["base_lr_override"] == pytest.approx(0.2)
    assert large["resolved_decay_epochs"] == "48,72"
    assert large["resolved_total_updates"] == 768
    assert large["epochs_done"] == 2 and large["updates"] == 16
    assert large["test_acc"] == 60.0 and large["best_test_acc"] == 60.0
    assert large["train_test_gap"] == pytest.approx(35.0)
    assert large["train_seconds"] == pytest.approx(2.0)
    assert list(epochs_back.columns) == EPOCHS_SCHEMA.names
    assert len(epochs_back) == 3 + 2 + 2


def test_duplicate_epochs_keep_the_last_report_and_sort(tmp_path):
    # A restored trial re-reports epoch 2 with other numbers, and arrives out of order.
    history = [
        epoch(1, test_acc=70.0, seconds=1.0),
        epoch(2, test_acc=71.0, seconds=1.0),
        epoch(3, test_acc=72.0, seconds=1.0),
        epoch(2, test_acc=75.0, seconds=2.0),
    ]
    trials, epochs = build_tables([record("t", history=history)], study="s")
    assert list(epochs["epoch"]) == [1, 2, 3]
    assert list(epochs["test_acc"]) == [70.0, 75.0, 72.0]
    row = trials.iloc[0]
    assert row["epochs_done"] == 3
    assert row["test_acc"] == 72.0  # the last epoch, not the last report
    assert row["best_test_acc"] == 75.0
    assert row["train_seconds"] == pytest.approx(4.0)  # 1 + 2 + 1: the replaced report is gone
    write_tables(trials, epochs, tmp_path)
    assert list(read_tables(tmp_path)[1]["test_acc"]) == [70.0, 75.0, 72.0]


def test_tune_bookkeeping_keys_and_rows_are_ignored():
    # result.json rows carry Tune's own keys; a row without an epoch is not an epoch report.
    history = [
        {**epoch(1), "training_iteration": 1, "time_this_iter_s": 0.1, "done": False},
        {"training_iteration": 2, "done": True},
    ]
    trials, epochs = build_tables([record("t", history=history)], study="s")
    assert list(epochs.columns) == EPOCHS_SCHEMA.names
    assert epochs["epoch"].tolist() == [1]
    assert trials["epochs_done"].tolist() == [1]


def test_ghost_size_none_is_a_null_int64(tmp_path):
    recs = [record("bn", history=[epoch(1)]), record("gbn", ghost=64, history=[epoch(1)])]
    trials, epochs = build_tables(recs, study="s")
    assert str(trials["ghost_batch_size"].dtype) == "Int64"
    assert trials["ghost_batch_size"].isna().tolist() == [True, False]
    paths = write_tables(trials, epochs, tmp_path)
    column = pq.read_table(paths["trials"]).column("ghost_batch_size")
    assert column.type == pa.int64()
    assert column.null_count == 1
    assert column.to_pylist() == [None, 64]


def test_error_trial_with_empty_history():
    trials, epochs = build_tables(study_records(), study="s")
    row = trials.set_index("trial_id").loc["err0"]
    assert row["outcome"] == "error"
    assert row["error"] == "CUDA out of memory"
    assert pd.isna(row["mlflow_run_id"])
    assert row["epochs_done"] == 0 and row["updates"] == 0
    assert row["train_seconds"] == 0.0
    assert math.isnan(row["test_acc"]) and math.isnan(row["best_test_acc"])
    assert math.isnan(row["resolved_lr"])
    assert pd.isna(row["resolved_epochs"]) and pd.isna(row["resolved_decay_epochs"])
    # Unresolved, but the numeric knob is its own multiplier.
    assert row["multiplier"] == 1.0
    assert "err0" not in set(epochs["trial_id"])


def test_diverged_trial_has_nan_final_metrics_and_a_diverged_epoch(tmp_path):
    trials, epochs = build_tables(study_records(), study="s")
    row = trials.set_index("trial_id").loc["div0"]
    assert row["outcome"] == "diverged"
    assert math.isnan(row["test_acc"]) and math.isnan(row["weight_distance"])
    assert row["best_test_acc"] == 40.0
    div_epochs = epochs[epochs["trial_id"] == "div0"]
    assert div_epochs["diverged"].tolist() == [False, True]
    paths = write_tables(trials, epochs, tmp_path)
    # NaN is stored as a Parquet null.
    assert pq.read_table(paths["trials"]).column("test_acc").null_count == 2  # div0, err0


def test_multiplier_knob_has_one_spelling():
    recs = [
        record("a", regime_multiplier=4, resolved={}),
        record("b", regime_multiplier="4", resolved={}),
        record("c", regime_multiplier=4.0, resolved={}),
        record("d", regime_multiplier="Matched", resolved={}),
    ]
    trials, _ = build_tables(recs, study="s")
    assert trials["regime_multiplier"].tolist() == ["4.0", "4.0", "4.0", "matched"]
    assert trials["multiplier"].tolist()[:3] == [4.0, 4.0, 4.0]
    assert math.isnan(trials["multiplier"].iloc[3])  # "matched" needs the resolved regime


def test_empty_inputs_write_valid_files(tmp_path):
    trials, epochs = build_tables([], study="s")
    assert list(trials.columns) == TRIALS_SCHEMA.names and trials.empty
    paths = write_tables(trials, epochs, tmp_path)
    for name, schema in (("trials", TRIALS_SCHEMA), ("epochs", EPOCHS_SCHEMA)):
        table = pq.read_table(paths[name])
        assert table.num_rows == 0
        assert table.schema.equals(schema, check_metadata=True)
    trials_back, epochs_back = read_tables(tmp_path)
    pd.testing.assert_frame_equal(trials_back, trials)
    pd.testing.assert_frame_equal(epochs_back, epochs)


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="more than one record"):
        build_tables([record("x"), record("x")], study="s")
    with pytest.raises(ValueError, match="outcome 'finished'"):
        build_tables([record("x", outcome="finished")], study="s")
    with pytest.raises(ValueError, match="epoch 'one', not an integer"):
        build_tables([record("x", history=[epoch("one")])], study="s")
    with pytest.raises(ValueError, match="not an integer"):
        build_tables([record("x", ghost=32.5)], study="s")
    with pytest.raises(ValueError, match="study"):
        build_tables([], study="")


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    trials, epochs = build_tables(study_records(), study="s")
    paths = write_tables(trials, epochs, tmp_path)
    before = paths["trials"].read_bytes()

    bad = trials.copy()
    bad["batch_size"] = bad["batch_size"].astype(object)
    bad.loc[0, "batch_size"] = "not a number"
    with pytest.raises(pa.ArrowInvalid):
        write_parquet_atomic(bad, paths["trials"], TRIALS_SCHEMA)
    missing_required = trials.copy()
    missing_required["trial_id"] = None
    with pytest.raises(ValueError, match="non-nullable"):
        write_parquet_atomic(missing_required, paths["trials"], TRIALS_SCHEMA)

    assert paths["trials"].read_bytes() == before
    pd.testing.assert_frame_equal(read_tables(tmp_path)[0], trials)
    assert sorted(os.listdir(tmp_path)) == ["epochs.parquet", "trials.parquet"]


def test_failure_after_the_temp_file_is_written_leaves_no_temp(tmp_path):
    trials, _ = build_tables(study_records(), study="s")
    # The table is fully written to the temp file, then os.replace cannot put it over a
    # directory: the temp file must still go.
    target = tmp_path / "trials.parquet"
    target.mkdir()
    with pytest.raises(OSError):
        write_parquet_atomic(trials, target, TRIALS_SCHEMA)
    assert os.listdir(tmp_path) == ["trials.parquet"]
    assert target.is_dir()


def test_read_tables_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"trials\.parquet"):
        read_tables(tmp_path)


def test_docstring_documents_every_column():
    doc = schema_module.__doc__
    for schema in (TRIALS_SCHEMA, EPOCHS_SCHEMA):
        for field in schema:
            assert f"\n{field.name} " in doc, field.name
            assert field.metadata[b"description"]
    assert TRIALS_SCHEMA.field("ghost_batch_size").nullable
    assert TRIALS_SCHEMA.field("regime_multiplier").type == pa.string()
    assert TRIALS_SCHEMA.field("multiplier").type == pa.float64()
    assert not TRIALS_SCHEMA.field("trial_id").nullable


def test_epochs_columns_are_the_engine_metrics():
    assert EPOCHS_SCHEMA.names == ["study", "trial_id", *EPOCH_METRICS]
    assert EPOCH_METRICS[: len(METRIC_NAMES)] == METRIC_NAMES


def test_temp_file_of_an_interrupted_write_is_hidden_and_removed(tmp_path, monkeypatch):
    import pyarrow.parquet as parquet

    trials, _ = build_tables(study_records(), study="s")
    seen = []

    def interrupted(table, where, **kw):
        seen.append(where)
        raise KeyboardInterrupt

    monkeypatch.setattr(parquet, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_parquet_atomic(trials, tmp_path / "trials.parquet", TRIALS_SCHEMA)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".trials.")
    assert os.listdir(tmp_path) == []
