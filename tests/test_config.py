import numpy as np
import pytest

from tunegap.config import TrialConfig
from tunegap.regime import MATCHED


def test_round_trip_through_flat_dict():
    cfg = TrialConfig(workload="mnist1d-cnn", batch_size=2048, ghost_batch_size=32,
                      lr_exponent=0.5, regime_multiplier="matched", seed=3)
    flat = cfg.to_dict()
    assert flat["ghost_batch_size"] == 32 and flat["regime_multiplier"] == MATCHED
    assert TrialConfig.from_dict(flat) == cfg


def test_numpy_values_from_tune_grids_are_accepted():
    cfg = TrialConfig(workload="mnist1d-cnn", batch_size=np.int64(512),
                      ghost_batch_size=np.int64(32), lr_exponent=np.float64(0.5))
    assert type(cfg.batch_size) is int and type(cfg.ghost_batch_size) is int
    assert type(cfg.lr_exponent) is float


@pytest.mark.parametrize("word", [None, "none", "BN", "off"])
def test_plain_batchnorm_spellings(word):
    assert TrialConfig(workload="mnist1d-cnn", batch_size=64, ghost_batch_size=word).ghost_batch_size is None


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"ghost_batch_size": 0}, "ghost_batch_size"),
        ({"ghost_batch_size": "big"}, "ghost_batch_size"),
        ({"lr_exponent": float("nan")}, "lr_exponent"),
        ({"lr_exponent": -1}, "lr_exponent"),
        ({"regime_multiplier": float("inf")}, "regime_multiplier"),
        ({"regime_multiplier": "longer"}, "regime_multiplier"),
        ({"seed": -1}, "seed"),
        ({"epochs": 0}, "epochs"),
        ({"base_lr": -0.1}, "base_lr"),
        ({"device": "tpu"}, "device"),
        ({"workload": "imagenet-vit"}, "unknown workload"),
    ],
)
def test_bad_values_name_themselves(changes, word):
    flat = {"workload": "mnist1d-cnn", "batch_size": 64, **changes}
    with pytest.raises(ValueError, match=word):
        TrialConfig.from_dict(flat)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="unknown trial config key"):
        TrialConfig.from_dict({"workload": "mnist1d-cnn", "batch_size": 64, "ghost": 32})


def test_epoch_override_moves_decay_points_in_proportion():
    base = TrialConfig(workload="mnist1d-cnn", batch_size=64).regime()
    assert (base.epochs, base.decay_epochs) == (20, (10, 15))
    quick = TrialConfig(workload="mnist1d-cnn", batch_size=64, epochs=4).regime()
    assert (quick.epochs, quick.decay_epochs) == (4, (2, 3))
    one = TrialConfig(workload="mnist1d-cnn", batch_size=64, epochs=1).regime()
    assert one.decay_epochs == ()


def test_trial_knobs_reach_the_regime():
    cfg = TrialConfig(workload="mnist1d-cnn", batch_size=2048, lr_exponent=0.5,
                      regime_multiplier=MATCHED, base_lr=0.1)
    r = cfg.regime().resolve(cfg.batch_size, train_size=8000)
    assert r.lr == pytest.approx(0.1 * 8.0)
    assert r.epochs == 20 * 64
    assert r.updates_per_epoch == 4
