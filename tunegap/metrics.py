"""The names of the per-epoch metrics, in one torch-free place.

The engine produces them, the tracking callback logs them and the tables store them; keeping
the list here lets tracking and results import it without importing torch and the models.
"""

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
)
# Probes that only run when asked: NaN in an epoch that did not measure them.
OPTIONAL_METRICS: tuple[str, ...] = ("noise_scale", "sharpness")
