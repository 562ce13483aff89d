import math

import pytest

from tunegap.regime import MATCHED, Regime, parse_regime_multiplier


def paper_regime(**kw):
    base = dict(base_lr=0.1, base_batch_size=128, epochs=100, decay_epochs=(50, 75))
    base.update(kw)
    return Regime(**base)


def test_sqrt_rule_matches_the_authors_factor():
    r = paper_regime(lr_exponent=0.5).resolve(4096)
    assert r.lr == pytest.approx(0.1 * (4096 / 128) ** 0.5)
    assert r.lr == pytest.approx(0.1 * math.sqrt(32))


def test_linear_rule_and_no_scaling():
    assert paper_regime(lr_exponent=1).resolve(1024).lr == pytest.approx(0.8)
    assert paper_regime(lr_exponent=0).resolve(1024).lr == pytest.approx(0.1)
    # Smaller than B0 scales down.
    assert paper_regime(lr_exponent=1).resolve(64).lr == pytest.approx(0.05)


def test_matched_regime_is_ceil_of_batch_ratio_and_equalises_updates():
    regime = paper_regime(regime_multiplier=MATCHED)
    large = regime.resolve(4096, train_size=50_000)
    assert large.multiplier == 32
    assert large.epochs == 3200
    assert large.decay_epochs == (1600, 2400)
    small = regime.resolve(128, train_size=50_000)
    assert small.multiplier == 1 and small.epochs == 100
    assert large.total_updates == 3200 * math.ceil(50_000 / 4096)
    # Update counts agree up to the one partial (smaller) batch each large-batch epoch has.
    assert 0 <= large.total_updates - small.total_updates <= large.epochs
    # A ratio that is not an integer rounds up, as ceil() in the authors' code.
    assert regime.resolve(200).multiplier == 2


def test_numeric_multiplier_scales_epochs_and_decays():
    r = paper_regime(regime_multiplier=2.5).resolve(512)
    assert (r.epochs, r.decay_epochs) == (250, (125, 188))


def test_lr_schedule_step_decay():
    r = paper_regime().resolve(128, train_size=1280)
    assert r.lr_at(0) == pytest.approx(0.1)
    assert r.lr_at(49.9) == pytest.approx(0.1)
    assert r.lr_at(50) == pytest.approx(0.01)
    assert r.lr_at(80) == pytest.approx(0.001)


def test_warmup_rises_linearly_then_holds():
    r = paper_regime(warmup_epochs=5, lr_exponent=1).resolve(1024, train_size=10_240)
    peak = 0.8
    assert r.updates_per_epoch == 10
    first = r.lr_at(0)
    assert 0 < first < peak / 10
    assert r.lr_at(2.4) == pytest.approx(peak * 2.5 / 5)
    assert r.lr_at(5) == pytest.approx(peak)
    assert r.lr_at(30) == pytest.approx(peak)
    # Warm-up stays in epochs: the regime multiplier does not stretch it.
    rm = paper_regime(warmup_epochs=5, regime_multiplier=MATCHED).resolve(1024)
    assert rm.warmup_epochs == 5


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "fast", True, None])
def test_bad_multipliers_are_refused(bad):
    with pytest.raises(ValueError, match="regime_multiplier"):
        parse_regime_multiplier(bad)


def test_multiplier_words_and_numbers_parse():
    assert parse_regime_multiplier("Matched") == MATCHED
    assert parse_regime_multiplier("4") == 4.0
    assert parse_regime_multiplier(0.5) == 0.5


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"lr_exponent": -0.5}, "lr_exponent"),
        ({"lr_exponent": math.nan}, "lr_exponent"),
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"decay_epochs": (80, 40)}, "increasing"),
        ({"decay_epochs": (150,)}, "decay epoch"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"lr_factors": (0.1,)}, "2 decay epochs"),
        ({"lr_factors": (0.1, 0.0)}, "lr_factors value 0.0"),
        ({"lr_factors": (0.1, math.inf)}, "lr_factors"),
        ({"lr_factors": (0.1, None)}, "lr_factors"),
        ({"weight_decays": (None, -1.0)}, "weight_decays value -1.0"),
        ({"weight_decays": (0.0, 0.0, 0.0)}, "3 values for 2"),
    ],
)
def test_bad_regimes_are_refused(kw, word):
    with pytest.raises(ValueError, match=word):
        paper_regime(**kw)


def test_resolve_refuses_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        paper_regime().resolve(0)


def shallow_regime(**kw):
    """The authors' C1/C3 regime: lr 1e-3, up to 1e-2 at 60, 1e-3 at 120, 1e-4 at 180."""
    base = dict(
        base_lr=1e-3,
        base_batch_size=128,
        epochs=200,
        decay_epochs=(60, 120, 180),
        lr_factors=(10.0, 1.0, 0.1),
    )
    return Regime(**(base | kw))


def test_step_lr_factors_give_the_authors_schedule_including_a_rise():
    r = shallow_regime().resolve(128)
    expected = {0: 1e-3, 59.9: 1e-3, 60: 1e-2, 119: 1e-2, 120: 1e-3, 180: 1e-4, 199: 1e-4}
    for epoch, lr in expected.items():
        assert r.lr_at(epoch) == pytest.approx(lr), epoch


def test_step_lr_factors_move_with_regime_adaptation_and_scale_with_lr():
    r = shallow_regime(lr_exponent=0.5, regime_multiplier=MATCHED).resolve(512)
    assert r.decay_epochs == (240, 480, 720) and r.epochs == 800
    assert r.lr_at(239) == pytest.approx(2e-3)
    assert r.lr_at(240) == pytest.approx(2e-2)
    assert r.lr_at(720) == pytest.approx(2e-4)


def test_weight_decay_steps_switch_at_their_epoch_and_none_keeps_the_last():
    # AlexNet in the authors' code: wd 5e-4, then 0 from epoch 15.
    r = Regime(
        base_lr=1e-2,
        base_batch_size=256,
        epochs=30,
        decay_epochs=(10, 15, 20),
        weight_decay=5e-4,
        weight_decays=(None, 0.0, None),
    ).resolve(256)
    assert [r.weight_decay_at(e) for e in (0, 9, 10, 14, 15, 20, 29)] == [
        5e-4,
        5e-4,
        5e-4,
        5e-4,
        0.0,
        0.0,
        0.0,
    ]
    plain = paper_regime().resolve(128)
    assert {plain.weight_decay_at(e) for e in (0, 50, 99)} == {plain.weight_decays[0]}


def test_shortening_a_regime_merges_steps_without_changing_the_lr_after_them():
    # 200 -> 2 epochs: 60 and 120 both land on epoch 1, where the lr after both is 1e-3
    # and the weight decay switched off at 120 is off; 180 lands on 2, the end: dropped.
    short = shallow_regime(weight_decays=(None, 0.0, None)).with_epochs(2)
    assert short.decay_epochs == (1,)
    r = short.resolve(128)
    assert r.lr_at(0) == pytest.approx(1e-3) and r.weight_decay_at(0) == 1e-4
    assert r.lr_at(1) == pytest.approx(1e-3) and r.weight_decay_at(1) == 0.0
    # 200 -> 3 epochs keeps the rise: 1e-2 from epoch 1, 1e-3 from epoch 2.
    three = shallow_regime().with_epochs(3).resolve(128)
    assert three.decay_epochs == (1, 2)
    assert [three.lr_at(e) for e in (0, 1, 2)] == pytest.approx([1e-3, 1e-2, 1e-3])
    # Geometric decays keep their compound factor when they merge, as if both happened.
    merged = paper_regime().with_epochs(3)  # decays 50 and 75 of 100 both land on 2
    assert merged.decay_epochs == (2,)
    assert merged.resolve(128).lr_at(2) == pytest.approx(0.001)


def test_resolved_schedules_are_logged_as_epoch_value_text():
    r = shallow_regime(lr_exponent=0.5, regime_multiplier=2).resolve(512)
    logged = r.as_dict()
    assert logged["resolved_lr_schedule"] == "0:0.002,120:0.02,240:0.002,360:0.0002"
    assert logged["resolved_weight_decay_schedule"] == "0:0.0001"
    alexnet = Regime(
        base_lr=1e-2,
        base_batch_size=256,
        epochs=30,
        decay_epochs=(10, 15),
        lr_factors=(0.5, 0.1),
        weight_decay=5e-4,
        weight_decays=(None, 0.0),
    ).resolve(256)
    assert alexnet.as_dict()["resolved_weight_decay_schedule"] == "0:0.0005,15:0"


def test_logged_schedule_shows_collided_steps_once_and_leaves_out_steps_at_the_end():
    # 200 epochs x 0.01 = 2: decays 60 and 120 both round to 1, 180 to 2 (the end).
    r = shallow_regime(regime_multiplier=0.01).resolve(128)
    assert r.epochs == 2
    assert r.as_dict()["resolved_lr_schedule"] == "0:0.001"  # 1e-2 then 1e-3 at epoch 1
    assert r.lr_at(1) == pytest.approx(1e-3)


def test_step_values_must_be_a_sequence():
    with pytest.raises(ValueError, match=r"lr_factors 0\.5 is not allowed: give a tuple"):
        paper_regime(lr_factors=0.5)
