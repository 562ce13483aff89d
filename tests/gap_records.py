"""Trial records of a small gap-map study, shared by the analysis tests."""

import math

B0 = 32


def trial(tid, batch, ghost, alpha, rho, seed, acc, *, outcome="completed", baseline=False):
    """A record whose final test accuracy is `acc`, with distance = slope * ln(updates) + 1,
    the slope depending on the batch size (2 for the small batch, 1 for large ones)."""
    per_epoch = math.ceil(8000 / batch)
    slope = 2.0 if batch == B0 else 1.0
    history = []
    if outcome != "error":
        for e in (1, 2, 3):
            updates = e * per_epoch
            test_acc = acc - (3 - e)
            if outcome == "diverged" and e == 3:
                test_acc = math.nan
            history.append(
                {
                    "epoch": e,
                    "updates": updates,
                    "lr": 0.1,
                    "train_loss": 0.3 if not math.isnan(test_acc) else math.nan,
                    "train_acc": 99.0,
                    "test_loss": 0.4,
                    "test_acc": test_acc,
                    "train_test_gap": 99.0 - test_acc,
                    "weight_distance": slope * math.log(updates) + 1.0
                    if not math.isnan(test_acc)
                    else math.nan,
                    "seconds": 0.5,
                    "diverged": outcome == "diverged" and e == 3,
                }
            )
    return {
        "trial_id": tid,
        "mlflow_run_id": None,
        "is_baseline": baseline,
        "config": {
            "workload": "mnist1d-cnn",
            "batch_size": batch,
            "ghost_batch_size": ghost,
            "lr_exponent": alpha,
            "regime_multiplier": rho,
            "seed": seed,
            "epochs": None,
            "base_lr": None,
            "device": "cpu",
            "data_dir": None,
        },
        "resolved": {} if outcome == "error" else {"resolved_multiplier": 1.0},
        "outcome": outcome,
        "error": "boom" if outcome == "error" else None,
        "history": history,
    }


def study_records():
    return [
        # Baseline: 98, 97, 96 -> mean 97, sample std 1.
        trial("b0", 32, None, 0.0, 1.0, 0, 98.0, baseline=True),
        trial("b1", 32, None, 0.0, 1.0, 1, 97.0, baseline=True),
        trial("b2", 32, None, 0.0, 1.0, 2, 96.0, baseline=True),
        # Plain large batch: mean 81, gap 16.
        trial("lb0", 1024, None, 0.0, 1.0, 0, 80.0),
        trial("lb1", 1024, None, 0.0, 1.0, 1, 82.0),
        # All remedies: mean 96.3, gap 0.7: inconclusive at margin 0.5 on 2 seeds, closed at 3.
        trial("ra0", 1024, 32, 0.5, "matched", 0, 96.5),
        trial("ra1", 1024, 32, 0.5, "matched", 1, 96.1),
        # Every seed diverged.
        trial("dv0", 1024, 32, 1.0, 1.0, 0, 90.0, outcome="diverged"),
        trial("dv1", 1024, 32, 1.0, 1.0, 1, 90.0, outcome="diverged"),
        # One seed diverged, the other reached 90: gap 7 from the finite seed.
        trial("lr0", 1024, None, 0.5, 1.0, 0, 90.0),
        trial("lr1", 1024, None, 0.5, 1.0, 1, 50.0, outcome="diverged"),
        # Every seed errored.
        trial("er0", 1024, 128, 0.0, 1.0, 0, 0.0, outcome="error"),
        trial("er1", 1024, 128, 0.0, 1.0, 1, 0.0, outcome="error"),
    ]
