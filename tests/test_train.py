"""The engine on real MNIST-1D: determinism, checkpoint-exact restore, divergence, the CLI."""

import io
import math
import subprocess
import sys

import pytest
import torch
from study_procs import HANG_S

from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.names import METRIC_NAMES
from tunegap.train import main


def make_config(data_dir, **kw):
    base = dict(workload="mnist1d-cnn", batch_size=512, epochs=3, device="cpu",
                data_dir=str(data_dir))
    base.update(kw)
    return TrialConfig(**base)


def without_time(m):
    return {k: v for k, v in m.items() if k != "seconds"}


def test_epoch_metrics_have_every_name_and_count_updates(data_dir):
    engine = Engine(make_config(data_dir, batch_size=1000))
    m = engine.train_epoch()
    assert set(METRIC_NAMES) <= set(m)
    assert m["epoch"] == 1 and m["updates"] == 8  # 8000 training samples / 1000
    assert 0 <= m["test_acc"] <= 100 and m["weight_distance"] > 0
    assert m["train_test_gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
    assert m["diverged"] is False


def test_same_seed_same_run_other_seed_other_run(data_dir):
    a = Engine(make_config(data_dir, epochs=2)).run()
    b = Engine(make_config(data_dir, epochs=2)).run()
    c = Engine(make_config(data_dir, epochs=2, seed=1)).run()
    assert [without_time(m) for m in a] == [without_time(m) for m in b]
    assert a[-1]["test_loss"] != c[-1]["test_loss"]


def test_restore_from_checkpoint_continues_exactly(data_dir):
    config = make_config(data_dir, batch_size=256, ghost_batch_size=32, lr_exponent=0.5)
    straight = Engine(config).run()

    first = Engine(config)
    first.train_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    buffer.seek(0)
    resumed = Engine(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    rest = resumed.run()
    assert [without_time(m) for m in rest] == [without_time(m) for m in straight[1:]]


def test_checkpoint_of_another_config_is_refused(data_dir):
    state = Engine(make_config(data_dir)).state_dict()
    with pytest.raises(ValueError, match="different trial config"):
        Engine(make_config(data_dir, seed=5)).load_state_dict(state)


def test_regime_drives_lr_and_length(data_dir):
    engine = Engine(make_config(data_dir, batch_size=2048, lr_exponent=0.5,
                                regime_multiplier="matched", epochs=2))
    assert engine.resolved.epochs == 2 * 64
    assert engine.resolved.lr == pytest.approx(0.05 * 8)
    assert engine.resolved.decay_epochs == (64,)


def test_ghost_batch_size_swaps_every_batchnorm(data_dir):
    engine = Engine(make_config(data_dir, ghost_batch_size=64))
    kinds = {type(m).__name__ for m in engine.model.modules() if "BatchNorm" in type(m).__name__}
    assert kinds and all("Ghost" in k for k in kinds)
    plain = Engine(make_config(data_dir))
    assert {type(m).__name__ for m in plain.model.modules()} >= {"BatchNorm1d"}


def test_non_finite_loss_ends_the_run_as_diverged(data_dir):
    # lr * weight_decay >> 2 makes the weights grow geometrically until they overflow.
    engine = Engine(make_config(data_dir, base_lr=1e6, epochs=5))
    history = engine.run()
    assert engine.diverged and engine.done
    assert history[-1]["diverged"] is True
    assert len(history) < 5
    assert math.isnan(history[-1]["test_acc"])


def test_training_improves_on_chance(data_dir):
    last = Engine(make_config(data_dir, batch_size=128, epochs=2)).run()[-1]
    assert last["test_acc"] > 40  # chance is 10%


BAD_ARGS = [
    (["--batch-size", "0"], "batch_size 0"),
    (["--batch-size", "-8"], "batch_size -8"),
    (["--batch-size", "2.5"], "'2.5'"),
    (["--batch-size", "many"], "'many'"),
    (["--batch-size", "64", "--ghost-batch-size", "0"], "ghost_batch_size 0"),
    (["--batch-size", "64", "--ghost-batch-size", "-32"], "ghost_batch_size -32"),
    (["--batch-size", "64", "--ghost-batch-size", "half"], "'half'"),
    (["--batch-size", "64", "--lr-exponent", "nan"], "lr_exponent nan"),
    (["--batch-size", "64", "--lr-exponent", "-0.5"], "lr_exponent -0.5"),
    (["--batch-size", "64", "--lr-exponent", "inf"], "lr_exponent inf"),
    (["--batch-size", "64", "--regime-multiplier", "0"], "regime_multiplier 0"),
    (["--batch-size", "64", "--regime-multiplier", "-2"], "regime_multiplier -2"),
    (["--batch-size", "64", "--regime-multiplier", "inf"], "regime_multiplier inf"),
    (["--batch-size", "64", "--regime-multiplier", "forever"], "'forever'"),
    (["--batch-size", "64", "--workload", "cifar10-vit"], "unknown workload 'cifar10-vit'"),
    (["--batch-size", "64", "--seed", "-1"], "seed -1"),
    (["--batch-size", "64", "--device", "tpu"], "'tpu'"),
    (["--batch-size", "64", "--ghost-batch-size", "64"], "--ghost-batch-size 64 is not smaller"),
    (["--batch-size", "16384"], "batch size 16384 is larger than the 8000 training examples"),
    (["--batch-size", "64", "--workload", "mnist-f1", "--data-dir", "/nonexistent/tunegap"],
     "MNIST"),
]


@pytest.mark.parametrize("argv, named", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_cli_input_is_one_line_and_exit_2(argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    code = stop.value.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""  # nothing trained, nothing printed
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], err


def test_cli_runs_one_config_end_to_end(data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "tunegap.train", "--batch-size", "2048", "--ghost-batch-size",
         "32", "--lr-exponent", "0.5", "--regime-multiplier", "matched", "--epochs", "1",
         "--device", "cpu", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=HANG_S,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("# mnist1d-cnn B=2048 ghost=32")
    assert sum(line.startswith("epoch") for line in lines) == 64
    assert lines[-1].startswith("# completed: test_acc")


def test_cli_bad_input_as_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "tunegap.train", "--batch-size", "64", "--ghost-batch-size", "0"],
        capture_output=True, text=True, timeout=HANG_S,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bf16_autocast_trains_on_cpu_close_to_fp32(data_dir):
    fp32 = Engine(make_config(data_dir, batch_size=1000, epochs=2, ghost_batch_size=100)).run()
    bf16_engine = Engine(make_config(data_dir, batch_size=1000, epochs=2, ghost_batch_size=100,
                                     precision="bf16"))
    assert bf16_engine.use_bf16 and not bf16_engine.channels_last
    bf16 = bf16_engine.run()
    assert math.isfinite(bf16[-1]["train_loss"])
    # Same maths at lower precision: the curves stay close, but are not identical.
    assert abs(bf16[-1]["test_acc"] - fp32[-1]["test_acc"]) < 10
    assert bf16[-1]["train_loss"] != fp32[-1]["train_loss"]


def test_fp32_is_the_cpu_default_and_bad_precision_is_refused(data_dir):
    assert not Engine(make_config(data_dir)).use_bf16
    with pytest.raises(ValueError, match="precision 'fp16' is not allowed"):
        make_config(data_dir, precision="fp16")


def test_step_schedule_of_a_workload_sets_lr_and_weight_decay_per_epoch(data_dir, request):
    # A copy of the default workload whose regime turns weight decay off and raises the lr
    # at its second decay epoch, as the authors' AlexNet and C1/C3 regimes do.
    from dataclasses import replace

    from tunegap.workloads import WORKLOADS, get_workload, register_workload

    base = get_workload("mnist1d-cnn")
    stepped = replace(
        base,
        name="mnist1d-stepped",
        regime=replace(base.regime, lr_factors=(0.1, 0.5), weight_decays=(None, 0.0)),
    )
    register_workload(stepped)
    request.addfinalizer(lambda: WORKLOADS.remove(stepped.name))
    # 20 epochs shrunk to 4: decays at 10 and 15 land on epochs 2 and 3.
    plain = Engine(make_config(data_dir, epochs=4))
    engine = Engine(make_config(data_dir, epochs=4, workload=stepped.name))
    assert engine.resolved.decay_epochs == (2, 3)
    seen = []
    for epoch in range(4):
        a, b = plain.train_epoch(), engine.train_epoch()
        group = engine.optimizer.param_groups[0]
        seen.append((group["weight_decay"], group["lr"]))
        if epoch < 3:
            assert without_time(a) == without_time(b), epoch
        else:
            assert a["test_loss"] != b["test_loss"]
    assert [wd for wd, _ in seen] == [5e-4, 5e-4, 5e-4, 0.0]
    assert [lr for _, lr in seen] == pytest.approx([0.05, 0.05, 0.005, 0.025])


@pytest.mark.slow
def test_compiled_model_with_ghost_batchnorm_trains_like_eager(data_dir):
    # torch.compile through the custom GBN autograd function (inductor builds C++ here, about
    # 20 s on 2 cores): same epoch, up to float rounding of the fused kernels.
    kw = dict(batch_size=512, ghost_batch_size=32, epochs=1)
    compiled = Engine(make_config(data_dir, compile=True, **kw))
    assert compiled.forward is not compiled.model
    a = compiled.train_epoch()
    b = Engine(make_config(data_dir, **kw)).train_epoch()
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
    assert abs(a["test_acc"] - b["test_acc"]) <= 0.1
