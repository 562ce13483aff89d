"""The follow-up studies (warm-up, optimizers) and the scaling-region fit they use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_procs import refused_line

from tunegap.analysis.scaling import (
    FITTED,
    UNDETERMINED,
    fit_scaling_regions,
    fits_table,
)
from tunegap.studies import optimizers, warmup

BATCHES = np.array([16, 32, 64, 128, 256, 512, 1024, 2048], dtype=float)


def two_segments(b, examples, knee, slope):
    """The model of `fit_scaling_regions`: steps = examples / B up to the knee, then a power
    law of exponent `slope` joined continuously."""
    b = np.asarray(b, dtype=float)
    at_knee = examples / knee
    return np.where(b <= knee, examples / b, at_knee * (b / knee) ** slope)


# ---------------------------------------------------------------- the scaling-region fit


@pytest.mark.parametrize("knee, slope", [(300.0, -0.3), (90.0, 0.0), (700.0, -0.6)])
def test_fit_recovers_the_knee_and_the_slope_beyond_it(knee, slope):
    fit = fit_scaling_regions(BATCHES, two_segments(BATCHES, 2e5, knee, slope))
    assert fit.status == FITTED and fit.knee == "inside"
    assert fit.knee_batch_size == pytest.approx(knee, rel=1e-4)
    assert fit.slope_beyond == pytest.approx(slope, abs=1e-4)
    assert fit.examples_to_target == pytest.approx(2e5, rel=1e-4)
    assert fit.steps_at_knee == pytest.approx(2e5 / knee, rel=1e-4)
    assert fit.rms_residual < 1e-6 and len(fit.residuals) == BATCHES.size
    assert fit.predict([64, 2048]) == pytest.approx(two_segments([64, 2048], 2e5, knee, slope),
                                                    rel=1e-4)


def test_fit_with_noise_stays_near_the_truth_and_reports_the_residuals():
    rng = np.random.default_rng(0)
    b = np.repeat(BATCHES, 3)  # three seeds a batch size
    noise = rng.normal(0.0, 0.05, b.size)
    steps = two_segments(b, 1e5, 256.0, -0.25) * np.exp(noise)
    fit = fit_scaling_regions(b, steps)
    assert 150 < fit.knee_batch_size < 450
    assert -0.45 < fit.slope_beyond < -0.05
    assert fit.rms_residual == pytest.approx(float(np.std(noise)), abs=0.03)
    assert np.log(steps) - np.log(fit.predict(b)) == pytest.approx(np.array(fit.residuals))


def test_perfect_scaling_throughout_gives_a_lower_bound_on_the_knee():
    fit = fit_scaling_regions(BATCHES, 4096.0 * 32 / BATCHES)
    assert fit.fitted and fit.knee == "at least"
    assert fit.knee_batch_size == pytest.approx(2048)
    assert math.isnan(fit.slope_beyond)
    assert fit.summary().startswith("perfect scaling throughout: critical batch size at least 2048")


def test_no_perfect_scaling_at_all_gives_an_upper_bound():
    fit = fit_scaling_regions(BATCHES, 500.0 * BATCHES ** -0.2)
    assert fit.knee == "at most" and fit.knee_batch_size == pytest.approx(16, rel=1e-3)
    assert fit.slope_beyond == pytest.approx(-0.2, abs=1e-4)


def test_points_that_never_reached_the_target_are_left_out():
    steps = two_segments(BATCHES, 2e5, 300.0, -0.3)
    steps[[1, 3]] = [math.nan, math.inf]
    steps[5] = 0.0  # not a number of steps either
    fit = fit_scaling_regions(BATCHES, steps)
    assert fit.n_points == 5 and 512.0 not in fit.batch_sizes
    assert fit.knee_batch_size == pytest.approx(300, rel=1e-4)
    assert "3 left out (target not reached)" in fit.reason


@pytest.mark.parametrize("batches, steps, named", [
    ([32, 64, 128], [1000, math.nan, 250], "2 point(s) at 2 batch size(s)"),
    ([32, 32, 64, 64], [1000, 990, 500, 510], "4 point(s) at 2 batch size(s)"),
    ([], [], "0 point(s)"),
])
def test_fewer_than_three_batch_sizes_is_undetermined_with_the_reason(batches, steps, named):
    fit = fit_scaling_regions(batches, steps)
    assert fit.status == UNDETERMINED and not fit.fitted
    assert named in fit.reason and "needs 3 batch sizes" in fit.reason
    assert math.isnan(fit.knee_batch_size) and np.isnan(fit.predict([32])).all()
    assert fit.summary().startswith("undetermined (")


def test_one_point_beyond_the_knee_says_the_knee_is_only_bracketed():
    b = BATCHES[:6]  # 16 .. 512: only 512 lies beyond a knee at 300
    fit = fit_scaling_regions(b, two_segments(b, 2e5, 300.0, -0.3))
    assert 256 <= fit.knee_batch_size < 512 and fit.rms_residual < 1e-6
    assert "only B=512 lies beyond the knee" in fit.reason


def test_bad_batch_sizes_and_lengths_are_one_line_errors():
    with pytest.raises(ValueError, match="batch size -32 is not allowed"):
        fit_scaling_regions([-32, 64, 128], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in length"):
        fit_scaling_regions([32, 64], [1, 2, 3])


def test_fits_table_has_one_row_per_fit_without_the_point_tuples():
    rows = fits_table({"SGD": fit_scaling_regions(BATCHES, 1e4 / BATCHES),
                       "Adam": fit_scaling_regions([32], [10])})
    assert [r["optimizer"] for r in rows] == ["SGD", "Adam"]
    assert rows[0]["status"] == FITTED and rows[1]["status"] == UNDETERMINED
    assert "residuals" not in rows[0] and "summary" in rows[0]


# ---------------------------------------------------------------- the study definitions


def build(module, argv=()):
    return module.build(module.parser().parse_args(list(argv)))


def test_warmup_runs_three_rules_per_large_batch():
    study = build(warmup)
    configs = study.trial_configs()
    assert {c.seed for c in configs} == {0, 1, 2}  # --seeds auto: the first look, 3
    cells = {(c.batch_size, c.lr_exponent, c.warmup_epochs, c.warmup_start_factor)
             for c in configs if c.seed == 0}
    assert cells == {
        (32, 0.0, None, 0.0),  # the baseline
        *((b, 1.0, 0.0, 0.0) for b in (128, 512, 2048)),
        *((b, 1.0, 2.0, 32 / b) for b in (128, 512, 2048)),  # 0.1 of 20 epochs, from B0/B
        *((b, 0.5, 0.0, 0.0) for b in (128, 512, 2048)),
    }
    assert study.knobs == {} and study.seeds == "auto" and study.figures and study.report
    short = build(warmup, ["--epochs", "10", "--warmup-fraction", "0.5", "--batch-sizes", "32,64"])
    warm = [c for c in short.trial_configs() if c.warmup_epochs]
    assert [(c.batch_size, c.warmup_epochs, c.warmup_start_factor) for c in warm] == \
        [(64, 5.0, 0.5)] * 3


def test_optimizers_runs_four_optimizers_under_one_budget():
    study = build(optimizers)
    # At a constant lr each trial is judged at its best epoch on a held-out validation split.
    assert study.accuracy == "best"
    assert study.knobs == {"max_updates": optimizers.DEFAULT_MAX_UPDATES, "schedule": "constant",
                           "validation_fraction": 0.1}
    assert study.target_test_acc == optimizers.DEFAULT_TARGET
    configs = [c for c in study.trial_configs() if c.seed == 0]
    assert all(c.max_updates == optimizers.DEFAULT_MAX_UPDATES for c in configs)
    kinds = {(c.optimizer, c.resolved_momentum(), c.base_lr) for c in configs}
    assert kinds == {("sgd", 0.0, 0.5), ("sgd", 0.9, None), ("nesterov", 0.9, None),
                     ("adam", 0.9, 1e-3)}
    # 5 batch sizes x 4 optimizers; the heavy-ball cell at B0 is the baseline itself.
    assert len(configs) == 20
    assert {c.batch_size for c in configs} == {32, 64, 128, 256, 512}
    assert {c.lr_exponent for c in configs if c.batch_size > 32} == {0.5}
    final = build(optimizers, ["--max-updates", "50", "--schedule", "step", "--accuracy", "final"])
    assert final.accuracy == "final"
    assert final.knobs == {"max_updates": 50, "schedule": "step"}


def test_warmup_report_reads_every_number_from_the_cells():
    import pandas as pd

    cells = pd.DataFrame({
        "batch_size": [32, 512, 512, 512],
        "lr_exponent": [0.0, 1.0, 1.0, 0.5],
        "warmup_epochs": [0.0, 0.0, 2.0, 0.0],
        "is_baseline": [True, False, False, False],
        "test_acc_mean": [97.0, math.nan, 96.8, 95.0],
        "gap": [0.0, math.nan, 0.2, 2.0],
        "verdict": ["baseline", "diverged", "closed", "open"],
        "margin": [0.5] * 4, "n_used": [2, 0, 2, 2], "n_seeds": [2] * 4,
    })
    text = warmup.report(cells, None, None)
    assert "| 512 | linear | 1 | 0 | 0/2 | — | — | diverged |" in text
    assert "| 512 | linear+warmup | 1 | 2 | 2/2 | 96.80 | +0.20 | closed |" in text
    assert ("- B=512: the smallest point gap is linear+warmup's (+0.20 points, closed), a "
            "point estimate and no ranking (which rule is better is decided, or not, by the "
            "paired comparisons); warm-up takes linear scaling from diverged to +0.20 "
            "(closed).") in text


def synthetic_trials():
    """Two seeds per (optimizer, batch size): SGD scales perfectly up to 128 then flattens
    (slope -0.5); Adam scales perfectly throughout; Nesterov's seeds at 512 miss the target."""
    import pandas as pd

    rows = []
    for b in (32, 64, 128, 256, 512):
        for seed in (0, 1):
            sgd = float(two_segments([b], 64_000, 128.0, -0.5)[0])
            nesterov = math.nan if b == 512 and seed == 1 else 40_000 / b
            for optimizer, momentum, steps in (("sgd", 0.0, sgd), ("adam", 0.9, 80_000 / b),
                                               ("nesterov", 0.9, nesterov)):
                rows.append({"optimizer": optimizer, "momentum": momentum, "batch_size": b,
                             "seed": seed, "steps_to_target": steps, "target_test_acc": 85.0})
    return pd.DataFrame(rows)


def test_optimizers_analysis_fits_each_optimizer_from_its_complete_cells():
    trials = synthetic_trials()
    steps = optimizers.steps_table(trials).set_index(["optimizer", "batch_size"])
    assert steps.loc[("Nesterov", 512), ["n_seeds", "n_reached"]].tolist() == [2, 1]
    assert math.isnan(steps.loc[("Nesterov", 512), "steps"])  # not every seed reached it
    assert steps.loc[("Adam", 64), "steps"] == pytest.approx(1250)
    fits = optimizers.scaling_fits(trials)
    assert fits["SGD"].knee_batch_size == pytest.approx(128, rel=1e-3)
    assert fits["SGD"].slope_beyond == pytest.approx(-0.5, abs=1e-3)
    assert fits["Adam"].knee == "at least" and fits["Nesterov"].n_points == 4
    table = optimizers.tables(None, trials, None)["scaling_fits.csv"]
    assert table["optimizer"].tolist() == ["SGD", "Nesterov", "Adam"]
    text = optimizers.report(None, trials, None)
    assert "| Nesterov | 512 | 1/2 | — |" in text
    assert "- SGD: perfect scaling up to about 128, then slope -0.50" in text
    fig = optimizers.figures(None, trials, None)["steps_to_target"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "SGD fit: knee inside 128" in labels and "Adam fit: knee at least 512" in labels


def test_knee_intervals_do_not_depend_on_the_order_trials_finished_in():
    """The shipped optimizers trials, and the same rows in another order (as another run
    would finish them), give the same bootstrap intervals."""
    shipped = Path(__file__).resolve().parents[1] / "studies" / "optimizers" / "trials.parquet"
    trials = pd.read_parquet(shipped)
    shuffled = trials.sample(frac=1.0, random_state=1).reset_index(drop=True)
    first = optimizers.knee_bootstrap(trials, resamples=50)
    optimizers.knee_bootstrap(trials, resamples=40)  # the one result it keeps is another now
    assert optimizers.knee_bootstrap(shuffled, resamples=50) == first
    assert {k: v["knee_ci_low"] for k, v in first.items()}  # intervals were computed


@pytest.mark.parametrize("module, argv, named", [
    (warmup, ["--warmup-fraction", "0"], "--warmup-fraction 0 is not allowed"),
    (warmup, ["--warmup-fraction", "soon"], "--warmup-fraction 'soon' is not a number"),
    (warmup, ["--warmup-epochs", "3"], "--warmup-epochs is not allowed here"),
    (warmup, ["--warmup-start-factor", "0.5"], "--warmup-start-factor is not allowed here"),
    (warmup, ["--batch-sizes", "32"], "no batch size other than the baseline's B0=32"),
    (warmup, ["--batch-sizes", "0,64"], "--batch-sizes"),
    (optimizers, ["--optimizer", "adam"], "--optimizer is not allowed here"),
    (optimizers, ["--momentum", "0.5"], "--momentum is not allowed here"),
    (optimizers, ["--target-acc", "120"], "--target-acc 120.0 is not allowed"),
    (optimizers, ["--max-updates", "0"], "max_updates 0"),
    (optimizers, ["--lr-exponent", "2"], "--lr-exponent 2 is not allowed"),
    (optimizers, ["--adam-lr", "-1"], "--adam-lr -1 is not allowed"),
    (optimizers, ["--workload", "nowhere"], "unknown workload 'nowhere'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_study_options_are_one_line_and_exit_2(module, argv, named, tmp_path, capsys):
    assert named in refused_line(module, argv, tmp_path, capsys)


# ---------------------------------------------------------------- end to end, real Ray + MLflow


def run_tiny(module, argv, tmp_path, data_dir):
    return module.main([*argv, "--storage-path", str(tmp_path / "results"),
                        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu",
                        "--data-dir", str(data_dir), "--quiet", "--max-concurrent", "2"])


@pytest.mark.slow
def test_warmup_end_to_end(tmp_path, data_dir, ray_session):
    outcome = run_tiny(warmup, ["--epochs", "2", "--baseline-epochs", "2", "--batch-sizes", "256",
                               "--seeds", "2"],
                       tmp_path, data_dir)
    trials = outcome.trials
    assert len(trials) == 2 * 4 and (trials["outcome"] == "completed").all()
    cells = warmup.with_rules(outcome.cells)
    assert cells["rule"].tolist() == ["baseline", "linear", "linear+warmup", "sqrt"]
    assert set(cells["verdict"]) <= {"baseline", "closed", "open", "at the margin",
                                     "inconclusive", "diverged"}
    # The warm-up ramps from B0/B of the scaled lr: the first epoch's lr is below the peak.
    warm = trials[trials["warmup_epochs"] > 0]
    assert len(warm) == 2 and (warm["warmup_start_factor"] == 32 / 256).all()
    names = {p.name for p in outcome.files}
    assert {"gap_map.png", "cells.csv"} <= names
    readme = (outcome.run_dir / "summary.md").read_text()
    assert "| 256 | linear+warmup | 1 | 0.2 |" in readme
    assert "- B=256: the smallest point gap is " in readme
    assert "## Paired comparisons" in readme


@pytest.mark.slow
def test_optimizers_end_to_end(tmp_path, data_dir, ray_session):
    outcome = run_tiny(optimizers, ["--max-updates", "30", "--batch-sizes", "32,64,128",
                                    "--target-acc", "20", "--seeds", "2"], tmp_path, data_dir)
    trials = outcome.trials
    assert (trials["outcome"] == "completed").all()
    assert (trials["resolved_updates"] == 30).all() if "resolved_updates" in trials else True
    labels = set(trials.apply(optimizers.optimizer_label, axis=1))
    assert labels == set(optimizers.OPTIMIZER_LABELS)
    assert trials["steps_to_target"].notna().any()
    fits = outcome.run_dir / "scaling_fits.csv"
    assert fits.is_file()
    import pandas as pd

    table = pd.read_csv(fits)
    assert set(table["optimizer"]) <= set(optimizers.OPTIMIZER_LABELS) and len(table) >= 1
    assert set(table["status"]) <= {FITTED, UNDETERMINED}
    assert "steps_to_target.png" in {p.name for p in outcome.files}
    readme = (outcome.run_dir / "summary.md").read_text()
    assert "Fits (perfect scaling, slope -1" in readme and "- Adam: " in readme
    # The baseline is cut short by the budget like every trial, and the summary says so.
    assert "- regime: every trial, the baseline at B0=32 included, stops at 30 weight " \
           "updates" in readme
    assert "regime: baseline 20 epochs" not in readme
