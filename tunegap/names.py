"""The vocabulary in one torch-free place: knob, metric, outcome and status names.

The engine produces the metrics, Tune carries them, tracking logs them and the tables store
them; studies search the knobs and the analysis groups cells by them. Every module takes
these names from here, so none can drift from another (and tracking, tables and the CLI
can import them without importing torch).
"""

from __future__ import annotations

# The knobs beyond the paper's four (below). Their resolved values are columns of the
# trials table; one tells cells apart only in a table where it takes several values.
TRAINING_KNOBS: tuple[str, ...] = (
    "optimizer",
    "momentum",
    "weight_decay",
    "no_decay_bn_bias",
    "warmup_epochs",
    "warmup_start_factor",
    "scale_warmup",
    "schedule",
    "label_smoothing",
    "train_size",
    "validation_fraction",
    "max_updates",
    "bn_weight_init",
    "zero_init_residual",
)
# Knobs a study may put in a grid or an Optuna space (all are `TrialConfig` fields).
SEARCH_KNOBS: tuple[str, ...] = (
    "batch_size",
    "ghost_batch_size",
    "lr_exponent",
    "regime_multiplier",
    "base_lr",
    *TRAINING_KNOBS,
)
# Set per study (`Study.protocol`), never searched: "clean" or "authors".
PROTOCOL = "protocol"
# Probe settings of a trial: they change what is measured, never the training.
INSTRUMENTS: tuple[str, ...] = ("noise_scale_every", "sharpness_every")

# The per-epoch metrics of a trial, in the order the engine reports them.
METRIC_NAMES: tuple[str, ...] = (
    "epoch",
    "updates",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "train_test_gap",
    "weight_distance",
    "seconds",
    "noise_scale",
    "sharpness",
    "val_loss",
    "val_acc",
)
# Measured only when asked (probes, a validation split): NaN in an epoch without them.
OPTIONAL_METRICS: tuple[str, ...] = ("noise_scale", "sharpness", "val_loss", "val_acc")
# Set in an epoch's result when the loss or the weights went non-finite.
DIVERGED = "diverged"
# What a trial records per epoch: the epochs table's columns after its keys, and the metrics
# each MLflow child run logs per step.
EPOCH_METRICS: tuple[str, ...] = (*METRIC_NAMES, DIVERGED)
# Keys of a Tune result that carry the resolved regime (the same in every epoch).
RESOLVED_PREFIX = "resolved_"

# The columns of the paper's Table 1: the small batch, the large batch, then +LR (sqrt LR
# scaling), +GBN (ghost batches) and +RA (regime adaptation), each added to the one before.
TABLE1_COLUMNS: tuple[str, ...] = ("SB", "LB", "+LR", "+GBN", "+RA")

# How a trial ended. "stopped": a scheduler (`--scheduler asha|median`) ended it before its
# last epoch; it is kept in the tables but never counts as a seed of its cell.
COMPLETED, ERROR, STOPPED = "completed", "error", "stopped"
OUTCOMES: tuple[str, ...] = (COMPLETED, DIVERGED, STOPPED, ERROR)


def ended_outcome(*, diverged: bool, epochs_done: float | None,
                  planned_epochs: float | None) -> str:
    """How a trial Tune ended without an error finished: diverged; stopped, when it ended
    before the last epoch of its regime (a scheduler's doing: Tune reports such a trial as
    TERMINATED, like one that ran to the end); else completed."""
    if diverged:
        return DIVERGED
    if epochs_done is not None and planned_epochs is not None and epochs_done < planned_epochs:
        return STOPPED
    return COMPLETED
