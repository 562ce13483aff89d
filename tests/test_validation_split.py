"""Best epoch without peeking: a validation split held out of the training set chooses it."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tunegap import RunOptions, Study, run_study
from tunegap.analysis.tables import best_epoch_test_acc, read_tables
from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.runner.report_text import best_epoch_warning


def config(data_dir, **kw) -> TrialConfig:
    return TrialConfig(**{"workload": "mnist1d-cnn", "batch_size": 512, "epochs": 1,
                          "device": "cpu", "data_dir": str(data_dir), **kw})


def test_the_held_out_samples_are_the_same_for_every_trial_and_never_trained_on(data_dir):
    whole = Engine(config(data_dir))
    held = Engine(config(data_dir, validation_fraction=0.1))
    other = Engine(config(data_dir, validation_fraction=0.1, seed=3, batch_size=256))
    n = whole.data.train_size
    assert held.data.train_size == n - round(0.1 * n)
    assert torch.equal(held.validation[0], other.validation[0])
    # Every training sample is either trained on or held out, never both.
    rows = torch.cat([held.data.x_train, held.validation[0]]).flatten(1)
    assert torch.equal(rows.unique(dim=0), whole.data.x_train.flatten(1).unique(dim=0))
    epoch = held.train_epoch()
    assert 0 <= epoch["val_acc"] <= 100 and math.isfinite(epoch["val_loss"])
    assert math.isnan(whole.train_epoch()["val_acc"])


def test_a_fraction_outside_its_range_is_refused():
    with pytest.raises(ValueError, match=r"validation_fraction 0\.7 is not allowed"):
        TrialConfig(workload="mnist1d-cnn", batch_size=64, validation_fraction=0.7)


def test_the_best_epoch_is_the_validation_best_and_its_test_accuracy_is_reported():
    history = [{"test_acc": 80.0, "val_acc": 70.0}, {"test_acc": 85.0, "val_acc": 79.0},
               {"test_acc": 88.0, "val_acc": 78.0}]
    assert best_epoch_test_acc(history) == 85.0  # not the test maximum, 88
    assert best_epoch_test_acc([{"test_acc": 80.0}, {"test_acc": 88.0}]) == 88.0
    assert best_epoch_warning("best", "clean", 0.1) == []
    assert best_epoch_warning("best", "authors")[0].startswith("warning: each trial is judged")


def test_a_clean_study_judging_the_best_epoch_holds_out_a_split(tmp_path, data_dir, ray_session):
    study = Study(name="best_clean", workload="mnist1d-cnn", epochs=2, baseline_epochs=2,
                  accuracy="best", grid={"batch_size": (512,)})
    assert study.knobs == {"validation_fraction": 0.1}
    final = Study(name="s", workload="mnist1d-cnn", grid={"batch_size": (512,)})
    assert "validation_fraction" not in final.knobs  # final-epoch judging trains on it all
    outcome = run_study(study, options=RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", data_dir=str(data_dir), quiet=True))
    trials, epochs = read_tables(outcome.run_dir)
    assert (trials["validation_fraction"] == 0.1).all() and len(trials) == 2
    for row in trials.itertuples():
        curve = epochs[epochs["trial_id"] == row.trial_id].reset_index(drop=True)
        assert curve["val_acc"].notna().all()
        assert row.best_test_acc == curve.loc[curve["val_acc"].idxmax(), "test_acc"]
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "10% of the training set held out" in summary
    assert "warning: each trial is judged by its best epoch" not in summary
    assert isinstance(outcome.cells, pd.DataFrame) and outcome.cells["accuracy"].eq("best").all()
