"""The schema of a study's result tables, `trials.parquet` and `epochs.parquet`.

`tunegap.analysis.tables` builds, writes and reads them: after a study, the study runner
gathers one plain record per trial and calls `build_tables(records, study=...)`, then
`write_tables(...)`; `read_tables(out_dir)` gives the same two DataFrames back. Both files
carry the schemas below exactly (`TRIALS_SCHEMA`, `EPOCHS_SCHEMA`), with each column's meaning
stored as field metadata (`description`), so `pyarrow.parquet.read_schema(path)` documents a
file on its own. Files are replaced atomically: a crash leaves either the old file or the
new one, never half of one.

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
optimizer              string  a registered optimizer (`tunegap.optim.OPTIMIZERS`: the built-in
                               ones or a plugin's, `tunegap.register_optimizer`)
momentum               float64 momentum as used (Adam's beta1); null if never resolved
weight_decay           float64 weight decay as used before the first decay epoch; null
                               if never resolved
no_decay_bn_bias       bool    BatchNorm parameters and biases had no weight decay
warmup_epochs          float64 linear warm-up epochs as used; null if never resolved
warmup_start_factor    float64 the warm-up's first lr as a fraction of the lr
scale_warmup           bool    the warm-up was multiplied by the regime multiplier too
schedule               string  step, cosine, linear or constant
label_smoothing        float64 label smoothing of the training loss
train_size             int64   training samples used (a fixed subset where asked); null if
                               never resolved
validation_fraction    float64 share of the training set held out to pick the best epoch
                               (0: none; trained on the rest)
max_updates            int64   the budget of weight updates; null = a regime of epochs
bn_weight_init         string  "one" or "uniform"; null if never resolved
zero_init_residual     bool    each residual block's last BatchNorm weight started at 0
protocol               string  "clean" or "authors" (bigBatch's loop and pipelines)
resolved_lr            float64 learning rate after LR scaling, before the first decay epoch
                               (and after warm-up); null if never resolved
resolved_epochs        int64   epochs after regime adaptation; null if never resolved
resolved_decay_epochs  string  LR-decay epochs after adaptation, comma separated ("10,15")
resolved_total_updates int64   planned weight updates of the whole regime; null if unknown
outcome                string  "completed", "diverged" (non-finite loss), "stopped" (a
                               scheduler ended it before its last epoch) or "error"
error                  string  the error message of an "error" trial; null otherwise
epochs_done            int64   last epoch reported (0 when none was)
updates                int64   weight updates made up to the last reported epoch (0 if none)
train_loss             float64 last epoch's training loss (mean over its batches)
train_acc              float64 last epoch's training accuracy, percent (training mode)
test_loss              float64 last epoch's test loss
test_acc               float64 last epoch's test accuracy, percent; NaN when diverged
train_test_gap         float64 last epoch's train_acc - test_acc, points
weight_distance        float64 last epoch's ||w_t - w_0|| over all weights
best_test_acc          float64 test accuracy at the best epoch: the epoch of highest val_acc
                               where a validation split was held out, else the highest
                               test accuracy itself (optimistic); NaN if none
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
val_loss        float64 loss on the validation split held out of the training set; null
                        without one
val_acc         float64 accuracy on that validation split, percent; null without one
diverged        bool    the loss or the weights went non-finite in this epoch
=============== ======= ==================================================================

A trial restored from a checkpoint re-reports some epochs: the last report of each epoch
wins, and rows are sorted by trial (in the order of the records) and then by epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

__all__ = ["EPOCHS_SCHEMA", "SCHEMA_VERSION", "TRIALS_SCHEMA"]

SCHEMA_VERSION = "1"

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
    ("optimizer", pa.string(), False, "a registered optimizer name"),
    ("momentum", pa.float64(), True, "momentum as used (Adam's beta1)"),
    ("weight_decay", pa.float64(), True, "weight decay before the first decay epoch"),
    ("no_decay_bn_bias", pa.bool_(), False, "no weight decay on BatchNorm and biases"),
    ("warmup_epochs", pa.float64(), True, "linear warm-up epochs as used"),
    ("warmup_start_factor", pa.float64(), False, "warm-up's first lr / lr"),
    ("scale_warmup", pa.bool_(), False, "warm-up multiplied by the regime multiplier"),
    ("schedule", pa.string(), False, "step, cosine, linear or constant"),
    ("label_smoothing", pa.float64(), False, "label smoothing of the training loss"),
    ("train_size", pa.int64(), True, "training samples used"),
    ("validation_fraction", pa.float64(), False, "share of the training set held out"),
    ("max_updates", pa.int64(), True, "budget of weight updates; null = epochs"),
    ("bn_weight_init", pa.string(), True, "one or uniform"),
    ("zero_init_residual", pa.bool_(), False, "residual blocks' last BN weight started at 0"),
    ("protocol", pa.string(), False, "clean or authors"),
    ("resolved_lr", pa.float64(), True, "learning rate after LR scaling, before any decay"),
    ("resolved_epochs", pa.int64(), True, "epochs after regime adaptation"),
    ("resolved_decay_epochs", pa.string(), True, "LR-decay epochs, comma separated"),
    ("resolved_total_updates", pa.int64(), True, "planned weight updates of the regime"),
    ("outcome", pa.string(), False, "completed, diverged, stopped or error"),
    ("error", pa.string(), True, "error message of an error trial"),
    ("epochs_done", pa.int64(), False, "last epoch reported (0 if none)"),
    ("updates", pa.int64(), False, "weight updates up to the last reported epoch"),
    ("train_loss", pa.float64(), True, "last epoch's training loss"),
    ("train_acc", pa.float64(), True, "last epoch's training accuracy, percent"),
    ("test_loss", pa.float64(), True, "last epoch's test loss"),
    ("test_acc", pa.float64(), True, "last epoch's test accuracy, percent"),
    ("train_test_gap", pa.float64(), True, "last epoch's train_acc - test_acc, points"),
    ("weight_distance", pa.float64(), True, "last epoch's ||w_t - w_0||"),
    ("best_test_acc", pa.float64(), True,
     "test accuracy at the best epoch (by val_acc where held out, else by test_acc)"),
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
    ("val_loss", pa.float64(), True, "loss on the held-out validation split"),
    ("val_acc", pa.float64(), True, "accuracy on the held-out validation split, percent"),
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
