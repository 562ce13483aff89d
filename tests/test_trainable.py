"""GapTrainable through Tune's own save/restore path (no cluster needed for the class API)."""

import tempfile

import pytest

from tunegap.runner.trainable import GapTrainable, trial_resources


def config(data_dir, **kw):
    base = {"workload": "mnist1d-cnn", "batch_size": 512, "ghost_batch_size": 64,
            "lr_exponent": 0.5, "seed": 1, "epochs": 4, "device": "cpu",
            "data_dir": str(data_dir)}
    base.update(kw)
    return base


def strip(result):
    return {k: result[k] for k in ("epoch", "updates", "lr", "train_loss", "train_acc",
                                   "test_loss", "test_acc", "weight_distance", "done")}


def test_restored_trial_reports_what_an_uninterrupted_one_does(data_dir):
    straight = GapTrainable(config=config(data_dir))
    expected = [strip(straight.train()) for _ in range(4)]
    assert expected[-1]["done"] and not expected[-2]["done"]
    straight.stop()

    first = GapTrainable(config=config(data_dir))
    first.train()
    first.train()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = first.save(tmp)
        first.stop()
        resumed = GapTrainable(config=config(data_dir))
        resumed.restore(checkpoint)
        got = [strip(resumed.train()) for _ in range(2)]
        resumed.stop()
    assert got == expected[2:]


def test_results_carry_the_resolved_regime(data_dir):
    trial = GapTrainable(config=config(data_dir, regime_multiplier="matched", epochs=1))
    result = trial.train()
    trial.stop()
    assert result["resolved_multiplier"] == 16.0
    assert result["resolved_epochs"] == 16
    assert result["resolved_lr"] == pytest.approx(0.05 * 4)
    assert result["done"] is False


def test_bad_config_fails_setup_with_the_reason(data_dir):
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GapTrainable(config=config(data_dir, ghost_batch_size=-2))


def test_resources_follow_the_workload_and_device():
    assert trial_resources({"workload": "mnist1d-cnn", "batch_size": 64}) == {"cpu": 1.0, "gpu": 0.0}
    assert trial_resources({"workload": "mnist1d-cnn", "batch_size": 64, "device": "cpu"},
                           gpus_per_trial=0.25)["gpu"] == 0.0
    assert trial_resources({"workload": "mnist1d-cnn", "batch_size": 64},
                           gpus_per_trial=0.25)["gpu"] == 0.25
