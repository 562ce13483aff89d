"""The study definitions: which trials each default study runs (no Ray needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from tunegap.studies import batch_size, diffusion, ghost_size, lr_scaling, regime_length, table1


def configs(module, argv=()):
    return module.build(module.parser().parse_args(list(argv))).trial_configs()


def knobs(c):
    return (c.batch_size, c.ghost_batch_size, c.lr_exponent, c.regime_multiplier)


def test_ghost_size_default_grid_skips_ghosts_that_hold_the_whole_batch():
    cs = configs(ghost_size)
    assert {c.seed for c in cs} == {0, 1, 2}
    per_seed = [knobs(c) for c in cs if c.seed == 0]
    assert len(per_seed) == len(set(per_seed)) == 13  # baseline + 3 + 4 + 5
    assert per_seed[0] == (32, None, 0.0, 1.0)  # the baseline comes first
    assert all(g is None or g < b for b, g, _, _ in per_seed)


def test_table1_runs_the_five_columns_per_seed():
    cs = configs(table1, ["--seeds", "2"])
    assert len(cs) == 10
    first = [knobs(c) for c in cs if c.seed == 0]
    assert first == [
        (32, None, 0.0, 1.0),
        (2048, None, 0.0, 1.0),
        (2048, None, 0.5, 1.0),
        (2048, 32, 0.5, 1.0),
        (2048, 32, 0.5, "matched"),
    ]


def test_table1_markdown_puts_each_cell_in_its_column():
    cells = pd.DataFrame({
        "batch_size": [32, 2048, 2048, 2048, 2048],
        "ghost_batch_size": [None, None, None, 32, 32],
        "lr_exponent": [0.0, 0.0, 0.5, 0.5, 0.5],
        "regime_multiplier": ["1.0", "1.0", "1.0", "1.0", "matched"],
        "test_acc_mean": [98.0, 70.0, 80.0, 85.0, 97.5],
        "test_acc_std": [0.1, 1.0, 2.0, 3.0, 0.2],
        "status": ["baseline", "open", "open", "open", "diverged"],
    })
    text = table1.table1_markdown(cells, "mnist1d-cnn")
    row = text.splitlines()[2]
    assert row == ("| mnist1d-cnn (tunegap) | 98.00 ± 0.10 | 70.00 ± 1.00 | 80.00 ± 2.00 | "
                   "85.00 ± 3.00 | diverged |")


def test_batch_size_study_has_three_remedies_per_large_batch():
    cs = configs(batch_size, ["--seeds", "1", "--batch-sizes", "32,256,1024"])
    ks = {knobs(c) for c in cs}
    assert ks == {
        (32, None, 0.0, 1.0),
        (256, None, 0.0, 1.0), (256, None, 0.5, 1.0), (256, 32, 0.5, 1.0),
        (1024, None, 0.0, 1.0), (1024, None, 0.5, 1.0), (1024, 32, 0.5, 1.0),
    }


def test_regime_length_goes_up_to_matched_at_the_large_batch():
    cs = configs(regime_length)
    mults = [c.regime_multiplier for c in cs if c.batch_size == 2048]
    assert mults[-1] == "matched" and mults[:2] == [1.0, 2.0]
    assert {c.ghost_batch_size for c in cs if c.batch_size == 2048} == {32}


def test_diffusion_and_lr_scaling_grids():
    assert len(configs(diffusion)) == 8  # 4 batch sizes x 2 exponents, baseline among them
    assert len(configs(lr_scaling)) == 16  # baseline + 3 x 5
    study = lr_scaling.build(lr_scaling.parser().parse_args(["--search", "optuna"]))
    assert study.optuna_space["lr_exponent"] == (0.0, 1.0)
    assert study.optuna_space["base_lr"] == pytest.approx((0.005, 0.5))


def test_epoch_journal_survives_a_line_cut_by_a_kill(tmp_path):
    from tunegap.runner.records import EpochJournal, read_journal

    class Trial:
        trial_id = "t1"

    journal = EpochJournal(tmp_path / "j.jsonl")
    for epoch in (1, 2):
        journal.on_trial_result(0, [], Trial(), {"epoch": epoch, "test_acc": float("nan"),
                                                 "resolved_lr": 0.1, "config": {"x": 1}})
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_')  # the driver died mid-write
    rows = read_journal(tmp_path / "j.jsonl")
    assert [r["epoch"] for r in rows["t1"]] == [1, 2]
    assert rows["t1"][0]["resolved_lr"] == 0.1 and "config" not in rows["t1"][0]
    assert read_journal(tmp_path / "missing.jsonl") == {}
