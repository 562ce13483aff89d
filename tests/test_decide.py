import math
import warnings

import numpy as np
import pandas as pd
import pytest
from gap_records import study_records, trial
from scipy import stats

from tunegap.analysis.cells import compute_cells, verdict_counts
from tunegap.analysis.decide import (
    VERDICTS,
    GapDecision,
    closed_p_value,
    decide_gap,
    holm,
)
from tunegap.analysis.power import MAX_SEEDS_TO_DECIDE
from tunegap.analysis.tables import build_tables, read_tables, write_tables
from tunegap.runner.report_text import baseline_summary

CELL_COLUMNS = [
    "workload", "batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier",
    "multiplier", "is_baseline", "n_seeds", "n_used", "n_diverged", "n_error",
    "n_stopped", "test_acc_mean", "test_acc_std", "test_acc_ci95_low", "test_acc_ci95_high",
    "gap", "gap_ci_low", "gap_ci_high", "margin", "verdict", "limiting_side",
    "seeds_to_decide", "p_value", "p_value_open", "p_value_holm", "p_value_open_holm",
    "verdict_holm", "train_test_gap", "updates", "accuracy", "baseline_test_acc",
    "baseline_test_acc_std", "baseline_n_seeds", "looks", "confidence",
]


# ------------------------------------------------------------------ an independent Welch


def welch_by_hand(base, cell, confidence=0.90):
    """Welch–Satterthwaite written out: (gap, low, high, df, se)."""
    base, cell = np.asarray(base, float), np.asarray(cell, float)
    m, n = len(base), len(cell)
    vb, vc = base.var(ddof=1) / m, cell.var(ddof=1) / n
    se = math.sqrt(vb + vc)
    df = (vb + vc) ** 2 / (vb**2 / (m - 1) + vc**2 / (n - 1))
    gap = base.mean() - cell.mean()
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return gap, gap - half, gap + half, df, se


def rule(low, high, margin):
    if high <= margin:
        return "closed"
    if low > margin:
        return "open"
    return "at the margin" if high - low <= 2 * margin else "inconclusive"


def samples(mean, std, n):
    """n values whose mean and sample std (ddof=1) are exactly `mean` and `std`."""
    z = np.arange(n, dtype=float)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + std * z


def test_decide_gap_matches_welch_satterthwaite_by_hand_on_random_samples():
    rng = np.random.default_rng(20170524)
    seen = set()
    for _ in range(300):
        m, n = rng.integers(2, 12, size=2)
        base = rng.normal(95.0, rng.uniform(0.05, 2.0), size=m)
        cell = rng.normal(95.0 - rng.uniform(-1.0, 3.0), rng.uniform(0.05, 2.0), size=n)
        margin = float(rng.uniform(0.0, 2.0))
        got = decide_gap(base.tolist(), cell.tolist(), margin=margin)
        gap, low, high, df, se = welch_by_hand(base, cell)
        assert got.gap == pytest.approx(gap, abs=1e-9)
        assert got.low == pytest.approx(low, abs=1e-9)
        assert got.high == pytest.approx(high, abs=1e-9)
        assert got.verdict == rule(low, high, margin)
        vb, vc = base.var(ddof=1) / m, cell.var(ddof=1) / n
        assert got.limiting_side == ("baseline" if vb > vc else "cell")
        if got.verdict in ("closed", "open"):
            assert got.seeds_to_decide is None
        # The one-sided p-value of "closed" is the same t against the margin.
        p = closed_p_value(base, cell, margin=margin)
        assert p == pytest.approx(stats.t.cdf((gap - margin) / se, df), abs=1e-9)
        assert (p < 0.05) == (high < margin)
        # Other confidence levels follow the same formula.
        wide = decide_gap(base, cell, margin=margin, confidence=0.99)
        assert wide.high == pytest.approx(welch_by_hand(base, cell, 0.99)[2], abs=1e-9)
        seen.add(got.verdict)
    assert seen == {"closed", "open", "at the margin", "inconclusive"}


def test_each_verdict_branch():
    base = [97.0, 97.2, 96.8, 97.1, 96.9]
    closed = decide_gap(base, [96.9, 97.1, 96.8, 97.0, 97.2], margin=0.5)
    assert closed.verdict == "closed" and closed.high <= 0.5 and closed.seeds_to_decide is None
    opened = decide_gap(base, [90.0, 91.0, 89.5, 90.5, 90.2], margin=0.5)
    assert opened.verdict == "open" and opened.low > 0.5 and opened.seeds_to_decide is None
    assert opened.limiting_side == "cell"
    unsure = decide_gap(base, [96.0, 97.5, 95.0], margin=0.5)
    assert unsure.verdict == "inconclusive" and unsure.low <= 0.5 < unsure.high
    assert isinstance(unsure, GapDecision)
    # A cell better than the baseline is closed whatever the margin, 0 included.
    assert decide_gap(base, [99.0, 99.1, 98.9], margin=0.0).verdict == "closed"
    # The margin is the boundary: high == margin is closed, low == margin is not open.
    exact = decide_gap([97.0, 97.0], [96.0, 96.0], margin=1.0)
    assert exact.low == exact.high == exact.gap == 1.0 and exact.verdict == "closed"
    assert decide_gap([97.0, 97.0], [96.0, 96.0], margin=0.99).verdict == "open"


def test_fewer_than_two_usable_seeds_is_inconclusive():
    one = decide_gap([97.0, 96.0, 98.0], [10.0], margin=0.5)  # hopeless, but one seed
    assert one.verdict == "inconclusive" and one.gap == pytest.approx(87.0)
    assert math.isnan(one.low) and math.isnan(one.high)
    assert one.limiting_side is None and one.seeds_to_decide is None
    assert decide_gap([97.0], [96.0, 96.5], margin=0.5).verdict == "inconclusive"
    # Non-finite values are not seeds.
    nan_seed = decide_gap([97.0, 96.0], [96.0, math.nan, math.inf, None], margin=0.5)
    assert nan_seed.verdict == "inconclusive" and nan_seed.gap == pytest.approx(0.5)
    empty = decide_gap([97.0, 96.0], [], margin=0.5)
    assert empty.verdict == "inconclusive" and math.isnan(empty.gap)


def test_zero_spread_is_the_point_gap_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = decide_gap([97.0, 97.0, 97.0], [96.5, 96.5], margin=0.5)
        assert (flat.low, flat.high, flat.verdict) == (0.5, 0.5, "closed")
        assert closed_p_value([97.0, 97.0], [96.5, 96.5], margin=0.5) == 0.0
        assert closed_p_value([97.0, 97.0], [96.0, 96.0], margin=0.5) == 1.0
        # Spread on one side only: scipy's precision warning stays silenced.
        one_side = decide_gap([96.1, 96.1, 96.1], [95.0, 96.0, 95.5], margin=0.5)
    _, low, high, _, _ = welch_by_hand([96.1, 96.1, 96.1], [95.0, 96.0, 95.5])
    assert (one_side.low, one_side.high) == pytest.approx((low, high), abs=1e-9)


@pytest.mark.parametrize(
    "base_mean, base_std, cell_mean, cell_std, n, margin, decides_to",
    [
        (97.0, 1.0, 96.7, 1.2, 3, 0.5, "closed"),   # gap 0.3 < margin: closed with seeds
        (97.0, 0.8, 95.9, 0.6, 2, 0.5, "open"),     # gap 1.1 > margin: open with seeds
        (97.0, 0.3, 96.3, 2.0, 4, 1.0, "closed"),   # the cell is the limiting side
    ],
)
def test_seeds_to_decide_gives_80_percent_power_when_simulated(
    base_mean, base_std, cell_mean, cell_std, n, margin, decides_to
):
    base, cell = samples(base_mean, base_std, n), samples(cell_mean, cell_std, n)
    now = decide_gap(base, cell, margin=margin)
    assert now.verdict in ("inconclusive", "at the margin")
    k = now.seeds_to_decide
    assert k is not None and n < k <= MAX_SEEDS_TO_DECIDE
    rng = np.random.default_rng(7)

    def power(seeds):
        hits = 0
        for _ in range(1500):
            b = rng.normal(base_mean, base_std, seeds)
            c = rng.normal(cell_mean, cell_std, seeds)
            hits += decide_gap(b, c, margin=margin).verdict == decides_to
        return hits / 1500

    # The planning formula uses a central t: the simulated power at k is near 80%, and
    # clearly above the 50% the observed gap alone would give.
    assert 0.72 <= power(k) <= 0.95
    # The limiting side is the one with the larger variance / n.
    assert now.limiting_side == ("baseline" if base_std > cell_std else "cell")


def test_seeds_to_decide_is_none_when_nothing_can_decide():
    at_margin = decide_gap(samples(97.0, 1.0, 3), samples(96.5, 1.0, 3), margin=0.5)
    assert at_margin.gap == pytest.approx(0.5)
    assert at_margin.verdict == "inconclusive" and at_margin.seeds_to_decide is None
    # A narrow interval across the margin is an answer: at the margin.
    narrow = decide_gap(samples(97.0, 0.1, 4), samples(96.5, 0.1, 4), margin=0.5)
    assert narrow.verdict == "at the margin" and narrow.high - narrow.low <= 1.0
    # So close to the margin that 1000 seeds a side are not enough.
    hair = decide_gap(samples(97.0, 1.0, 3), samples(96.499, 1.0, 3), margin=0.5)
    assert hair.verdict == "inconclusive" and hair.seeds_to_decide is None


def test_bad_margins_and_confidences_are_refused():
    for bad in (-0.1, math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match="margin"):
            decide_gap([1.0, 2.0], [1.0, 2.0], margin=bad)
    with pytest.raises(ValueError, match="confidence"):
        decide_gap([1.0, 2.0], [1.0, 2.0], margin=0.5, confidence=1.0)


# --------------------------------------------------------------------------------- Holm


def test_holm_on_hand_computed_cases():
    # m = 4; sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06).
    got = holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert got[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[3])
    # Step-down monotonicity: 1 * 0.02 would be below 2 * 0.019, so it is raised to 0.038.
    assert holm([0.001, 0.02, 0.019]) == pytest.approx([0.003, 0.038, 0.038])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.04]) == pytest.approx([0.04])  # a family of one is not adjusted
    assert holm([]).shape == (0,)
    # Holm controls the family-wise error, not the false discovery rate: Benjamini–Hochberg
    # would give all four 0.04, Holm 4*0.01, 3*0.02, 2*0.03, then no lower than that.
    four = [0.01, 0.02, 0.03, 0.04]
    assert holm(four) == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert stats.false_discovery_control(four) == pytest.approx([0.04] * 4)


# --------------------------------------------------------------------------- the cells


@pytest.fixture(scope="module")
def tables():
    return build_tables(study_records(), study="test")


@pytest.fixture(scope="module")
def cells(tables):
    return compute_cells(tables[0])


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


def seeds_of(trials, row, column="test_acc"):
    """The usable seeds of the cell `row`, straight from the trials table."""
    ghost = trials["ghost_batch_size"]
    same = (
        (trials["batch_size"] == row["batch_size"])
        & (ghost.isna() if pd.isna(row["ghost_batch_size"]) else ghost == row["ghost_batch_size"])
        & (trials["lr_exponent"] == row["lr_exponent"])
        & (trials["regime_multiplier"] == row["regime_multiplier"])
        & (trials["outcome"] == "completed")
    )
    values = trials.loc[same, column].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def test_columns_attrs_and_the_baseline_row(cells):
    assert list(cells.columns) == CELL_COLUMNS
    assert len(cells) == 6
    first = cells.iloc[0]
    assert first["is_baseline"] and first["batch_size"] == 32  # baseline sorts first
    assert first["verdict"] == first["verdict_holm"] == "baseline"
    assert first["baseline_test_acc"] == pytest.approx(97.0)
    assert first["gap"] == pytest.approx(0.0)
    assert math.isnan(first["gap_ci_low"]) and math.isnan(first["p_value"])
    assert (cells["margin"] == 0.5).all() and (cells["accuracy"] == "final").all()
    assert cells.attrs == {
        "margin": 0.5, "accuracy": "final", "confidence": pytest.approx(0.9), "holm_cells": 2,
        "looks": (2,),
        "baseline_test_acc": pytest.approx(97.0), "baseline_test_acc_std": pytest.approx(1.0),
        "baseline_n_seeds": 3,
    }
    assert set(cells["verdict"]) <= set(VERDICTS)
    assert str(cells["seeds_to_decide"].dtype) == "Int64"


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0, 20.0])
def test_every_cell_verdict_is_decide_gap_on_its_seeds(tables, margin):
    trials = tables[0]
    cells = compute_cells(trials, margin=margin)
    base = trials.loc[trials["is_baseline"] & (trials["outcome"] == "completed"), "test_acc"]
    decidable = []
    for _, row in cells[~cells["is_baseline"]].iterrows():
        acc = seeds_of(trials, row)
        assert row["n_used"] == len(acc)
        if not len(acc):
            assert row["verdict"] in ("diverged", "error")
            continue
        want = decide_gap(base.tolist(), acc.tolist(), margin=margin)
        assert row["verdict"] == want.verdict
        assert row["gap"] == pytest.approx(want.gap)
        assert (row["gap_ci_low"], row["gap_ci_high"]) == pytest.approx(
            (want.low, want.high), nan_ok=True)
        assert (None if pd.isna(row["seeds_to_decide"]) else row["seeds_to_decide"]) == (
            want.seeds_to_decide)
        assert (None if pd.isna(row["limiting_side"]) else row["limiting_side"]) == (
            want.limiting_side)
        if len(acc) >= 2:
            decidable.append(row)
            assert row["p_value"] == pytest.approx(closed_p_value(base, acc, margin=margin))
        else:
            assert math.isnan(row["p_value"]) and math.isnan(row["p_value_holm"])
    # Holm over the decidable cells of this map (here two: m = 2).
    p = [r["p_value"] for r in decidable]
    assert len(p) == cells.attrs["holm_cells"] == 2
    low, high = sorted(p)
    want_holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), min(1.0, high))}
    for r in decidable:
        assert r["p_value_holm"] == pytest.approx(want_holm[r["p_value"]])
        if r["verdict"] == "closed" and r["p_value_holm"] < 0.05:
            assert r["verdict_holm"] == "closed"
        elif r["verdict"] == "closed":
            assert r["verdict_holm"] == "inconclusive"
        else:
            assert r["verdict_holm"] == r["verdict"]


def test_verdicts_of_the_small_study(cells):
    plain = cell(cells, 1024, None, 0.0, "1.0")
    assert plain["test_acc_mean"] == pytest.approx(81.0)
    assert plain["test_acc_std"] == pytest.approx(math.sqrt(2.0))
    assert plain["gap"] == pytest.approx(16.0) and plain["verdict"] == "open"
    assert plain["train_test_gap"] == pytest.approx(99.0 - 81.0)
    assert plain["updates"] == pytest.approx(3 * 8)
    # Gap 0.7 on 2 seeds: the point estimate is above the margin, but neither end of the
    # interval is on one side of it, so the data cannot say. More seeds would.
    remedies = cell(cells, 1024, 32, 0.5, "matched")
    assert remedies["gap"] == pytest.approx(0.7) and remedies["verdict"] == "inconclusive"
    assert remedies["gap_ci_low"] < 0.5 < remedies["gap_ci_high"]
    assert remedies["seeds_to_decide"] > 2 and remedies["limiting_side"] == "baseline"
    # The same cell at a 3-point margin is closed, and Holm over 2 cells keeps it closed.
    wide = cell(compute_cells(build_tables(study_records(), study="t")[0], margin=3.0),
                1024, 32, 0.5, "matched")
    assert wide["verdict"] == "closed" and wide["gap_ci_high"] <= 3.0
    assert wide["verdict_holm"] == "closed" and wide["p_value_holm"] < 0.05


def test_diverged_and_error_cells(cells):
    dead = cell(cells, 1024, 32, 1.0, "1.0")
    assert dead["verdict"] == dead["verdict_holm"] == "diverged"
    assert dead["n_diverged"] == 2 and dead["n_used"] == 0
    assert math.isnan(dead["gap"]) and math.isnan(dead["test_acc_mean"])

    half = cell(cells, 1024, None, 0.5, "1.0")
    assert half["n_diverged"] == 1 and half["n_used"] == 1
    assert half["test_acc_mean"] == pytest.approx(90.0)
    # Gap 7 from one seed: large, but one seed has no spread to judge it by.
    assert half["gap"] == pytest.approx(7.0) and half["verdict"] == "inconclusive"
    assert math.isnan(half["gap_ci_low"]) and pd.isna(half["seeds_to_decide"])

    failed = cell(cells, 1024, 128, 0.0, "1.0")
    assert failed["verdict"] == "error" and failed["n_error"] == 2
    assert verdict_counts(cells) == {
        "closed": 0, "open": 1, "at the margin": 0, "inconclusive": 2, "diverged": 1,
        "error": 1,
    }


def test_holm_demotes_a_closed_cell_that_many_cells_make_doubtful():
    # Baseline 97 ± 0.5 over 4 seeds; one cell closed at p just under 0.05, two more that
    # are open: alone it is closed, in a family of 3 the chance of a false close rises.
    recs = [trial(f"b{s}", 32, None, 0.0, 1.0, s, a, baseline=True)
            for s, a in enumerate(samples(97.0, 0.5, 4))]
    for name, ghost, mean in (("near", 16, 96.9), ("far", 64, 90.0), ("farther", 128, 85.0)):
        recs += [trial(f"{name}{s}", 1024, ghost, 0.5, 1.0, s, a)
                 for s, a in enumerate(samples(mean, 0.5, 4))]
    cells = compute_cells(build_tables(recs, study="s")[0], margin=0.9)
    near = cell(cells, 1024, 16, 0.5, "1.0")
    assert near["verdict"] == "closed" and near["gap_ci_high"] <= 0.9
    assert near["p_value"] < 0.05 <= near["p_value_holm"]
    assert near["p_value_holm"] == pytest.approx(3 * near["p_value"])  # the smallest of 3
    np.testing.assert_allclose(cells["p_value_holm"], holm(cells["p_value"]), equal_nan=True)
    assert near["verdict_holm"] == "inconclusive"
    assert cell(cells, 1024, 64, 0.5, "1.0")["verdict_holm"] == "open"
    assert verdict_counts(cells, "verdict_holm")["closed"] == 0


def test_accuracy_intervals_are_clipped_to_0_100():
    recs = [
        trial("b0", 32, None, 0.0, 1.0, 0, 99.0, baseline=True),
        trial("b1", 32, None, 0.0, 1.0, 1, 98.0, baseline=True),
        trial("top0", 1024, 32, 0.5, 1.0, 0, 99.9),  # a t interval would pass 100
        trial("top1", 1024, 32, 0.5, 1.0, 1, 90.0),
        trial("low0", 1024, 64, 0.5, 1.0, 0, 2.5),  # ... or fall below 0
        trial("low1", 1024, 64, 0.5, 1.0, 1, 12.0),
    ]
    cells = compute_cells(build_tables(recs, study="s")[0])
    both = cells[cells["n_used"] >= 2]
    assert (both["test_acc_ci95_low"] >= 0).all() and (both["test_acc_ci95_high"] <= 100).all()
    top = cell(cells, 1024, 32, 0.5, "1.0")
    assert top["test_acc_ci95_high"] == 100.0
    acc = np.array([99.9, 90.0])
    want_low = acc.mean() - stats.t.ppf(0.975, 1) * acc.std(ddof=1) / math.sqrt(2)
    assert top["test_acc_ci95_low"] == pytest.approx(max(want_low, 0.0))
    assert cell(cells, 1024, 64, 0.5, "1.0")["test_acc_ci95_low"] == 0.0


def with_last_epoch(record, acc):
    """`record` peaking at its final accuracy one epoch early, then ending at `acc`."""
    history = record["history"]
    history[-2]["test_acc"], history[-1]["test_acc"] = history[-1]["test_acc"], acc
    return record


def test_best_epoch_accuracy_is_judged_when_asked():
    recs = [
        trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True),
        trial("b1", 32, None, 0.0, 1.0, 1, 97.2, baseline=True),
        # Best epochs 96.9 and 97.1, but both end 5 points lower.
        with_last_epoch(trial("c0", 1024, 32, 0.5, 1.0, 0, 96.9), 91.9),
        with_last_epoch(trial("c1", 1024, 32, 0.5, 1.0, 1, 97.1), 92.1),
        # Diverged at the last epoch: its earlier best is finite but it is not a usable seed.
        trial("d0", 1024, 64, 0.5, 1.0, 0, 96.0, outcome="diverged"),
    ]
    trials = build_tables(recs, study="s")[0]
    final = compute_cells(trials)
    best = compute_cells(trials, accuracy="best")
    assert best.attrs["accuracy"] == "best" and (best["accuracy"] == "best").all()
    assert cell(final, 1024, 32, 0.5, "1.0")["test_acc_mean"] == pytest.approx(92.0)
    late = cell(best, 1024, 32, 0.5, "1.0")
    assert late["test_acc_mean"] == pytest.approx(97.0)
    want = decide_gap(trials.loc[trials["is_baseline"], "best_test_acc"],
                      seeds_of(trials, late, "best_test_acc"), margin=0.5)
    assert late["verdict"] == want.verdict and late["gap"] == pytest.approx(0.1)
    assert cell(final, 1024, 32, 0.5, "1.0")["verdict"] == "open"
    assert cell(best, 1024, 64, 0.5, "1.0")["verdict"] == "diverged"
    assert "best-epoch" in baseline_summary(best)
    with pytest.raises(ValueError, match="accuracy 'median'"):
        compute_cells(trials, accuracy="median")


def test_bad_margins_are_refused_by_compute_cells(tables):
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="margin"):
            compute_cells(tables[0], margin=bad)


def test_baseline_summary_states_the_margin_and_no_verdict(cells):
    text = baseline_summary(cells)
    assert "97.00 ± 1.00 % over 3 seed(s)" in text and "0.50 points" in text
    assert "final-epoch test accuracy" in text and "closed" not in text


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
    pd.testing.assert_frame_equal(compute_cells(shuffled), cells)


def test_mixed_workloads_are_refused(tables):
    trials = tables[0].copy()
    trials.loc[0, "workload"] = "cifar10-resnet44"
    with pytest.raises(ValueError, match="mixes workloads"):
        compute_cells(trials)


def test_overrides_split_cells_when_set(tables):
    trials = tables[0].copy()
    assert "base_lr_override" not in compute_cells(trials).columns
    trials.loc[trials["trial_id"] == "lb1", "base_lr_override"] = 0.2
    cells = compute_cells(trials)
    assert "base_lr_override" in cells.columns
    assert len(cells) == 7  # lb0 and lb1 are now different cells


def test_seeds_without_spread_decide_exactly_and_quietly():
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
        cells = compute_cells(build_tables(recs, study="s")[0], margin=0.5)
    same = cell(cells, 1024, 32, 0.5, "1.0")
    assert same["gap_ci_low"] == same["gap_ci_high"] == pytest.approx(1.0)
    assert same["verdict"] == "open" and same["p_value"] == 1.0
    tied = cell(cells, 1024, 64, 0.5, "1.0")
    assert tied["gap"] == 0.0 and tied["verdict"] == "closed" and tied["p_value"] == 0.0
    assert tied["test_acc_ci95_low"] == tied["test_acc_ci95_high"] == 97.0
    assert tied["verdict_holm"] == "closed"


def test_cells_from_parquet_equal_cells_from_memory(tmp_path, tables, cells):
    write_tables(*tables, tmp_path)
    again = compute_cells(read_tables(tmp_path)[0])
    pd.testing.assert_frame_equal(again, cells)


def test_map_verdicts_adjust_open_as_well_as_closed():
    from tunegap.analysis.decide import SeedDesign, map_verdicts

    # Two cells open at p = 0.03 alone: over a family of two, Holm needs 0.025.
    verdicts = ["open", "open", "closed", "at the margin"]
    p_closed = [0.97, 0.98, 0.001, 0.4]
    p_open = [0.03, 0.02, 0.999, 0.6]
    _adj_c, adj_o, out = map_verdicts(verdicts, p_closed, p_open, design=SeedDesign.fixed(3))
    assert adj_o[1] == pytest.approx(4 * 0.02) and out[:2] == ["inconclusive", "inconclusive"]
    assert out[2] == "closed" and out[3] == "at the margin"
    # With three planned looks every p-value is first multiplied by 3.
    adj_c3, _, _ = map_verdicts(verdicts, p_closed, p_open, design=SeedDesign.adaptive(3, 12))
    assert adj_c3[2] == pytest.approx(min(1.0, 4 * 3 * 0.001))


def test_seed_designs():
    from tunegap.analysis.decide import SeedDesign

    assert SeedDesign.adaptive(3, 12).looks == (3, 6, 12)
    assert SeedDesign.adaptive(3, 8).looks == (3, 6, 8)
    assert SeedDesign.adaptive(2, 2).looks == (2,)
    assert SeedDesign.fixed(5).confidence == pytest.approx(0.90)
    assert SeedDesign.adaptive(3, 12).alpha == pytest.approx(0.05 / 3)
    assert SeedDesign.adaptive(3, 12).next_look(6) == 12
    assert SeedDesign.adaptive(3, 12).next_look(12) is None
    with pytest.raises(ValueError, match="looks"):
        SeedDesign(looks=(3, 3))
