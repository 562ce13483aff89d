"""The study definitions: which trials each default study runs (no Ray needed)."""

from __future__ import annotations

import inspect
import math
import pkgutil

import pandas as pd
import pytest
from gap_records import trial

import tunegap.studies
from tunegap.analysis.tables import build_tables
from tunegap.studies import (
    batch_size,
    diffusion,
    frontier,
    ghost_size,
    lr_scaling,
    optimizers,
    regime_length,
    table1,
    warmup,
)
from tunegap.study import StudyError


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
    knobs = {
        "batch_size": [32, 2048, 2048, 2048, 2048],
        "ghost_batch_size": [None, None, None, 32, 32],
        "lr_exponent": [0.0, 0.0, 0.5, 0.5, 0.5],
        "regime_multiplier": ["1.0", "1.0", "1.0", "1.0", "matched"],
    }
    cells = pd.DataFrame({
        **knobs,
        "test_acc_mean": [98.0, 70.0, 80.0, 85.0, 97.5],
        "test_acc_std": [0.1, 1.0, 2.0, 3.0, 0.2],
        "verdict": ["baseline", "open", "open", "open", "diverged"],
        "margin": [0.5] * 5,
    })
    trials = pd.DataFrame({**knobs, "outcome": ["completed"] * 4 + ["diverged"],
                           "best_test_acc": [98.2, 71.0, 81.0, 86.0, 50.0]})
    lines = table1.table1_markdown(cells, trials, "mnist1d-cnn").splitlines()
    assert lines[2] == ("| tunegap, final epoch, judged (mean ± std) | 98.00 ± 0.10 | "
                        "70.00 ± 1.00 | 80.00 ± 2.00 | 85.00 ± 3.00 | diverged |")
    assert lines[3] == ("| tunegap, best epoch on the test set (mean; optimistic) | 98.20 | "
                        "71.00 | 81.00 | 86.00 | - |")
    assert lines[4] == ("| tunegap, verdict vs SB at margin 0.5 | (reference) | open | open | "
                        "open | diverged |")
    assert lines[-1] == "Paper: no Table 1 row exists for mnist1d-cnn; none is shown."


def test_table1_markdown_shows_the_paper_row_of_a_paper_workload():
    cells = pd.DataFrame({"batch_size": [128], "ghost_batch_size": [None], "lr_exponent": [0.0],
                          "regime_multiplier": ["1.0"], "test_acc_mean": [92.0],
                          "test_acc_std": [0.3], "verdict": ["baseline"], "margin": [0.5]})
    trials = cells[["batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier"]].assign(
        outcome="completed", best_test_acc=92.4)
    lines = table1.table1_markdown(cells, trials, "cifar10-resnet44").splitlines()
    assert "| paper | 92.83 | 86.10 | 89.30 | 90.50 | 93.07 |" in lines


def test_table1_prints_the_small_batch_beside_the_published_figure():
    knobs = {"batch_size": [128, 128], "ghost_batch_size": [None, None],
             "lr_exponent": [0.0, 0.0], "regime_multiplier": ["1.0", "4.0"]}
    cells = pd.DataFrame({**knobs, "test_acc_mean": [90.5, 92.9], "test_acc_std": [0.2, 0.1],
                          "verdict": ["baseline", "closed"], "margin": [0.5] * 2,
                          "n_used": [3, 3]})
    trials = pd.DataFrame({**knobs, "outcome": ["completed"] * 2, "best_test_acc": [91.0, 93.0],
                           "validation_fraction": [0.1, 0.1]})
    text = table1.table1_markdown(cells, trials, "fashion-cnn")
    assert "| tunegap, best epoch on the held-out validation split (mean) |" in text
    assert text.splitlines()[-1] == (
        "Outside reference: 93.4% (github.com/zalandoresearch/fashion-mnist, README benchmark "
        "table: 2 Conv + pooling + BatchNorm); our small batch 90.50% at the base regime, "
        "-2.90 points. A longer small-batch run (x4 the base regime, 3 seed(s)) reaches "
        "92.90%, -0.50 points from it. The difference exceeds 2 points: the longer run above "
        "measures how much of it the shorter regime explains.")
    only_sb = table1.table1_markdown(cells.iloc[:1], trials.iloc[:1], "fashion-cnn")
    assert only_sb.endswith("no longer run was made to explain it (--long-baseline).")
    long = table1.build(table1.parser().parse_args(["--workload", "fashion-cnn",
                                                    "--long-baseline", "4"]))
    assert {"batch_size": 128, "regime_multiplier": 4.0} in long.points


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
    ks = {(c.batch_size, c.lr_exponent) for c in configs(diffusion)}
    # 3 large batch sizes x 2 exponents, and the baseline (B0 = 32: the same lr whatever the
    # exponent, so Study.trial_configs may run it once).
    assert {k for k in ks if k[0] != 32} == {(b, a) for b in (128, 512, 2048) for a in (0.0, 0.5)}
    assert (32, 0.0) in ks
    # baseline + 3 x 5 cells, each starting with the first look's 3 seeds (--seeds auto)
    assert len(configs(lr_scaling)) == 16 * 3
    assert len(configs(lr_scaling, ["--seeds", "1"])) == 16
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
        f.write('{"epoch": 3, "test_')  # the driver died mid-write (or the disk filled)
    # The resumed driver's next row starts on its own line: only the cut one is lost.
    journal.on_trial_result(0, [], Trial(), {"epoch": 3, "test_acc": 90.0})
    rows = read_journal(tmp_path / "j.jsonl")
    assert [r["epoch"] for r in rows["t1"]] == [1, 2, 3]
    assert rows["t1"][0]["resolved_lr"] == 0.1 and "config" not in rows["t1"][0]
    assert read_journal(tmp_path / "missing.jsonl") == {}


@pytest.mark.parametrize("module", [batch_size, diffusion, ghost_size, lr_scaling, regime_length,
                                    table1], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_study_takes_the_margin_and_accuracy_declared_on_the_command_line(module):
    default = module.build(module.parser().parse_args([]))
    assert (default.margin, default.accuracy) == (0.5, "final")
    study = module.build(module.parser().parse_args(["--margin", "1.25", "--accuracy", "best"]))
    assert (study.margin, study.accuracy) == (1.25, "best")
    described = study.describe()
    assert described["margin"] == 1.25 and described["accuracy"] == "best"
    assert "tolerance" not in described
    # The margin changes no trial: it is how the results are judged, not what is run. The
    # best epoch is chosen on a split held out of the training set: that much changes.
    held_out = [c.with_changes(validation_fraction=0.0) for c in study.trial_configs()]
    assert held_out == default.trial_configs()
    assert {c.validation_fraction for c in study.trial_configs()} == {0.1}


# ---------------------------------------------------------------- the studies' own reports


def probed(record, *, target=None, noise=None, lrs=(0.1, 0.1, 0.01)):
    """A gap_records trial with a steps-to-target target, an lr decay after epoch 2 and a
    noise-scale estimate per epoch (NaN: not measured)."""
    record["target_test_acc"] = target
    for row, lr, value in zip(record["history"], lrs, noise or [math.nan] * 3, strict=True):
        row.update(lr=lr, noise_scale=value)
    return record


def batch_size_tables(*, baseline_noise=None):
    gbn_noise = [400.0, 600.0, 5000.0]  # the 5000 comes after the lr decay
    records = [
        # Final accuracies; each trial's test accuracy is acc - 2, acc - 1, acc at epochs 1-3,
        # with 250 updates an epoch at B=32 and 8 at B=1024. Target 95%.
        probed(trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True), target=95.0,
               noise=baseline_noise),
        probed(trial("b1", 32, None, 0.0, 1.0, 1, 97.0, baseline=True), target=95.0,
               noise=baseline_noise),
        probed(trial("lb0", 1024, None, 0.0, 1.0, 0, 80.0), target=95.0),
        probed(trial("lb1", 1024, None, 0.0, 1.0, 1, 81.0), target=95.0),
        # +LR: one seed reaches 95% at epoch 2 (16 updates), the other never does.
        probed(trial("lr0", 1024, None, 0.5, 1.0, 0, 96.0), target=95.0),
        probed(trial("lr1", 1024, None, 0.5, 1.0, 1, 90.0), target=95.0),
        # +LR+GBN: both seeds reach it at epoch 1 (8 updates).
        probed(trial("gb0", 1024, 32, 0.5, 1.0, 0, 97.0), target=95.0, noise=gbn_noise),
        probed(trial("gb1", 1024, 32, 0.5, 1.0, 1, 97.0), target=95.0, noise=gbn_noise),
    ]
    return build_tables(records, study="batch_size")


def test_batch_size_steps_to_target_says_how_many_seeds_reached_it():
    trials, epochs = batch_size_tables()
    text = batch_size.report(None, trials, epochs)
    assert "| 32 | SB | 250 (2/2 seeds) |" in text
    assert "| 1024 | LB | not reached (0/2 seeds) |" in text
    # Before: "| 1024 | +LR | 16 |", the mean of the one seed that reached it, as if both had.
    assert "| 1024 | +LR | only 1/2 seeds reached it (their mean 16) |" in text
    assert "| 1024 | +LR+GBN | 8 (2/2 seeds) |" in text
    assert "1 cell(s) where not every seed reached 95% test accuracy: B=1024 +LR (1/2)" in text
    steps = batch_size.steps_summary(trials).set_index(["batch_size", "remedy"])
    assert steps.loc[(1024, "+LR"), ["n_seeds", "n_reached"]].tolist() == [2, 1]
    assert not steps.loc[(1024, "+LR"), "all_reached"]
    assert steps.loc[(1024, "+LR+GBN"), "all_reached"]


def test_batch_size_labels_the_baseline_sb_never_lb():
    trials, epochs = batch_size_tables()
    labels = trials.apply(batch_size.remedy_label, axis=1)
    assert labels[trials["is_baseline"]].unique().tolist() == ["SB"]
    assert "| 32 | LB |" not in batch_size.report(None, trials, epochs)


def test_batch_size_critical_batch_comes_from_the_baseline_high_lr_phase():
    # The baseline measured it: 100 and 300 in epochs 1-2 (lr 0.1), 9000 after the decay.
    trials, epochs = batch_size_tables(baseline_noise=[100.0, 300.0, 9000.0])
    value, how = batch_size.critical_batch(trials, epochs)
    assert value == pytest.approx(200.0)  # before: the median over every trial, 600 here
    assert how == ("median B_simple of 4 per-epoch estimates from the 2 completed baseline "
                   "trial(s) (B=32), over their high-learning-rate phase (before the first lr "
                   "decay: epochs 1-2)")
    assert f"about 200, the {how}." in batch_size.report(None, trials, epochs)


def test_batch_size_critical_batch_says_where_it_falls_back_to():
    # The baseline has no estimate: the +LR+GBN trials of the smallest batch size give it.
    trials, epochs = batch_size_tables()
    value, how = batch_size.critical_batch(trials, epochs)
    assert value == pytest.approx(500.0)  # median of 400, 600, 400, 600: not the 5000s
    assert "the 2 completed +LR+GBN trial(s) at B=1024 (ghost 32)" in how
    assert "epochs 1-2" in how
    assert "the 2 completed baseline trial(s) (B=32) have no finite estimate there" in how
    text = batch_size.report(None, trials, epochs)
    assert "median B_simple over trials" not in text
    none, why = batch_size.critical_batch(trials[trials["ghost_batch_size"].isna()], epochs)
    assert math.isnan(none) and why.startswith("not measured")


def test_batch_size_figure_draws_with_partial_and_missing_steps():
    from tunegap.analysis.cells import compute_cells

    trials, epochs = batch_size_tables()
    figs = batch_size.figures(compute_cells(trials), trials, epochs)
    assert set(figs) == {"batch_size"}


def diffusion_records(*, duplicate_b0=False):
    records = [trial(f"b{s}", 32, None, 0.0, 1.0, s, 97.0, baseline=True) for s in (0, 1)]
    if duplicate_b0:  # before Study.trial_configs ran B0 once: the same trial at exponent 0.5
        records += [trial(f"d{s}", 32, None, 0.5, 1.0, s, 97.0, baseline=True) for s in (0, 1)]
    records += [trial(f"t{a}{s}", 128, None, a, 1.0, s, 90.0) for a in (0.0, 0.5)
                for s in (0, 1)]
    return records


def test_diffusion_reports_the_baseline_once_with_its_real_seeds():
    trials, epochs = build_tables(diffusion_records(), study="diffusion")
    lines = diffusion.report(None, trials, epochs).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| batch")]
    assert rows == [
        "| 32 (baseline) | 0 | 2/2 | 2.000 | 1.000 |",
        "| 128 | 0 | 2/2 | 1.000 | 1.000 |",
        "| 128 | 0.5 | 2/2 | 1.000 | 1.000 |",
    ]


def test_diffusion_never_counts_a_duplicate_b0_run_as_a_seed():
    # Before: rows "| 32 | 0 |" and "| 32 | 0.5 |", and the pair pooled as 2 seeds of one.
    trials, epochs = build_tables(diffusion_records(duplicate_b0=True), study="diffusion")
    table = diffusion.slope_table(trials)
    base = table[table["is_baseline"]]
    assert len(base) == 1 and base["seeds"].iloc[0] == 2 and base["seeds_run"].iloc[0] == 2
    assert not ((table["batch_size"] == 32) & ~table["is_baseline"]).any()
    figs = diffusion.figures(None, trials, epochs)
    labels = [t.get_text() for t in figs["diffusion"].axes[0].get_legend().get_texts()]
    assert sum("32" in label for label in labels) == 1


ALL_STUDIES = [batch_size, diffusion, frontier, ghost_size, lr_scaling, optimizers,
               regime_length, table1, warmup]


def test_the_nine_studies_are_all_the_study_modules():
    shipped = {m.name for m in pkgutil.iter_modules(tunegap.studies.__path__)}
    assert shipped == {m.__name__.rsplit(".", 1)[1] for m in ALL_STUDIES}


@pytest.mark.parametrize("module", ALL_STUDIES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_study_can_be_built_from_python_as_from_its_command(module):
    assert module.study() == module.build(module.parser().parse_args([]))
    seeds = "auto" if module is frontier else 3  # the frontier decides its own seeds
    built = module.study(seeds=seeds, margin=1.0, epochs=3)
    assert (built.seeds, built.margin, built.epochs) == (seeds, 1.0, 3)
    with pytest.raises(StudyError, match="--margin"):
        module.study(margin=-1)
    # Typed keywords only: its own options annotated, the common ones `StudyOptions`.
    params = inspect.signature(module.study).parameters.values()
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params)
    assert all(p.annotation is not p.empty for p in params)
    assert [p.annotation for p in params if p.kind is p.VAR_KEYWORD] == [
        "Unpack[StudyOptions]"]
    with pytest.raises(TypeError):
        module.study(512)
    # Where a study runs is RunOptions, never silently dropped.
    with pytest.raises(TypeError, match=r"'storage_path'.*RunOptions"):
        module.study(storage_path="/tmp/results")


def test_a_study_option_is_the_same_value_from_python_and_from_its_command():
    from_cli = ghost_size.build(ghost_size.parser().parse_args(
        ["--batch-sizes", "512,2048", "--ghost-sizes", "none,32", "--seeds", "auto",
         "--momentum", "0.5", "--accuracy", "best"]))
    from_python = ghost_size.study(batch_sizes=(512, 2048), ghost_sizes=(None, 32),
                                   seeds="auto", momentum=0.5, accuracy="best")
    assert from_cli == from_python
    assert from_python.knobs["momentum"] == 0.5
    with pytest.raises(StudyError, match="--search 'optuna' is not allowed: use grid"):
        ghost_size.study(search="optuna")


@pytest.mark.parametrize(("module", "options", "named"), [
    (frontier, {"ghost_size": 0}, "--ghost-size 0"),
    (frontier, {"noise_scale_every": 0}, "--noise-scale-every 0"),
    (batch_size, {"ghost_batch_size": -8}, "--ghost-batch-size -8"),
    (table1, {"long_baseline": 0}, "--long-baseline 0"),
    (table1, {"large_batch_size": 0}, "--large-batch-size 0"),
    (regime_length, {"batch_size": 0}, "--batch-size 0"),
    (optimizers, {"lr_exponent": 2}, "--lr-exponent 2"),
    (warmup, {"warmup_fraction": 0}, "--warmup-fraction 0"),
], ids=lambda v: v.__name__.rsplit(".", 1)[1] if hasattr(v, "__name__") else None)
def test_a_study_s_own_options_are_checked_from_python_as_on_its_command(module, options, named):
    with pytest.raises(StudyError, match=named):
        module.study(**options)
