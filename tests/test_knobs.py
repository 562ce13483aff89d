"""Each training knob of issue 13 does what its name says, on real MNIST-1D training; each
bad value is one line and exit status 2 on `tunegap train`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.gbn import GhostBatchNorm
from tunegap.optim import LARS
from tunegap.study import Study
from tunegap.train import main
from tunegap.trial_data import load_workload_data


def make(data_dir, **kw) -> TrialConfig:
    base = dict(workload="mnist1d-cnn", batch_size=512, epochs=2, device="cpu",
                data_dir=str(data_dir))
    return TrialConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(data_dir):
    return load_workload_data(make(data_dir))


def test_optimizer_names_the_class_built(data, data_dir):
    kinds = {"sgd": torch.optim.SGD, "nesterov": torch.optim.SGD, "adam": torch.optim.Adam,
             "adamw": torch.optim.AdamW, "lars": LARS}
    for name, kind in kinds.items():
        engine = Engine(make(data_dir, optimizer=name), data=data)
        assert type(engine.optimizer) is kind
    assert Engine(make(data_dir, optimizer="nesterov"), data=data).optimizer.defaults["nesterov"]


def test_momentum_overrides_the_workload_and_is_adams_beta1(data, data_dir):
    sgd = Engine(make(data_dir), data=data).optimizer
    assert sgd.param_groups[0]["momentum"] == 0.9  # the workload's
    assert Engine(make(data_dir, momentum=0.5), data=data).optimizer.param_groups[0]["momentum"] == 0.5
    adam = Engine(make(data_dir, optimizer="adam", momentum=0.8), data=data).optimizer
    assert adam.param_groups[0]["betas"][0] == 0.8


def test_weight_decay_override_holds_all_run_and_bn_bias_can_be_left_out(data, data_dir):
    config = make(data_dir, weight_decay=1e-3, no_decay_bn_bias=True)
    resolved = config.regime().resolve(512, train_size=8000)
    assert set(resolved.weight_decays) == {1e-3}
    engine = Engine(config, data=data)
    engine.train_epoch()
    groups = {g["no_decay"]: g for g in engine.optimizer.param_groups}
    assert groups[False]["weight_decay"] == 1e-3 and groups[True]["weight_decay"] == 0.0
    norm_params = {id(p) for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm1d)
                   for p in m.parameters()}
    assert norm_params and norm_params <= {id(p) for p in groups[True]["params"]}


def test_warmup_starts_at_its_factor_and_can_scale_with_the_regime(data_dir):
    config = make(data_dir, warmup_epochs=2, warmup_start_factor=0.1, epochs=20)
    r = config.regime().resolve(512, train_size=8000)  # 16 updates an epoch
    assert r.lr_at(0) == pytest.approx(r.lr * (0.1 + 0.9 * (1 / 16) / 2))
    assert r.lr_at(1) == pytest.approx(r.lr * (0.1 + 0.9 * (1 + 1 / 16) / 2))
    assert r.lr_at(2) == pytest.approx(r.lr)
    fixed = make(data_dir, warmup_epochs=1, regime_multiplier=4).regime().resolve(512)
    scaled = make(data_dir, warmup_epochs=1, regime_multiplier=4, scale_warmup=True)
    assert fixed.warmup_epochs == 1 and scaled.regime().resolve(512).warmup_epochs == 4


def test_schedules_follow_their_shapes(data_dir):
    def lr_at(schedule, t):
        r = make(data_dir, schedule=schedule, epochs=20).regime().resolve(512, train_size=8000)
        return r.lr_at(t) / r.lr

    assert lr_at("cosine", 10) == pytest.approx(0.5) and lr_at("cosine", 20) == pytest.approx(0)
    assert lr_at("linear", 5) == pytest.approx(0.75) and lr_at("linear", 20) == pytest.approx(0)
    assert lr_at("constant", 19.9) == 1.0
    assert lr_at("step", 19.9) == pytest.approx(0.01)  # the workload's two decays by 10


def test_label_smoothing_is_in_the_training_loss(data, data_dir):
    engine = Engine(make(data_dir, label_smoothing=0.2), data=data)
    x, y = data.x_train[:512], data.y_train[:512]
    with torch.no_grad():
        engine.model.train()
        expected = F.cross_entropy(engine.model(x), y, label_smoothing=0.2)
    torch.manual_seed(0)
    loss, _ = engine.train_step(x, y, lr=0.0, step=0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():
        plain = F.cross_entropy(engine.model(x), y)
    assert float(loss) != pytest.approx(float(plain), rel=1e-3)


def test_train_size_is_one_fixed_subset_for_every_trial(data, data_dir):
    a = Engine(make(data_dir, train_size=2000, seed=0), data=data)
    b = Engine(make(data_dir, train_size=2000, seed=3), data=data)
    assert a.data.train_size == 2000 and a.resolved.updates_per_epoch == 4
    assert torch.equal(a.data.x_train, b.data.x_train)
    assert a.resolved_params()["resolved_train_size"] == 2000
    with pytest.raises(ValueError, match="train_size 9000"):
        Engine(make(data_dir, train_size=9000), data=data)


def test_max_updates_stops_mid_epoch_with_the_decay_points_in_place(data, data_dir):
    engine = Engine(make(data_dir, max_updates=40, epochs=20), data=data)
    r = engine.resolved
    # 20 epochs decaying at 10 and 15: the budget of 40 updates (2.5 epochs) keeps halves.
    assert r.decay_epochs == (1.25, 1.875) and r.total_updates == 40
    history = engine.run()
    assert [m["updates"] for m in history] == [16, 32, 40] and engine.done


def test_bn_weight_init_uniform_and_the_authors_default(data, data_dir):
    engine = Engine(make(data_dir, bn_weight_init="uniform"), data=data)
    weights = torch.cat([m.weight.detach() for m in engine.model.modules()
                         if isinstance(m, torch.nn.BatchNorm1d)])
    assert float(weights.min()) > 0 and float(weights.max()) < 1 and weights.std() > 0
    assert make(data_dir).resolved_bn_weight_init() == "one"
    assert make(data_dir, protocol="authors").resolved_bn_weight_init() == "uniform"


def test_zero_init_residual_needs_residual_blocks(data_dir):
    with pytest.raises(ValueError, match="zero_init_residual is not allowed for model 'cnn1d'"):
        make(data_dir, zero_init_residual=True)


def test_authors_protocol_resets_momentum_every_epoch(data, data_dir):
    engine = Engine(make(data_dir, protocol="authors", epochs=3), data=data)
    buffers_at_epoch_start = []
    seen_epoch = []

    def note(module, args):
        if module.training and engine.epoch not in seen_epoch:
            seen_epoch.append(engine.epoch)
            buffers_at_epoch_start.append(len(engine.optimizer.state))

    engine.model.register_forward_pre_hook(note)
    engine.run()
    assert buffers_at_epoch_start == [0, 0, 0]
    clean = Engine(make(data_dir, epochs=2), data=data)
    clean.train_epoch()
    assert len(clean.optimizer.state) > 0  # the clean loop keeps them across epochs


def test_authors_protocol_scaling_reference_distance_and_ghost_split(data, data_dir):
    plain = make(data_dir, protocol="authors", lr_exponent=0.5, batch_size=1024)
    base_lr = plain.get_workload().regime.base_lr
    assert plain.regime().resolve(1024).lr == pytest.approx(base_lr * math.sqrt(1024 / 256))
    ghost = make(data_dir, protocol="authors", lr_exponent=0.5, batch_size=1024,
                 ghost_batch_size=32, regime_multiplier="matched")
    assert ghost.regime().resolve(1024).lr == pytest.approx(base_lr * math.sqrt(1024 / 32))
    assert ghost.regime().resolve(1024).multiplier == 32
    engine = Engine(make(data_dir, protocol="authors", ghost_batch_size=32), data=data)
    assert {m.split for m in engine.model.modules() if isinstance(m, GhostBatchNorm)} == {"chunk"}
    engine.train_epoch()
    first, first0 = next(engine.model.parameters()), engine.initial_params[0]
    assert engine.weight_distance() == pytest.approx(float((first - first0).norm()), rel=1e-5)


def test_studies_carry_knobs_to_every_trial_and_the_authors_judge_best_epochs():
    study = Study(name="k", workload="mnist1d-cnn", grid={"batch_size": (256,)},
                  knobs={"optimizer": "adam", "train_size": 2000}, protocol="authors")
    assert {(c.optimizer, c.train_size, c.protocol) for c in study.trial_configs()} == {
        ("adam", 2000, "authors")}
    assert study.accuracy == "best" and study.describe()["knobs"] == {"optimizer": "adam",
                                                                     "train_size": 2000}
    assert "knobs" not in Study(name="k", workload="mnist1d-cnn",
                                grid={"batch_size": (256,)}).describe()


BAD_TRAIN_VALUES = [
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--momentum", "1.5"], "momentum 1.5"),
    (["--momentum", "x"], "--momentum"),
    (["--weight-decay", "-1"], "weight_decay -1"),
    (["--warmup-epochs", "-2"], "warmup_epochs -2"),
    (["--warmup-start-factor", "2"], "warmup_start_factor 2"),
    (["--schedule", "exponential"], "--schedule"),
    (["--label-smoothing", "1"], "label_smoothing 1"),
    (["--train-size", "0"], "train_size 0"),
    (["--train-size", "9000"], "train_size 9000"),
    (["--train-size", "100"], "batch size 256 is larger than train_size 100"),
    (["--max-updates", "0"], "max_updates 0"),
    (["--max-updates", "10", "--regime-multiplier", "4"], "with max_updates"),
    (["--bn-weight-init", "zero"], "--bn-weight-init"),
    (["--zero-init-residual"], "zero_init_residual"),
    (["--protocol", "bigbatch"], "--protocol"),
    (["--optimizer", "nesterov", "--momentum", "0"], "nesterov"),
]


@pytest.mark.parametrize(("extra", "named"), BAD_TRAIN_VALUES)
def test_bad_knob_values_are_one_line_and_exit_2(extra, named, data_dir, capsys):
    argv = ["--workload", "mnist1d-cnn", "--batch-size", "256", "--epochs", "1",
            "--data-dir", str(data_dir), *extra]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert "Traceback" not in err


def test_a_b0_cell_with_another_optimizer_is_not_the_baseline():
    from tunegap.study import is_baseline

    study = Study(name="k", workload="mnist1d-cnn", grid={"batch_size": (128,)},
                  points=({"batch_size": 32, "optimizer": "adam"},))
    flags = {(c.batch_size, c.optimizer): is_baseline(c.to_dict(), study.trial_settings())
             for c in study.trial_configs()}
    assert flags == {(32, "sgd"): True, (128, "sgd"): False, (32, "adam"): False}
    shared = Study(name="k", workload="mnist1d-cnn", grid={"batch_size": (128,)},
                   knobs={"optimizer": "adam"})
    base = shared.baseline_config(0).to_dict()
    assert is_baseline(base, shared.trial_settings()) and not is_baseline(base)


@pytest.mark.parametrize(("space", "named"), [
    ({"optimizer": (0, 1)}, "'optimizer'"),
    ({"weight_decay": (0.0, 1e-3)}, "0 < low"),
    ({"momentum": (0.9, 0.5)}, "momentum"),
    ({"label_smoothing": ("a", "b")}, "label_smoothing"),
])
def test_optuna_ranges_of_the_new_knobs_are_checked(space, named):
    from tunegap.study import StudyError

    with pytest.raises(StudyError, match=named):
        Study(name="k", workload="mnist1d-cnn", grid={"batch_size": (128,)}, search="optuna",
              optuna_space=space)
    Study(name="k", workload="mnist1d-cnn", grid={"batch_size": (128,)}, search="optuna",
          optuna_space={"momentum": (0.5, 0.99), "weight_decay": (1e-5, 1e-3)})
