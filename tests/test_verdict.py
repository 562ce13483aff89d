import math
import warnings

import pandas as pd
import pytest
from gap_records import study_records, trial
from scipy import stats

from tunegap.analysis.report import baseline_summary
from tunegap.analysis.tables import build_tables, read_tables, write_tables
from tunegap.analysis.verdict import compute_cells


@pytest.fixture(scope="module")
def tables():
    return build_tables(study_records(), study="test")


@pytest.fixture(scope="module")
def cells(tables):
    cells, tolerance = compute_cells(tables[0])
    assert tolerance == pytest.approx(1.0)
    return cells


def cell(cells, batch, ghost, alpha, rho):
    ghost_match = (
        cells["ghost_batch_size"].isna() if ghost is None else cells["ghost_batch_size"] == ghost
    )
    match = cells[
        (cells["batch_size"] == batch)
        & ghost_match
        & (cells["lr_exponent"] == alpha)
        & (cells["regime_multiplier"] == rho)
    ]
    assert len(match) == 1
    return match.iloc[0]


def test_gap_and_closure_with_the_baseline_spread(cells):
    assert len(cells) == 6
    first = cells.iloc[0]
    assert first["is_baseline"] and first["batch_size"] == 32  # baseline sorts first
    assert first["baseline_test_acc"] == pytest.approx(97.0)
    assert first["tolerance"] == pytest.approx(1.0)
    assert "std" in first["tolerance_rule"]
    assert first["gap"] == pytest.approx(0.0) and first["status"] == "closed"

    plain = cell(cells, 1024, None, 0.0, "1.0")
    assert plain["test_acc_mean"] == pytest.approx(81.0)
    assert plain["test_acc_std"] == pytest.approx(math.sqrt(2.0))
    assert plain["gap"] == pytest.approx(16.0)
    assert plain["status"] == "open" and not plain["closed"]
    assert plain["train_test_gap"] == pytest.approx(99.0 - 81.0)
    assert plain["updates"] == pytest.approx(3 * 8)

    remedies = cell(cells, 1024, 32, 0.5, "matched")
    assert remedies["gap"] == pytest.approx(0.7)
    assert remedies["closed"] and remedies["status"] == "closed"
    assert remedies["n_seeds"] == 2 and remedies["n_used"] == 2


def test_given_tolerance_overrides_the_spread(tables):
    cells, tolerance = compute_cells(tables[0], tolerance=0.5)
    assert tolerance == 0.5
    remedies = cell(cells, 1024, 32, 0.5, "matched")
    assert remedies["status"] == "open" and not remedies["closed"]
    assert (cells["tolerance"] == 0.5).all() and cells["tolerance_rule"].iloc[0] == "given"
    assert cells.attrs["tolerance"] == 0.5
    with pytest.raises(ValueError, match="tolerance"):
        compute_cells(tables[0], tolerance=-1.0)


def test_single_seed_baseline_uses_half_a_point():
    recs = [
        trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True),
        trial("near", 1024, 32, 0.5, 1.0, 0, 96.6),  # gap 0.4: closed
        trial("far", 1024, 64, 0.5, 1.0, 0, 96.4),  # gap 0.6: open
        trial("edge", 1024, 16, 0.5, 1.0, 0, 96.5),  # gap exactly 0.5: closed (<=)
    ]
    cells, tolerance = compute_cells(build_tables(recs, study="s")[0])
    assert tolerance == 0.5
    assert cells["tolerance"].iloc[0] == 0.5
    assert "default" in cells["tolerance_rule"].iloc[0]
    assert math.isnan(cells["baseline_test_acc_std"].iloc[0])
    assert cell(cells, 1024, 32, 0.5, "1.0")["status"] == "closed"
    assert cell(cells, 1024, 64, 0.5, "1.0")["status"] == "open"
    assert cell(cells, 1024, 16, 0.5, "1.0")["gap"] == 0.5
    assert cell(cells, 1024, 16, 0.5, "1.0")["status"] == "closed"
    assert "0.50 points" in baseline_summary(cells)


def test_diverged_and_error_cells(cells):
    dead = cell(cells, 1024, 32, 1.0, "1.0")
    assert dead["status"] == "diverged" and not dead["closed"]
    assert dead["n_diverged"] == 2 and dead["n_used"] == 0
    assert math.isnan(dead["gap"]) and math.isnan(dead["test_acc_mean"])

    half = cell(cells, 1024, None, 0.5, "1.0")
    assert half["n_diverged"] == 1 and half["n_used"] == 1
    assert half["test_acc_mean"] == pytest.approx(90.0)
    assert half["gap"] == pytest.approx(7.0) and half["status"] == "open"

    failed = cell(cells, 1024, 128, 0.0, "1.0")
    assert failed["status"] == "error" and failed["n_error"] == 2
    assert set(cells["status"]) <= {"closed", "open", "diverged", "error"}


def test_no_baseline_is_a_clear_error(tables):
    trials = tables[0].assign(is_baseline=False)
    with pytest.raises(ValueError, match="no baseline"):
        compute_cells(trials)
    only_failed = build_tables(
        [trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True, outcome="diverged")], study="s"
    )[0]
    with pytest.raises(ValueError, match="none completed"):
        compute_cells(only_failed)


def test_row_order_and_index_of_the_trials_do_not_matter(tables, cells):
    shuffled = tables[0].iloc[::-1]  # reversed, with a descending index
    pd.testing.assert_frame_equal(compute_cells(shuffled)[0], cells)


def test_mixed_workloads_are_refused(tables):
    trials = tables[0].copy()
    trials.loc[0, "workload"] = "cifar10-resnet44"
    with pytest.raises(ValueError, match="mixes workloads"):
        compute_cells(trials)


def test_overrides_split_cells_when_set(tables):
    trials = tables[0].copy()
    assert "base_lr_override" not in compute_cells(trials)[0].columns
    trials.loc[trials["trial_id"] == "lb1", "base_lr_override"] = 0.2
    cells, _ = compute_cells(trials)
    assert "base_lr_override" in cells.columns
    assert len(cells) == 7  # lb0 and lb1 are now different cells


def test_cells_carry_95_intervals_and_welch_against_the_baseline(tables):
    trials, _ = tables
    cells, tol = compute_cells(trials)
    base = trials[trials["is_baseline"] & (trials["outcome"] == "completed")]["test_acc"]
    cell = cells[(cells["batch_size"] == 1024) & (cells["regime_multiplier"] == "matched")].iloc[0]
    seeds = trials[(trials["batch_size"] == 1024) & (trials["regime_multiplier"] == "matched")]
    acc = seeds["test_acc"]
    welch = stats.ttest_ind(base, acc, equal_var=False)
    assert cell["p_value"] == pytest.approx(welch.pvalue)
    low, high = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
    assert (cell["test_acc_ci95_low"], cell["test_acc_ci95_high"]) == pytest.approx((low, high))
    assert cell["gap_ci95_low"] < cell["gap"] < cell["gap_ci95_high"]
    # Closed on the point estimate, but 2 seeds cannot show it at 95% confidence.
    assert cell["closed"] and not cell["closed_confident"]
    assert cell["gap_ci95_high"] > tol
    one_seed = cells[cells["n_used"] == 1].iloc[0]
    assert math.isnan(one_seed["p_value"]) and math.isnan(one_seed["test_acc_ci95_low"])


def test_welch_numbers_match_the_welch_satterthwaite_formula(tables, cells):
    # What compute_cells computed by hand before it asked scipy: the same to 1e-9.
    trials = tables[0]
    base = trials[trials["is_baseline"] & (trials["outcome"] == "completed")]["test_acc"]
    seeds = trials[(trials["batch_size"] == 1024) & (trials["regime_multiplier"] == "matched")]
    acc = seeds["test_acc"]
    n, m = len(acc), len(base)
    va, vb = acc.var(ddof=1) / n, base.var(ddof=1) / m
    se, diff = math.sqrt(va + vb), base.mean() - acc.mean()
    df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (m - 1))
    half = stats.t.ppf(0.975, df) * se
    got = cell(cells, 1024, 32, 0.5, "matched")
    assert got["gap_ci95_low"] == pytest.approx(diff - half, abs=1e-9)
    assert got["gap_ci95_high"] == pytest.approx(diff + half, abs=1e-9)
    assert got["p_value"] == pytest.approx(2 * stats.t.sf(abs(diff) / se, df), abs=1e-9)
    t_half = stats.t.ppf(0.975, n - 1) * acc.std(ddof=1) / math.sqrt(n)
    assert got["test_acc_ci95_low"] == pytest.approx(acc.mean() - t_half, abs=1e-9)


def test_seeds_without_spread_give_an_exact_gap_and_no_warning():
    recs = [
        trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True),
        trial("b1", 32, None, 0.0, 1.0, 1, 97.0, baseline=True),
        trial("same0", 1024, 32, 0.5, 1.0, 0, 96.0),  # no spread on either side
        trial("same1", 1024, 32, 0.5, 1.0, 1, 96.0),
        trial("tied0", 1024, 64, 0.5, 1.0, 0, 97.0),  # no spread and no gap
        trial("tied1", 1024, 64, 0.5, 1.0, 1, 97.0),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells, _ = compute_cells(build_tables(recs, study="s")[0], tolerance=1.5)
    same = cell(cells, 1024, 32, 0.5, "1.0")
    assert same["gap_ci95_low"] == same["gap_ci95_high"] == pytest.approx(1.0)
    assert same["p_value"] == 0.0 and same["closed_confident"]
    tied = cell(cells, 1024, 64, 0.5, "1.0")
    assert tied["gap"] == 0.0 and tied["p_value"] == 1.0
    assert tied["test_acc_ci95_low"] == tied["test_acc_ci95_high"] == 97.0

    # Spread on one side only: scipy's precision warning stays quiet, the test still runs.
    recs[3] = trial("same1", 1024, 32, 0.5, 1.0, 1, 95.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells, _ = compute_cells(build_tables(recs, study="s")[0])
    assert 0.0 < cell(cells, 1024, 32, 0.5, "1.0")["p_value"] < 1.0


def test_cells_from_parquet_equal_cells_from_memory(tmp_path, tables, cells):
    write_tables(*tables, tmp_path)
    again, _ = compute_cells(read_tables(tmp_path)[0])
    pd.testing.assert_frame_equal(again, cells)
